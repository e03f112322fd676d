package podnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes podnet installs (rtm_protocol; `ip route show proto 201`
// lists them). podnet only ever changes or removes routes with this mark, so routes of the
// administrator, DHCP or the CNI plugins are never touched.
const RouteProtocol = 201

// netlinkRoutes is the main routing table of the calling thread's network namespace, through
// route netlink. Each call opens its own socket.
type netlinkRoutes struct{}

// List returns the IPv4 routes in the main table that carry RouteProtocol.
func (netlinkRoutes) List() ([]Route, error) {
	b, err := syscall.NetlinkRIB(unix.RTM_GETROUTE, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []Route
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWROUTE || len(m.Data) < unix.SizeofRtMsg {
			continue
		}
		rtm := (*unix.RtMsg)(unsafe.Pointer(&m.Data[0]))
		if rtm.Protocol != RouteProtocol || rtm.Family != unix.AF_INET {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		table := uint32(rtm.Table)
		r := Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), int(rtm.Dst_len))}
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_TABLE:
				if len(a.Value) >= 4 {
					table = binary.NativeEndian.Uint32(a.Value)
				}
			case unix.RTA_DST:
				if ip, ok := netip.AddrFromSlice(a.Value); ok {
					r.Dst = netip.PrefixFrom(ip, int(rtm.Dst_len))
				}
			case unix.RTA_GATEWAY:
				if ip, ok := netip.AddrFromSlice(a.Value); ok {
					r.Via = ip
				}
			}
		}
		if table == unix.RT_TABLE_MAIN {
			out = append(out, r)
		}
	}
	return out, nil
}

// Replace adds the route or replaces the one to the same destination.
func (netlinkRoutes) Replace(r Route) error {
	return routeRequest("add route "+r.String(), unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, r)
}

// Delete removes the route (only one carrying RouteProtocol).
func (netlinkRoutes) Delete(r Route) error {
	err := routeRequest("delete route "+r.String(), unix.RTM_DELROUTE, 0, r)
	if errors.Is(err, unix.ESRCH) {
		return nil // already gone
	}
	return err
}

func routeRequest(what string, typ, flags uint16, r Route) error {
	if !r.Dst.Addr().Is4() || !r.Via.Is4() {
		return fmt.Errorf("%s: expected IPv4", what)
	}
	rtm := unix.RtMsg{
		Family:   unix.AF_INET,
		Dst_len:  uint8(r.Dst.Bits()),
		Table:    unix.RT_TABLE_MAIN,
		Protocol: RouteProtocol,
		Scope:    unix.RT_SCOPE_UNIVERSE,
		Type:     unix.RTN_UNICAST,
	}
	body := unsafe.Slice((*byte)(unsafe.Pointer(&rtm)), unix.SizeofRtMsg)
	body = append([]byte(nil), body...)
	dst := r.Dst.Addr().As4()
	body = rtattr(body, unix.RTA_DST, dst[:])
	if typ == unix.RTM_NEWROUTE {
		gw := r.Via.As4()
		body = rtattr(body, unix.RTA_GATEWAY, gw[:])
	}
	return netlinkDo(what, typ, flags, body)
}

// rtattr appends one attribute padded to 4 bytes.
func rtattr(b []byte, typ uint16, payload []byte) []byte {
	h := make([]byte, unix.SizeofRtAttr)
	binary.NativeEndian.PutUint16(h[0:], uint16(unix.SizeofRtAttr+len(payload)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(append(b, h...), payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// netlinkDo sends one request with NLM_F_ACK on a new socket and returns the kernel's answer.
func netlinkDo(what string, typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink %s: send: %w", what, err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink %s: receive: %w", what, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink %s: %w", what, err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("netlink %s: short acknowledgement", what)
			}
			if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
				return fmt.Errorf("netlink %s: %w", what, unix.Errno(-e))
			}
			return nil
		}
	}
}

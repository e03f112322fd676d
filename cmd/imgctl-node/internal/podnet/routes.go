package podnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/rtnl"

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
	body := append([]byte(nil), rtnl.StructBytes(&rtm)...)
	dst := r.Dst.Addr().As4()
	body = rtnl.Attr(body, unix.RTA_DST, dst[:])
	if typ == unix.RTM_NEWROUTE {
		gw := r.Via.As4()
		body = rtnl.Attr(body, unix.RTA_GATEWAY, gw[:])
	}
	c, err := rtnl.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Do(what, typ, flags, body)
}

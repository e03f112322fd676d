package netup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rtnl is a route netlink socket for the few requests the init makes: link up, add an
// address, add a route. Each request waits for the kernel's acknowledgement.
type rtnl struct {
	fd  int
	seq uint32
}

func openRTNL() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &rtnl{fd: fd}, nil
}

func (r *rtnl) Close() error { return unix.Close(r.fd) }

// attr appends one rtattr (type, payload) padded to 4 bytes.
func attr(b []byte, typ uint16, payload []byte) []byte {
	l := unix.SizeofRtAttr + len(payload)
	h := make([]byte, unix.SizeofRtAttr)
	binary.NativeEndian.PutUint16(h[0:], uint16(l))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(b, h...)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// do sends one request with NLM_F_ACK and returns the kernel's answer (nil on success).
func (r *rtnl) do(what string, typ uint16, flags uint16, body []byte) error {
	r.seq++
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], r.seq)
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink %s: send: %w", what, err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
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
			if m.Header.Seq != r.seq || m.Header.Type != unix.NLMSG_ERROR {
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

// linkUp sets IFF_UP on the interface.
func (r *rtnl) linkUp(index int, name string) error {
	ifi := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	return r.do("set "+name+" up", unix.RTM_NEWLINK, 0, structBytes(&ifi))
}

// addAddr adds an IPv4 address with its prefix length and broadcast address. An address that
// is already there is fine (a retried boot step).
func (r *rtnl) addAddr(index int, name string, p netip.Prefix) error {
	ifa := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(index)}
	b := structBytes(&ifa)
	a := p.Addr().As4()
	b = attr(b, unix.IFA_LOCAL, a[:])
	b = attr(b, unix.IFA_ADDRESS, a[:])
	if p.Bits() < 31 {
		bc := broadcast(p).As4()
		b = attr(b, unix.IFA_BROADCAST, bc[:])
	}
	err := r.do("add address "+p.String()+" to "+name, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, b)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// addDefaultRoute adds 0.0.0.0/0 via gw on the interface.
func (r *rtnl) addDefaultRoute(index int, name string, gw netip.Addr) error {
	rtm := unix.RtMsg{
		Family:   unix.AF_INET,
		Table:    unix.RT_TABLE_MAIN,
		Protocol: unix.RTPROT_BOOT,
		Scope:    unix.RT_SCOPE_UNIVERSE,
		Type:     unix.RTN_UNICAST,
	}
	b := structBytes(&rtm)
	g := gw.As4()
	b = attr(b, unix.RTA_GATEWAY, g[:])
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	b = attr(b, unix.RTA_OIF, oif)
	err := r.do("add default route via "+gw.String()+" dev "+name, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, b)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// link is one network interface as RTM_GETLINK reports it.
type link struct {
	Index int
	Name  string
	MAC   net.HardwareAddr
	Type  uint16 // ARPHRD_*
	Flags uint32 // IFF_*, including IFF_LOWER_UP (carrier)
}

func (l link) ethernet() bool {
	return l.Type == unix.ARPHRD_ETHER && l.Flags&unix.IFF_LOOPBACK == 0 && len(l.MAC) == 6
}

// carrier is IFF_LOWER_UP: the driver reports link. (IFF_RUNNING follows the operational
// state, which the kernel updates asynchronously and can show as up for a moment after
// IFF_UP on a link without carrier.)
func (l link) carrier() bool { return l.Flags&unix.IFF_LOWER_UP != 0 }

// listLinks dumps the interfaces of the calling thread's network namespace.
func listLinks() ([]link, error) {
	b, err := syscall.NetlinkRIB(unix.RTM_GETLINK, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	var out []link
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		ifi := (*unix.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		l := link{Index: int(ifi.Index), Type: ifi.Type, Flags: ifi.Flags}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return nil, fmt.Errorf("list network interfaces: %w", err)
		}
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.IFLA_IFNAME:
				l.Name = strings.TrimRight(string(a.Value), "\x00")
			case unix.IFLA_ADDRESS:
				l.MAC = net.HardwareAddr(bytes.Clone(a.Value))
			}
		}
		out = append(out, l)
	}
	return out, nil
}

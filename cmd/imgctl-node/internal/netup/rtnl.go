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

	netlink "github.com/imgctl/imgctl/cmd/imgctl-node/internal/rtnl"

	"golang.org/x/sys/unix"
)

// rtnl is a route netlink socket for the few requests the init makes: link up, add an
// address, add a route. Each request waits for the kernel's acknowledgement.
type rtnl struct{ *netlink.Conn }

func openRTNL() (*rtnl, error) {
	c, err := netlink.Open()
	if err != nil {
		return nil, err
	}
	return &rtnl{c}, nil
}

// linkUp sets IFF_UP on the interface.
func (r *rtnl) linkUp(index int, name string) error {
	ifi := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	return r.Do("set "+name+" up", unix.RTM_NEWLINK, 0, netlink.StructBytes(&ifi))
}

// addAddr adds an IPv4 address with its prefix length and broadcast address. An address that
// is already there is fine (a retried boot step).
func (r *rtnl) addAddr(index int, name string, p netip.Prefix) error {
	ifa := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(index)}
	b := netlink.StructBytes(&ifa)
	a := p.Addr().As4()
	b = netlink.Attr(b, unix.IFA_LOCAL, a[:])
	b = netlink.Attr(b, unix.IFA_ADDRESS, a[:])
	if p.Bits() < 31 {
		bc := broadcast(p).As4()
		b = netlink.Attr(b, unix.IFA_BROADCAST, bc[:])
	}
	err := r.Do("add address "+p.String()+" to "+name, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, b)
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
	b := netlink.StructBytes(&rtm)
	g := gw.As4()
	b = netlink.Attr(b, unix.RTA_GATEWAY, g[:])
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	b = netlink.Attr(b, unix.RTA_OIF, oif)
	err := r.Do("add default route via "+gw.String()+" dev "+name, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, b)
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

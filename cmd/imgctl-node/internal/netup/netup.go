// Package netup brings up the boot NIC in the initrd for the network root: it picks the NIC
// (BOOTIF=, ip=, or every Ethernet NIC with link), sets it up, waits for carrier, gets an
// address by DHCPv4 (insomniacslk/dhcp's nclient4) or takes the static one from ip=, and
// configures the address, the default route and /etc/resolv.conf. The switched root sets up
// its network again on its own.
package netup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// Defaults for the zero fields of Options.
const (
	DefaultLinkTimeout  = 20 * time.Second
	DefaultCarrierGrace = time.Second
	DefaultDHCPTimeout  = 30 * time.Second
	DefaultDHCPWait     = time.Second
	DefaultResolvConf   = "/etc/resolv.conf"

	pollEvery = 100 * time.Millisecond
)

// Options of Up.
type Options struct {
	BootIF net.HardwareAddr  // BOOTIF=: use only the NIC with this MAC
	IP     *cmdline.IPConfig // ip=: the NIC by name, DHCP or static; nil: DHCP

	LinkTimeout  time.Duration // for the NIC to appear (drivers probe asynchronously) and get carrier
	CarrierGrace time.Duration // without a named NIC: after the first has carrier, wait this long for others
	DHCPTimeout  time.Duration // the whole DHCP exchange
	DHCPWait     time.Duration // wait for the first answer, doubled for each resend (nclient4) until DHCPTimeout
	ResolvConf   string        // DefaultResolvConf

	Steps  *steplog.Logger // link and dhcp step lines
	Logger *slog.Logger    // details; nil discards
}

// Config is what the boot NIC was configured with.
type Config struct {
	Iface    string
	MAC      net.HardwareAddr
	Addr     netip.Prefix
	Gateway  netip.Addr // invalid: no default route
	DNS      []netip.Addr
	Search   []string
	DHCP     bool          // false: static from ip=
	Server   netip.Addr    // the DHCP server
	Lease    time.Duration // the DHCP lease time
	Hostname string
}

// Up brings up the boot NIC; see the package comment.
func Up(ctx context.Context, o Options) (Config, error) {
	o.defaults()
	nl, err := openRTNL()
	if err != nil {
		return Config{}, o.Steps.Start("link").Fail(err)
	}
	defer nl.Close()
	if links, err := listLinks(); err == nil {
		for _, l := range links {
			if l.Flags&unix.IFF_LOOPBACK != 0 {
				_ = nl.linkUp(l.Index, l.Name) // localhost for whatever runs before the switch; not fatal
			}
		}
	}
	links, err := o.link(ctx, nl)
	if err != nil {
		return Config{}, err
	}
	if o.IP != nil && !o.IP.DHCP {
		return o.static(nl, links[0])
	}
	return o.dhcp(ctx, nl, links)
}

func (o *Options) defaults() {
	if o.LinkTimeout <= 0 {
		o.LinkTimeout = DefaultLinkTimeout
	}
	if o.CarrierGrace <= 0 {
		o.CarrierGrace = DefaultCarrierGrace
	}
	if o.DHCPTimeout <= 0 {
		o.DHCPTimeout = DefaultDHCPTimeout
	}
	if o.DHCPWait <= 0 {
		o.DHCPWait = DefaultDHCPWait
	}
	if o.ResolvConf == "" {
		o.ResolvConf = DefaultResolvConf
	}
	if o.Steps == nil {
		o.Steps = steplog.New(nopWriter{})
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

type nopWriter struct{}

func (nopWriter) Write(b []byte) (int, error) { return len(b), nil }

// wanted says how the NIC is chosen, for the step line and errors.
func (o *Options) wanted() (pickedBy, want string, match func(link) bool) {
	switch {
	case o.BootIF != nil:
		return "bootif", "BOOTIF=" + o.BootIF.String(), func(l link) bool { return slices.Equal(l.MAC, o.BootIF) }
	case o.IP != nil && o.IP.Iface != "":
		return "ip", "ip=" + o.IP.Iface, func(l link) bool { return l.Name == o.IP.Iface }
	}
	return "carrier", "", nil
}

// link waits for the NIC(s) to appear, sets them up and waits for carrier. It returns the NICs
// with carrier: the named one, or every Ethernet NIC that has link.
func (o *Options) link(ctx context.Context, nl *rtnl) ([]link, error) {
	s := o.Steps.Start("link")
	pickedBy, want, match := o.wanted()
	ctx, cancel := context.WithTimeout(ctx, o.LinkTimeout)
	defer cancel()
	up := map[int]bool{}
	var seen []link
	var firstCarrier time.Time
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		ifs, err := listLinks()
		if err != nil {
			return nil, s.Fail(err)
		}
		seen = ifs
		var cands, withLink []link
		for _, i := range ifs {
			if (match != nil && match(i)) || (match == nil && i.ethernet()) {
				cands = append(cands, i)
			}
		}
		for _, i := range cands {
			if !up[i.Index] {
				if err := nl.linkUp(i.Index, i.Name); err != nil {
					return nil, s.Fail(err, "iface", i.Name)
				}
				up[i.Index] = true
			}
			if i.carrier() {
				withLink = append(withLink, i)
			}
		}
		if len(withLink) > 0 && firstCarrier.IsZero() {
			firstCarrier = time.Now()
		}
		if len(withLink) > 0 && (match != nil || len(withLink) == len(cands) || time.Since(firstCarrier) >= o.CarrierGrace) {
			kv := []any{"iface", names(withLink), "mac", withLink[0].MAC.String(), "picked-by", pickedBy}
			if match == nil {
				kv = append(kv, "nics", len(cands))
			}
			s.Done(kv...)
			return withLink, nil
		}
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		switch {
		case match != nil && len(cands) == 0:
			err = fmt.Errorf("no NIC matching %s appeared within %s; NICs: %s", want, o.LinkTimeout, describe(seen))
		case len(cands) == 0:
			err = fmt.Errorf("no Ethernet NIC appeared within %s (is its driver in the initrd's module list?); NICs: %s", o.LinkTimeout, describe(seen))
		default:
			err = fmt.Errorf("no carrier on %s within %s (cable, switch port?)", names(cands), o.LinkTimeout)
		}
		return nil, s.Fail(err)
	}
}

func names(ifs []link) string {
	var n []string
	for _, i := range ifs {
		n = append(n, i.Name)
	}
	return strings.Join(n, ",")
}

func describe(ifs []link) string {
	if len(ifs) == 0 {
		return "none"
	}
	var n []string
	for _, i := range ifs {
		d := i.Name
		if len(i.MAC) > 0 && i.Flags&unix.IFF_LOOPBACK == 0 {
			d += " (" + i.MAC.String() + ")"
		}
		n = append(n, d)
	}
	return strings.Join(n, ", ")
}

func (o *Options) static(nl *rtnl, l link) (Config, error) {
	s := o.Steps.Start("dhcp")
	c := Config{Iface: l.Name, MAC: l.MAC, Addr: o.IP.Addr, Gateway: o.IP.Gateway, DNS: o.IP.DNS, Hostname: o.IP.Hostname}
	if err := o.apply(nl, l, c); err != nil {
		return c, s.Fail(err, "iface", l.Name)
	}
	s.Skip(append([]any{"reason", "static ip="}, c.kv()...)...)
	return c, nil
}

func (c Config) kv() []any {
	kv := []any{"iface", c.Iface, "addr", c.Addr.String()}
	if c.Gateway.IsValid() {
		kv = append(kv, "gw", c.Gateway.String())
	}
	if len(c.DNS) > 0 {
		var d []string
		for _, a := range c.DNS {
			d = append(d, a.String())
		}
		kv = append(kv, "dns", strings.Join(d, ","))
	}
	if c.DHCP {
		kv = append(kv, "server", c.Server.String(), "lease", c.Lease.String())
	}
	return kv
}

type answer struct {
	link  link
	lease *nclient4.Lease
	err   error
}

// dhcp asks on every link at once and takes the first lease. The clients' sockets are opened
// here, on the caller's thread (and so in its network namespace); the exchanges run in parallel.
func (o *Options) dhcp(ctx context.Context, nl *rtnl, links []link) (Config, error) {
	s := o.Steps.Start("dhcp")
	ctx, cancel := context.WithTimeout(ctx, o.DHCPTimeout)
	defer cancel()
	var clients []*nclient4.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, l := range links {
		c, err := nclient4.New(l.Name, nclient4.WithHWAddr(l.MAC), nclient4.WithTimeout(o.DHCPWait), nclient4.WithRetry(-1))
		if err != nil {
			return Config{}, s.Fail(fmt.Errorf("dhcp client on %s: %w", l.Name, err), "iface", l.Name)
		}
		clients = append(clients, c)
	}
	answers := make(chan answer, len(links))
	for i, l := range links {
		go func() {
			// Client identifier type 1 + MAC, as iPXE and the booted system's networkd
			// (ClientIdentifier=mac) send it: a server that keys leases by client identifier
			// gives all three the same address, which the boot credential is bound to.
			lease, err := clients[i].Request(ctx, dhcpv4.WithRequestedOptions(dhcpv4.OptionDNSDomainSearchList),
				dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, l.MAC...))))
			if errors.Is(err, nclient4.ErrNoResponse) || errors.Is(err, context.DeadlineExceeded) {
				err = errors.New("no answer from a DHCP server")
			}
			answers <- answer{l, lease, err}
		}()
	}
	var errs []error
	for range links {
		a := <-answers
		if a.err != nil {
			o.Logger.Warn("dhcp failed", "iface", a.link.Name, "err", a.err)
			errs = append(errs, fmt.Errorf("%s: %w", a.link.Name, a.err))
			continue
		}
		cancel() // the others
		c, err := fromLease(a.link, a.lease)
		if err == nil {
			err = o.apply(nl, a.link, c)
		}
		if err != nil {
			return c, s.Fail(err, "iface", a.link.Name)
		}
		s.Done(c.kv()...)
		return c, nil
	}
	return Config{}, s.Fail(fmt.Errorf("no DHCP lease within %s: %w", o.DHCPTimeout, errors.Join(errs...)), "iface", names(links))
}

func fromLease(l link, lease *nclient4.Lease) (Config, error) {
	ack := lease.ACK
	addr, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || addr.IsUnspecified() {
		return Config{}, fmt.Errorf("DHCP answer from %s has no address (yiaddr %v)", ack.ServerIdentifier(), ack.YourIPAddr)
	}
	bits := 24
	if m := ack.SubnetMask(); m != nil {
		if ones, size := m.Size(); size == 32 {
			bits = ones
		}
	}
	c := Config{Iface: l.Name, MAC: l.MAC, Addr: netip.PrefixFrom(addr, bits), DHCP: true, Hostname: ack.HostName()}
	if r := ack.Router(); len(r) > 0 {
		c.Gateway, _ = netip.AddrFromSlice(r[0].To4())
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok {
			c.DNS = append(c.DNS, a)
		}
	}
	if dn := ack.DomainName(); dn != "" {
		c.Search = append(c.Search, dn)
	}
	if ds := ack.DomainSearch(); ds != nil {
		c.Search = append(c.Search, ds.Labels...)
	}
	c.Server, _ = netip.AddrFromSlice(ack.ServerIdentifier().To4())
	c.Lease = ack.IPAddressLeaseTime(0)
	return c, nil
}

// apply configures the address, the default route and resolv.conf.
func (o *Options) apply(nl *rtnl, l link, c Config) error {
	if err := nl.addAddr(l.Index, l.Name, c.Addr); err != nil {
		return err
	}
	if c.Gateway.IsValid() {
		if err := nl.addDefaultRoute(l.Index, l.Name, c.Gateway); err != nil {
			return err
		}
	}
	if len(c.DNS) > 0 {
		return writeResolvConf(o.ResolvConf, c)
	}
	return nil
}

// writeResolvConf writes nameserver and search lines (temp file, fsync, rename).
func writeResolvConf(path string, c Config) error {
	var b strings.Builder
	b.WriteString("# written by imgctl-node init from the " + map[bool]string{true: "DHCP lease", false: "ip= option"}[c.DHCP] + " on " + c.Iface + "\n")
	if len(c.Search) > 0 {
		b.WriteString("search " + strings.Join(c.Search, " ") + "\n")
	}
	for _, d := range c.DNS {
		b.WriteString("nameserver " + d.String() + "\n")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".resolv.conf.*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(b.String())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

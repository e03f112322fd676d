package netup

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/layers/testenv"
)

// pair is a veth pair between two network namespaces this test creates: the node's side
// (veth-node, left down for Up to bring up) and the server's side (veth-srv, 10.77.0.1/24, up).
type pair struct {
	node, srv string // namespace names
	nodeMAC   net.HardwareAddr
}

var nsSeq atomic.Int32

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newPair(t *testing.T) pair {
	testenv.Integration(t, "network namespaces with a veth pair")
	testenv.Root(t, "creates network namespaces")
	testenv.Tools(t, "ip")
	n := nsSeq.Add(1)
	p := pair{node: fmt.Sprintf("imgctl-node-%d-%d", os.Getpid(), n), srv: fmt.Sprintf("imgctl-srv-%d-%d", os.Getpid(), n)}
	for _, ns := range []string{p.node, p.srv} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	p.nodeMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, byte(n)}
	run(t, "ip", "-n", p.node, "link", "add", "veth-node", "address", p.nodeMAC.String(), "type", "veth", "peer", "name", "veth-srv", "netns", p.srv)
	run(t, "ip", "-n", p.srv, "addr", "add", "10.77.0.1/24", "dev", "veth-srv")
	run(t, "ip", "-n", p.srv, "link", "set", "veth-srv", "up")
	return p
}

// in runs fn on a thread in the named network namespace. The thread stays locked and ends
// with fn's goroutine, so it never returns to the runtime's pool in the wrong namespace.
func in(t *testing.T, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// serveDHCP runs insomniacslk/dhcp's server4 on veth-srv, handing out 10.77.0.50/24.
func serveDHCP(t *testing.T, p pair) {
	t.Helper()
	handler := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		var typ dhcpv4.MessageType
		switch m.MessageType() {
		case dhcpv4.MessageTypeDiscover:
			typ = dhcpv4.MessageTypeOffer
		case dhcpv4.MessageTypeRequest:
			typ = dhcpv4.MessageTypeAck
		default:
			return
		}
		reply, err := dhcpv4.NewReplyFromRequest(m,
			dhcpv4.WithMessageType(typ),
			dhcpv4.WithYourIP(net.IPv4(10, 77, 0, 50)),
			dhcpv4.WithServerIP(net.IPv4(10, 77, 0, 1)),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithRouter(net.IPv4(10, 77, 0, 1)),
			dhcpv4.WithDNS(net.IPv4(10, 77, 0, 53)),
			dhcpv4.WithLeaseTime(3600),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1))),
			dhcpv4.WithOption(dhcpv4.OptDomainName("boot.test")),
		)
		if err != nil {
			t.Errorf("dhcp reply: %v", err)
			return
		}
		if _, err := conn.WriteTo(reply.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}); err != nil {
			t.Errorf("dhcp reply: %v", err)
		}
	}
	var srv *server4.Server
	in(t, p.srv, func() {
		var err error
		srv, err = server4.NewServer("veth-srv", nil, handler)
		if err != nil {
			t.Errorf("dhcp server: %v", err)
		}
	})
	if srv == nil {
		t.FailNow()
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { srv.Close() })
}

func up(t *testing.T, p pair, o Options) (Config, string, error) {
	t.Helper()
	var log bytes.Buffer
	o.Steps = steplog.New(&log)
	if o.ResolvConf == "" {
		o.ResolvConf = filepath.Join(t.TempDir(), "etc", "resolv.conf")
	}
	var c Config
	var err error
	in(t, p.node, func() { c, err = Up(context.Background(), o) })
	return c, log.String(), err
}

func TestDHCPInNetns(t *testing.T) {
	p := newPair(t)
	serveDHCP(t, p)
	resolv := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	c, log, err := up(t, p, Options{BootIF: p.nodeMAC, ResolvConf: resolv, LinkTimeout: 10 * time.Second, DHCPTimeout: 10 * time.Second, DHCPWait: 500 * time.Millisecond})
	t.Log(log)
	if err != nil {
		t.Fatal(err)
	}
	if c.Iface != "veth-node" || c.Addr != netip.MustParsePrefix("10.77.0.50/24") || c.Gateway != netip.MustParseAddr("10.77.0.1") ||
		c.Server != netip.MustParseAddr("10.77.0.1") || c.Lease != time.Hour || !c.DHCP {
		t.Errorf("config %+v", c)
	}
	for _, want := range []string{
		"step=link status=ok", "iface=veth-node", "mac=" + p.nodeMAC.String(), "picked-by=bootif",
		"step=dhcp status=ok", "addr=10.77.0.50/24", "gw=10.77.0.1", "dns=10.77.0.53", "server=10.77.0.1", "lease=1h0m0s",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("step lines lack %q", want)
		}
	}
	if out := run(t, "ip", "-n", p.node, "-4", "addr", "show", "dev", "veth-node"); !strings.Contains(out, "inet 10.77.0.50/24 brd 10.77.0.255") {
		t.Errorf("address not configured:\n%s", out)
	}
	if out := run(t, "ip", "-n", p.node, "-4", "route", "show", "default"); !strings.Contains(out, "default via 10.77.0.1 dev veth-node") {
		t.Errorf("default route not configured:\n%s", out)
	}
	b, err := os.ReadFile(resolv)
	if err != nil || !strings.Contains(string(b), "nameserver 10.77.0.53\n") || !strings.Contains(string(b), "search boot.test\n") {
		t.Errorf("resolv.conf: %v\n%s", err, b)
	}
	// The node reaches the server's side over the configured link.
	in(t, p.node, func() {
		conn, err := net.DialTimeout("udp", "10.77.0.1:9", time.Second)
		if err != nil {
			t.Errorf("dial the server side: %v", err)
			return
		}
		conn.Close()
	})
}

func TestDHCPNoAnswerIsBounded(t *testing.T) {
	p := newPair(t)
	start := time.Now()
	_, log, err := up(t, p, Options{LinkTimeout: 10 * time.Second, DHCPTimeout: 2 * time.Second, DHCPWait: 200 * time.Millisecond})
	took := time.Since(start)
	t.Log(log)
	want := "no DHCP lease within 2s: veth-node: no answer from a DHCP server"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if !strings.Contains(log, "step=link status=ok") || !strings.Contains(log, "iface=veth-node mac="+p.nodeMAC.String()+" picked-by=carrier nics=1") || !strings.Contains(log, "step=dhcp status=fail") {
		t.Errorf("step lines:\n%s", log)
	}
	if took > 4*time.Second {
		t.Errorf("took %s with a 2s DHCP bound", took)
	}
}

func TestStaticIPInNetns(t *testing.T) {
	p := newPair(t)
	ipc, err := cmdline.ParseIP("10.77.0.9::10.77.0.1:255.255.255.0:node9:veth-node:none:10.77.0.53")
	if err != nil {
		t.Fatal(err)
	}
	c, log, err := up(t, p, Options{IP: &ipc, LinkTimeout: 10 * time.Second})
	t.Log(log)
	if err != nil {
		t.Fatal(err)
	}
	if c.DHCP || c.Addr != netip.MustParsePrefix("10.77.0.9/24") {
		t.Errorf("config %+v", c)
	}
	if !strings.Contains(log, "step=link status=ok") || !strings.Contains(log, "picked-by=ip") ||
		!strings.Contains(log, `step=dhcp status=skip`) || !strings.Contains(log, `reason="static ip="`) {
		t.Errorf("step lines:\n%s", log)
	}
	if out := run(t, "ip", "-n", p.node, "-4", "route", "show", "default"); !strings.Contains(out, "default via 10.77.0.1 dev veth-node") {
		t.Errorf("default route not configured:\n%s", out)
	}
}

func TestLinkFailures(t *testing.T) {
	t.Run("BOOTIF names no NIC", func(t *testing.T) {
		p := newPair(t)
		other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
		_, log, err := up(t, p, Options{BootIF: other, LinkTimeout: 500 * time.Millisecond})
		want := "no NIC matching BOOTIF=02:00:00:00:00:99 appeared within 500ms; NICs: lo, veth-node (" + p.nodeMAC.String() + ")"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(log, "step=link status=fail") {
			t.Errorf("err = %v, want %q; log:\n%s", err, want, log)
		}
	})
	t.Run("no carrier", func(t *testing.T) {
		p := newPair(t)
		run(t, "ip", "-n", p.srv, "link", "set", "veth-srv", "down")
		_, log, err := up(t, p, Options{LinkTimeout: 500 * time.Millisecond, DHCPTimeout: time.Second})
		t.Log(log)
		want := "no carrier on veth-node within 500ms"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	})
}

// TestDHCPOnEveryNICWithLink: without BOOTIF= or ip=, every Ethernet NIC with carrier is
// asked, and one without carrier is left out.
func TestDHCPOnEveryNICWithLink(t *testing.T) {
	p := newPair(t)
	serveDHCP(t, p)
	// A second NIC whose far end is down: no carrier, never asked.
	run(t, "ip", "-n", p.node, "link", "add", "veth-dead", "type", "veth", "peer", "name", "veth-far", "netns", p.srv)
	c, log, err := up(t, p, Options{LinkTimeout: 5 * time.Second, CarrierGrace: 300 * time.Millisecond, DHCPTimeout: 5 * time.Second, DHCPWait: 300 * time.Millisecond})
	t.Log(log)
	if err != nil {
		t.Fatal(err)
	}
	if c.Iface != "veth-node" || c.Addr != netip.MustParsePrefix("10.77.0.50/24") {
		t.Errorf("config %+v", c)
	}
	if !strings.Contains(log, "iface=veth-node mac="+p.nodeMAC.String()+" picked-by=carrier nics=2") {
		t.Errorf("link step line should name veth-node, the one of 2 NICs with carrier:\n%s", log)
	}
	if out := run(t, "ip", "-n", p.node, "link", "show", "veth-dead"); !strings.Contains(out, "NO-CARRIER") || !strings.Contains(out, ",UP") {
		t.Errorf("veth-dead should be up without carrier:\n%s", out)
	}
}

package netup

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/netup/netuptest"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

func up(t *testing.T, p netuptest.Pair, o Options) (Config, string, error) {
	t.Helper()
	var log bytes.Buffer
	o.Steps = steplog.New(&log)
	if o.ResolvConf == "" {
		o.ResolvConf = filepath.Join(t.TempDir(), "etc", "resolv.conf")
	}
	var c Config
	var err error
	netuptest.In(t, p.Node, func() { c, err = Up(context.Background(), o) })
	return c, log.String(), err
}

func TestDHCPInNetns(t *testing.T) {
	p := netuptest.NewPair(t)
	seen := netuptest.ServeDHCP(t, p)
	resolv := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	c, log, err := up(t, p, Options{BootIF: p.NodeMAC, ResolvConf: resolv, LinkTimeout: 10 * time.Second, DHCPTimeout: 10 * time.Second, DHCPWait: 500 * time.Millisecond})
	t.Log(log)
	if err != nil {
		t.Fatal(err)
	}
	if c.Iface != "veth-node" || c.Addr != netip.MustParsePrefix("10.77.0.50/24") || c.Gateway != netip.MustParseAddr("10.77.0.1") ||
		c.Server != netip.MustParseAddr("10.77.0.1") || c.Lease != time.Hour || !c.DHCP {
		t.Errorf("config %+v", c)
	}
	for _, want := range []string{
		"step=link status=ok", "iface=veth-node", "mac=" + p.NodeMAC.String(), "picked-by=bootif",
		"step=dhcp status=ok", "addr=10.77.0.50/24", "gw=10.77.0.1", "dns=10.77.0.53", "server=10.77.0.1", "lease=1h0m0s",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("step lines lack %q", want)
		}
	}
	if out := netuptest.Run(t, "ip", "-n", p.Node, "-4", "addr", "show", "dev", "veth-node"); !strings.Contains(out, "inet 10.77.0.50/24 brd 10.77.0.255") {
		t.Errorf("address not configured:\n%s", out)
	}
	if out := netuptest.Run(t, "ip", "-n", p.Node, "-4", "route", "show", "default"); !strings.Contains(out, "default via 10.77.0.1 dev veth-node") {
		t.Errorf("default route not configured:\n%s", out)
	}
	b, err := os.ReadFile(resolv)
	if err != nil || !strings.Contains(string(b), "nameserver 10.77.0.53\n") || !strings.Contains(string(b), "search boot.test\n") {
		t.Errorf("resolv.conf: %v\n%s", err, b)
	}
	// Every message identifies the client as iPXE and systemd-networkd (ClientIdentifier=mac)
	// do, type 1 + MAC, so a DHCP server keying leases by client identifier hands the initrd,
	// iPXE and the booted system one address (a boot credential is bound to it).
	wantID := append([]byte{1}, p.NodeMAC...)
	ids := seen.ClientIDs()
	if len(ids) == 0 {
		t.Error("the DHCP server saw no message")
	}
	for i, id := range ids {
		if !bytes.Equal(id, wantID) {
			t.Errorf("message %d: client identifier %x, want %x", i, id, wantID)
		}
	}
	// The node reaches the server's side over the configured link.
	netuptest.In(t, p.Node, func() {
		conn, err := net.DialTimeout("udp", "10.77.0.1:9", time.Second)
		if err != nil {
			t.Errorf("dial the server side: %v", err)
			return
		}
		conn.Close()
	})
}

func TestDHCPNoAnswerIsBounded(t *testing.T) {
	p := netuptest.NewPair(t)
	start := time.Now()
	_, log, err := up(t, p, Options{LinkTimeout: 10 * time.Second, DHCPTimeout: 2 * time.Second, DHCPWait: 200 * time.Millisecond})
	took := time.Since(start)
	t.Log(log)
	want := "no DHCP lease within 2s: veth-node: no answer from a DHCP server"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if !strings.Contains(log, "step=link status=ok") || !strings.Contains(log, "iface=veth-node mac="+p.NodeMAC.String()+" picked-by=carrier nics=1") || !strings.Contains(log, "step=dhcp status=fail") {
		t.Errorf("step lines:\n%s", log)
	}
	if took > 4*time.Second {
		t.Errorf("took %s with a 2s DHCP bound", took)
	}
}

func TestStaticIPInNetns(t *testing.T) {
	p := netuptest.NewPair(t)
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
	if out := netuptest.Run(t, "ip", "-n", p.Node, "-4", "route", "show", "default"); !strings.Contains(out, "default via 10.77.0.1 dev veth-node") {
		t.Errorf("default route not configured:\n%s", out)
	}
}

func TestLinkFailures(t *testing.T) {
	t.Run("BOOTIF names no NIC", func(t *testing.T) {
		p := netuptest.NewPair(t)
		other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
		_, log, err := up(t, p, Options{BootIF: other, LinkTimeout: 500 * time.Millisecond})
		want := "no NIC matching BOOTIF=02:00:00:00:00:99 appeared within 500ms; NICs: lo, veth-node (" + p.NodeMAC.String() + ")"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(log, "step=link status=fail") {
			t.Errorf("err = %v, want %q; log:\n%s", err, want, log)
		}
	})
	t.Run("no carrier", func(t *testing.T) {
		p := netuptest.NewPair(t)
		netuptest.Run(t, "ip", "-n", p.Srv, "link", "set", "veth-srv", "down")
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
	p := netuptest.NewPair(t)
	netuptest.ServeDHCP(t, p)
	// A second NIC whose far end is down: no carrier, never asked.
	netuptest.Run(t, "ip", "-n", p.Node, "link", "add", "veth-dead", "type", "veth", "peer", "name", "veth-far", "netns", p.Srv)
	c, log, err := up(t, p, Options{LinkTimeout: 5 * time.Second, CarrierGrace: 300 * time.Millisecond, DHCPTimeout: 5 * time.Second, DHCPWait: 300 * time.Millisecond})
	t.Log(log)
	if err != nil {
		t.Fatal(err)
	}
	if c.Iface != "veth-node" || c.Addr != netip.MustParsePrefix("10.77.0.50/24") {
		t.Errorf("config %+v", c)
	}
	if !strings.Contains(log, "iface=veth-node mac="+p.NodeMAC.String()+" picked-by=carrier nics=2") {
		t.Errorf("link step line should name veth-node, the one of 2 NICs with carrier:\n%s", log)
	}
	if out := netuptest.Run(t, "ip", "-n", p.Node, "link", "show", "veth-dead"); !strings.Contains(out, "NO-CARRIER") || !strings.Contains(out, ",UP") {
		t.Errorf("veth-dead should be up without carrier:\n%s", out)
	}
}

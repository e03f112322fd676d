// Package netuptest sets up what the network root's tests run against: two network
// namespaces joined by a veth pair, and a DHCP server (insomniacslk/dhcp's server4) on the
// server's side. Only tests import it.
package netuptest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/layers/testenv"
)

// Pair is a veth pair between two network namespaces this test creates: the node's side
// (veth-node, left down for Up to bring up) and the server's side (veth-srv, 10.77.0.1/24, up).
type Pair struct {
	Node, Srv string // namespace names
	NodeMAC   net.HardwareAddr
}

var nsSeq atomic.Int32

// Run runs a command and returns its output; failure ends the test.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NewPair creates the namespaces and the veth pair, removed when the test ends. It skips
// (fails under CI=true) without root or ip(8), and under -short.
func NewPair(t testing.TB) Pair {
	testenv.Integration(t, "network namespaces with a veth pair")
	testenv.Root(t, "creates network namespaces")
	testenv.Tools(t, "ip")
	n := nsSeq.Add(1)
	p := Pair{Node: fmt.Sprintf("imgctl-node-%d-%d", os.Getpid(), n), Srv: fmt.Sprintf("imgctl-srv-%d-%d", os.Getpid(), n)}
	for _, ns := range []string{p.Node, p.Srv} {
		Run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	p.NodeMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, byte(n)}
	Run(t, "ip", "-n", p.Node, "link", "add", "veth-node", "address", p.NodeMAC.String(), "type", "veth", "peer", "name", "veth-srv", "netns", p.Srv)
	Run(t, "ip", "-n", p.Srv, "addr", "add", "10.77.0.1/24", "dev", "veth-srv")
	Run(t, "ip", "-n", p.Srv, "link", "set", "veth-srv", "up")
	return p
}

// In runs fn on a thread in the named network namespace. The thread stays locked and ends
// with fn's goroutine, so it never returns to the runtime's pool in the wrong namespace.
func In(t testing.TB, ns string, fn func()) {
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

// DHCPSeen records what the test DHCP server received.
type DHCPSeen struct {
	mu        sync.Mutex
	clientIDs [][]byte // option 61 of each message, nil where absent
}

// ClientIDs returns option 61 (client identifier) of every message so far, nil where absent.
func (s *DHCPSeen) ClientIDs() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.clientIDs)
}

// ServeDHCP runs insomniacslk/dhcp's server4 on veth-srv, handing out 10.77.0.50/24.
func ServeDHCP(t testing.TB, p Pair) *DHCPSeen {
	t.Helper()
	seen := &DHCPSeen{}
	handler := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		seen.mu.Lock()
		seen.clientIDs = append(seen.clientIDs, m.Options.Get(dhcpv4.OptionClientIdentifier))
		seen.mu.Unlock()
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
	In(t, p.Srv, func() {
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
	return seen
}

// DialContextIn is an http.Transport DialContext that makes its sockets in the named
// namespace (on a thread of their own that ends with the dial).
func DialContextIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// ListenIn listens on addr in the named namespace.
func ListenIn(t testing.TB, ns, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	In(t, ns, func() { l, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

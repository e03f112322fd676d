package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// The cluster LAN: the network that several qemu guests of one test share, so that they reach
// each other and nothing else. Each guest keeps NIC 1 on its own `-netdev user,restrict=on`
// (metadata through the loopback relay; restricted, slirp's DHCP gives it an address but no
// router and no DNS) and gets NIC 2 on the LAN: a `-netdev dgram` socket on 127.0.0.1 that sends
// each Ethernet frame as one UDP datagram to a port of the hub below. The hub forwards frames
// between its ports (learning where a source MAC is, flooding the rest) and answers DHCP itself
// with a static lease per MAC, no DNS option and no router option unless defaultRoute is set. A
// MAC without a lease gets no answer.

// Addresses of the cluster LAN.
var (
	lanPrefix   = netip.MustParsePrefix("192.168.50.0/24")
	lanServerIP = netip.MustParseAddr("192.168.50.1") // the hub's DHCP server identifier
	// lanServerMAC is the hub's own station (locally administered).
	lanServerMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x50, 0x01}
)

// lanLeaseTime is long enough that no guest renews during a test (the hub does not answer ARP
// for its own address, so a unicast renewal would go unanswered until the broadcast rebind).
const lanLeaseTime = 12 * time.Hour

// Ethernet.
const (
	etherHeaderLen = 14
	etherTypeIPv4  = 0x0800
	maxFrame       = 65535 // a datagram; qemu sends one frame per datagram
)

var etherBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// clusterLAN is the hub. It runs until the test's context ends (or close is called) and then
// closes its sockets and waits for every goroutine it started.
type clusterLAN struct {
	t      testing.TB
	leases map[string]netip.Addr // MAC (lower case aa:bb:…) → address in lanPrefix

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	station *ipStation // the hub's DHCP server's NIC

	mu sync.Mutex
	// defaultRoute makes the leases carry a router option, the hub's own address (which routes
	// nothing: frames only go between the guests). Under restrict=on slirp gives NIC 1 an
	// address but neither a router nor DNS, so without this a guest has no default route at
	// all: a host process cannot send to a Service IP (routing comes before kube-proxy's DNAT)
	// and kubeadm's and the kubelet's address defaults (the default route's interface) fail.
	// Set it before the guests boot.
	defaultRoute bool
	ports        []*lanPort
	where        map[string]*lanPort // source MAC → the port it was last seen on
	acks         map[string]netip.Addr
	closed       bool
}

// lanPort is one guest's port: a UDP socket on 127.0.0.1 that its qemu sends to. The guest's
// own address is learned from the first datagram (qemu binds local.port=0); datagrams from any
// other address are dropped.
type lanPort struct {
	mac  string
	conn *net.UDPConn
	peer *net.UDPAddr // under clusterLAN.mu
}

// newClusterLAN starts a hub with DHCP leases by MAC (aa:bb:cc:dd:ee:ff → an address in
// 192.168.50.0/24). It stops with the test.
func newClusterLAN(t testing.TB, leases map[string]string) *clusterLAN {
	t.Helper()
	l := &clusterLAN{t: t, leases: map[string]netip.Addr{}, where: map[string]*lanPort{}, acks: map[string]netip.Addr{}}
	for mac, ip := range leases {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			t.Fatalf("cluster LAN lease %q: %v", mac, err)
		}
		a, err := netip.ParseAddr(ip)
		if err != nil || !lanPrefix.Contains(a) || a == lanServerIP || a == lanPrefix.Addr() {
			t.Fatalf("cluster LAN lease %s → %q: expected a host address in %s other than %s", mac, ip, lanPrefix, lanServerIP)
		}
		l.leases[hw.String()] = a
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.station = newIPStation(lanServerMAC, func(frame []byte) { l.forward(nil, frame) })
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		l.serveDHCP()
	}()
	go func() {
		defer l.wg.Done()
		select {
		case <-l.ctx.Done():
		case <-testContext(t).Done():
		}
		l.shutdown()
	}()
	t.Cleanup(l.close)
	return l
}

// testContext is t's context where it has one (*testing.T, *testing.B).
func testContext(t testing.TB) context.Context {
	if c, ok := t.(interface{ Context() context.Context }); ok {
		return c.Context()
	}
	return context.Background()
}

// close stops the hub and waits for its goroutines.
func (l *clusterLAN) close() {
	l.cancel()
	l.wg.Wait()
}

// shutdown closes every socket, which ends the goroutines reading them.
func (l *clusterLAN) shutdown() {
	l.mu.Lock()
	l.closed = true
	ports := l.ports
	l.mu.Unlock()
	for _, p := range ports {
		p.conn.Close()
	}
	l.station.Close()
}

// netdevArgs opens a hub port for the guest NIC with this MAC and returns the qemu -netdev
// spec (id n1) that joins it to the LAN.
func (l *clusterLAN) netdevArgs(mac string) string {
	l.t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		l.t.Fatalf("cluster LAN port for %q: %v", mac, err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		l.t.Fatalf("cluster LAN port for %s: %v", mac, err)
	}
	p := &lanPort{mac: hw.String(), conn: conn}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		conn.Close()
		l.t.Fatalf("cluster LAN port for %s: the LAN has stopped", mac)
	}
	l.ports = append(l.ports, p)
	l.wg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.wg.Done()
		l.readPort(p)
	}()
	return fmt.Sprintf("dgram,id=n1,local.type=inet,local.host=127.0.0.1,local.port=0,"+
		"remote.type=inet,remote.host=127.0.0.1,remote.port=%d", conn.LocalAddr().(*net.UDPAddr).Port)
}

// acked returns the addresses the hub's DHCP server has acknowledged (or is about to send an
// acknowledgement of), by MAC.
func (l *clusterLAN) acked() map[string]netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]netip.Addr{}
	for k, v := range l.acks {
		out[k] = v
	}
	return out
}

func (l *clusterLAN) readPort(p *lanPort) {
	buf := make([]byte, maxFrame)
	for {
		n, from, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		if n < etherHeaderLen || !from.IP.IsLoopback() {
			continue
		}
		l.mu.Lock()
		if p.peer == nil {
			p.peer = from
		}
		same := p.peer.IP.Equal(from.IP) && p.peer.Port == from.Port
		l.mu.Unlock()
		if !same {
			continue // not this port's guest
		}
		l.forward(p, append([]byte(nil), buf[:n]...))
	}
}

// forward delivers a frame that arrived on port in (nil: from the hub's station): to the port
// where its destination MAC was last seen, else to every other port; and to the station when it
// is addressed to it or broadcast.
func (l *clusterLAN) forward(in *lanPort, frame []byte) {
	dst, src := net.HardwareAddr(frame[0:6]), net.HardwareAddr(frame[6:12])
	l.mu.Lock()
	if in != nil && src[0]&1 == 0 {
		l.where[src.String()] = in
	}
	type dest struct {
		conn *net.UDPConn
		peer *net.UDPAddr
	}
	var out []dest
	if to, ok := l.where[dst.String()]; ok && dst[0]&1 == 0 {
		if to != in {
			out = append(out, dest{to.conn, to.peer})
		}
	} else {
		for _, p := range l.ports {
			if p != in && p.peer != nil {
				out = append(out, dest{p.conn, p.peer})
			}
		}
	}
	l.mu.Unlock()
	for _, d := range out {
		_, _ = d.conn.WriteToUDP(frame, d.peer) // a guest that is gone loses the frame, as on a wire
	}
	if in != nil && (dst[0]&1 == 1 || dst.String() == lanServerMAC.String()) {
		l.station.deliver(frame)
	}
}

// serveDHCP answers DHCPDISCOVER with an offer and DHCPREQUEST with an ack of the MAC's lease
// (a NAK if it asks for another address); MACs without a lease get nothing.
func (l *clusterLAN) serveDHCP() {
	in := nclient4.NewBroadcastUDPConn(l.station, &net.UDPAddr{Port: dhcpv4.ServerPort})
	out := nclient4.NewBroadcastUDPConn(l.station, &net.UDPAddr{IP: lanServerIP.AsSlice(), Port: dhcpv4.ServerPort})
	buf := make([]byte, maxFrame)
	for {
		n, _, err := in.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest {
			continue
		}
		reply, mac := l.dhcpReply(m)
		if reply == nil {
			continue
		}
		dst := net.IPv4bcast
		if !m.ClientIPAddr.IsUnspecified() && m.ClientIPAddr != nil {
			dst = m.ClientIPAddr // a renewing client has its address (RFC 2131 4.1)
		}
		if reply.MessageType() == dhcpv4.MessageTypeAck {
			// Recorded before it is sent: a client that has its ack finds it in acked().
			l.mu.Lock()
			l.acks[mac], _ = netip.AddrFromSlice(reply.YourIPAddr.To4())
			l.mu.Unlock()
		}
		_, _ = out.WriteTo(reply.ToBytes(), &net.UDPAddr{IP: dst, Port: dhcpv4.ClientPort})
	}
}

func (l *clusterLAN) dhcpReply(m *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, string) {
	mac := m.ClientHWAddr.String()
	lease, ok := l.leases[mac]
	if !ok {
		return nil, ""
	}
	var typ dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		if sid := m.ServerIdentifier(); sid != nil && !sid.Equal(lanServerIP.AsSlice()) {
			return nil, "" // the client chose another server's offer
		}
		asked := m.RequestedIPAddress()
		if asked == nil || asked.IsUnspecified() {
			asked = m.ClientIPAddr
		}
		typ = dhcpv4.MessageTypeAck
		if !asked.Equal(lease.AsSlice()) {
			typ = dhcpv4.MessageTypeNak
		}
	default:
		return nil, ""
	}
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(typ), dhcpv4.WithServerIP(lanServerIP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(lanServerIP.AsSlice()))}
	if typ != dhcpv4.MessageTypeNak {
		// No DNS server, and a router only with defaultRoute.
		mods = append(mods, dhcpv4.WithYourIP(lease.AsSlice()),
			dhcpv4.WithNetmask(net.CIDRMask(lanPrefix.Bits(), 32)),
			dhcpv4.WithLeaseTime(uint32(lanLeaseTime/time.Second)))
		l.mu.Lock()
		if l.defaultRoute {
			mods = append(mods, dhcpv4.WithRouter(lanServerIP.AsSlice()))
		}
		l.mu.Unlock()
	}
	reply, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		return nil, ""
	}
	return reply, mac
}

// ipStation is a NIC on the LAN as a net.PacketConn of IPv4 packets, the form insomniacslk/dhcp's
// nclient4.NewBroadcastUDPConn wraps (it adds and strips the IPv4 and UDP headers): ReadFrom
// returns the IPv4 packets of frames delivered to it (addressed to its MAC or broadcast),
// WriteTo wraps a packet in an Ethernet broadcast frame and hands it to send. The hub's DHCP server is one;
// the tests' fake guests are others.
type ipStation struct {
	mac  net.HardwareAddr
	send func(frame []byte)
	in   chan []byte

	once     sync.Once
	done     chan struct{}
	mu       sync.Mutex
	deadline time.Time
}

func newIPStation(mac net.HardwareAddr, send func(frame []byte)) *ipStation {
	return &ipStation{mac: mac, send: send, in: make(chan []byte, 64), done: make(chan struct{})}
}

// deliver queues a frame's IPv4 packet if the frame is for this station (dropped when the
// queue is full, as a busy NIC drops).
func (s *ipStation) deliver(frame []byte) {
	if len(frame) < etherHeaderLen || int(frame[12])<<8|int(frame[13]) != etherTypeIPv4 {
		return
	}
	if dst := net.HardwareAddr(frame[0:6]); dst.String() != s.mac.String() && dst.String() != etherBroadcast.String() {
		return
	}
	select {
	case s.in <- frame[etherHeaderLen:]:
	default:
	}
}

var errStationTimeout = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (s *ipStation) ReadFrom(b []byte) (int, net.Addr, error) {
	s.mu.Lock()
	d := s.deadline
	s.mu.Unlock()
	var timeout <-chan time.Time
	if !d.IsZero() {
		tm := time.NewTimer(time.Until(d))
		defer tm.Stop()
		timeout = tm.C
	}
	select {
	case p := <-s.in:
		return copy(b, p), stationAddr(s.mac), nil
	case <-s.done:
		return 0, nil, net.ErrClosed
	case <-timeout:
		return 0, nil, errStationTimeout
	}
}

func (s *ipStation) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-s.done:
		return 0, net.ErrClosed
	default:
	}
	// nclient4's BroadcastRawUDPConn sends every packet to the broadcast MAC (addr says so).
	frame := make([]byte, 0, etherHeaderLen+len(b))
	frame = append(frame, etherBroadcast...)
	frame = append(frame, s.mac...)
	frame = append(frame, etherTypeIPv4>>8, etherTypeIPv4&0xff)
	frame = append(frame, b...)
	s.send(frame)
	return len(b), nil
}

func (s *ipStation) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

func (s *ipStation) LocalAddr() net.Addr { return stationAddr(s.mac) }

// stationAddr is an ipStation's address: its MAC.
type stationAddr net.HardwareAddr

func (a stationAddr) Network() string { return "ethernet" }
func (a stationAddr) String() string  { return net.HardwareAddr(a).String() }

func (s *ipStation) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

func (s *ipStation) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.deadline = t
	s.mu.Unlock()
	return nil
}

func (s *ipStation) SetWriteDeadline(time.Time) error { return nil }

// lanRemotePort is the hub port a netdevArgs spec sends to.
func lanRemotePort(spec string) (int, error) {
	for _, kv := range strings.Split(spec, ",") {
		if v, ok := strings.CutPrefix(kv, "remote.port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("no remote.port in " + spec)
}

// fakeGuest is a guest NIC as qemu's -netdev dgram is one: a UDP socket on 127.0.0.1 that sends
// each frame to its hub port and receives frames from it. Its ipStation lets insomniacslk/dhcp's
// client run on it.
type fakeGuest struct {
	mac     net.HardwareAddr
	conn    *net.UDPConn
	frames  chan []byte
	station *ipStation
}

func newFakeGuest(t *testing.T, l *clusterLAN, mac string) *fakeGuest {
	t.Helper()
	spec := l.netdevArgs(mac)
	port, err := lanRemotePort(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(spec, "dgram,id=n1,") || !strings.Contains(spec, "local.host=127.0.0.1") {
		t.Fatalf("netdev spec %q: want a dgram netdev (id n1) on 127.0.0.1", spec)
	}
	conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	hw, _ := net.ParseMAC(mac)
	g := &fakeGuest{mac: hw, conn: conn, frames: make(chan []byte, 64)}
	g.station = newIPStation(hw, func(frame []byte) { _, _ = conn.Write(frame) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxFrame)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			f := append([]byte(nil), buf[:n]...)
			select {
			case g.frames <- f:
			default:
			}
			g.station.deliver(f)
		}
	}()
	t.Cleanup(func() { conn.Close(); g.station.Close(); <-done })
	return g
}

// send sends an Ethernet frame to dst with payload.
func (g *fakeGuest) send(t *testing.T, dst net.HardwareAddr, payload string) {
	t.Helper()
	frame := append(append(append([]byte{}, dst...), g.mac...), 0x88, 0xb5) // local experimental EtherType
	if _, err := g.conn.Write(append(frame, payload...)); err != nil {
		t.Fatal(err)
	}
}

// next returns the next frame's payload with the given EtherType 0x88b5, or "" after wait.
func (g *fakeGuest) next(wait time.Duration) string {
	tm := time.NewTimer(wait)
	defer tm.Stop()
	for {
		select {
		case f := <-g.frames:
			if len(f) > etherHeaderLen && f[12] == 0x88 && f[13] == 0xb5 {
				return string(f[etherHeaderLen:])
			}
		case <-tm.C:
			return ""
		}
	}
}

// TestClusterLANForwardsFrames: a broadcast reaches every other port and not its sender; a
// frame to a MAC the hub has seen reaches only that port; a frame to a MAC it has not seen is
// flooded; a datagram from another address than a port's guest is dropped.
func TestClusterLANForwardsFrames(t *testing.T) {
	l := newClusterLAN(t, nil)
	a := newFakeGuest(t, l, "52:54:00:50:00:0a")
	b := newFakeGuest(t, l, "52:54:00:50:00:0b")
	c := newFakeGuest(t, l, "52:54:00:50:00:0c")
	const wait = 2 * time.Second
	// Each guest speaks first (qemu binds local.port=0: the hub learns the guest's address from
	// its first datagram); until then it gets nothing.
	for i, g := range []*fakeGuest{a, b, c} {
		g.send(t, etherBroadcast, "join")
		waitJoined(t, l, i+1)
	}
	if got := a.next(wait); got != "join" {
		t.Errorf("a got %q, want b's join", got)
	}
	time.Sleep(300 * time.Millisecond)
	for _, g := range []*fakeGuest{a, b, c} {
		for g.next(10*time.Millisecond) != "" {
		}
	}
	a.send(t, etherBroadcast, "broadcast")
	if b.next(wait) != "broadcast" || c.next(wait) != "broadcast" {
		t.Fatal("a broadcast did not reach both other ports")
	}
	if p := a.next(300 * time.Millisecond); p != "" {
		t.Errorf("the sender got its own broadcast back: %q", p)
	}
	a.send(t, b.mac, "to b")
	if got := b.next(wait); got != "to b" {
		t.Errorf("b got %q, want \"to b\"", got)
	}
	if p := c.next(300 * time.Millisecond); p != "" {
		t.Errorf("c got %q: a frame to a learned MAC went to another port", p)
	}
	a.send(t, a.mac, "to a's own port")
	for _, g := range []*fakeGuest{a, b, c} {
		if p := g.next(300 * time.Millisecond); p != "" {
			t.Errorf("%s got %q: a frame to a MAC on its sender's port left the port", g.mac, p)
		}
	}
	unknown := net.HardwareAddr{0x52, 0x54, 0x00, 0x50, 0x00, 0xee}
	a.send(t, unknown, "to nobody")
	if b.next(wait) != "to nobody" || c.next(wait) != "to nobody" {
		t.Error("a frame to an unseen MAC was not flooded")
	}
	// Another socket sending to b's port is not b's guest.
	intruder, err := net.DialUDP("udp4", nil, b.conn.RemoteAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Close()
	intruder.Write(append(append(append([]byte{}, a.mac...), unknown...), 0x88, 0xb5, 'x'))
	if p := a.next(300 * time.Millisecond); p != "" {
		t.Errorf("a got %q from a socket that is not b's guest", p)
	}
}

// waitJoined waits until n of the hub's ports know their guest.
func waitJoined(t *testing.T, l *clusterLAN, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		l.mu.Lock()
		k := 0
		for _, p := range l.ports {
			if p.peer != nil {
				k++
			}
		}
		l.mu.Unlock()
		if k >= n {
			return
		}
	}
	t.Fatalf("fewer than %d guests joined the hub within 5 s", n)
}

// TestClusterLANLeases: insomniacslk/dhcp's client on a fake guest gets its static lease
// (offer and ack) with a netmask and no router or DNS option (a router with defaultRoute); a MAC without a lease gets no
// offer; asking for another address is refused with a NAK.
func TestClusterLANLeases(t *testing.T) {
	l := newClusterLAN(t, map[string]string{"52:54:00:50:00:11": "192.168.50.11", "52:54:00:50:00:12": "192.168.50.12"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := func(g *fakeGuest) *nclient4.Client {
		t.Helper()
		c, err := nclient4.NewWithConn(nclient4.NewBroadcastUDPConn(g.station, &net.UDPAddr{Port: dhcpv4.ClientPort}), g.mac,
			nclient4.WithTimeout(time.Second), nclient4.WithRetry(2))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, tc := range []struct{ mac, ip string }{{"52:54:00:50:00:11", "192.168.50.11"}, {"52:54:00:50:00:12", "192.168.50.12"}} {
		g := newFakeGuest(t, l, tc.mac)
		lease, err := client(g).Request(ctx)
		if err != nil {
			t.Fatalf("%s: DHCP: %v", tc.mac, err)
		}
		ack := lease.ACK
		if ack.MessageType() != dhcpv4.MessageTypeAck || ack.YourIPAddr.String() != tc.ip {
			t.Errorf("%s: %s for %s, want an ack for %s", tc.mac, ack.MessageType(), ack.YourIPAddr, tc.ip)
		}
		if m := ack.SubnetMask(); m == nil || net.IP(m).String() != "255.255.255.0" {
			t.Errorf("%s: netmask %v, want 255.255.255.0", tc.mac, m)
		}
		if r, d := ack.Router(), ack.DNS(); len(r) != 0 || len(d) != 0 {
			t.Errorf("%s: router %v, DNS %v: want neither (no defaultRoute)", tc.mac, r, d)
		}
		if sid := ack.ServerIdentifier(); !sid.Equal(lanServerIP.AsSlice()) {
			t.Errorf("%s: server identifier %v, want %s", tc.mac, sid, lanServerIP)
		}
		if lt := ack.IPAddressLeaseTime(0); lt != lanLeaseTime {
			t.Errorf("%s: lease time %v, want %v", tc.mac, lt, lanLeaseTime)
		}
	}
	if got := l.acked(); len(got) != 2 || got["52:54:00:50:00:11"].String() != "192.168.50.11" || got["52:54:00:50:00:12"].String() != "192.168.50.12" {
		t.Errorf("acked = %v", got)
	}

	// With defaultRoute, the leases name the hub as the router (still no DNS).
	l.mu.Lock()
	l.defaultRoute = true
	l.mu.Unlock()
	lease, err := client(newFakeGuest(t, l, "52:54:00:50:00:12")).Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r, d := lease.ACK.Router(), lease.ACK.DNS(); len(r) != 1 || !r[0].Equal(lanServerIP.AsSlice()) || len(d) != 0 {
		t.Errorf("defaultRoute: router %v, DNS %v; want router %s and no DNS", r, d, lanServerIP)
	}

	// The NAK: a client asking for an address that is not its lease.
	g := newFakeGuest(t, l, "52:54:00:50:00:11")
	offer, err := client(g).DiscoverOffer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = client(g).RequestFromOffer(ctx, offer, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(192, 168, 50, 99))))
	var nak *nclient4.ErrNak
	if !errors.As(err, &nak) {
		t.Errorf("request for 192.168.50.99 = %v, want a NAK", err)
	}

	// A MAC without a lease: no offer (the client times out).
	stranger := newFakeGuest(t, l, "52:54:00:50:00:99")
	sctx, scancel := context.WithTimeout(ctx, 4*time.Second)
	defer scancel()
	if offer, err := client(stranger).DiscoverOffer(sctx); err == nil {
		t.Errorf("a MAC without a lease got an offer of %s", offer.YourIPAddr)
	}
}

// TestClusterLANStops: closing the hub (as the test's end does) ends every goroutine it started
// and closes its ports.
func TestClusterLANStops(t *testing.T) {
	l := newClusterLAN(t, map[string]string{"52:54:00:50:00:11": "192.168.50.11"})
	g := newFakeGuest(t, l, "52:54:00:50:00:11")
	g.send(t, etherBroadcast, "x")
	done := make(chan struct{})
	go func() { l.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the hub did not stop within 5 s")
	}
	// Its port is closed: its address can be bound again.
	c, err := net.ListenUDP("udp4", g.conn.RemoteAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatalf("the hub's port is still open after close: %v", err)
	}
	c.Close()
}

// TestLANArgs: NIC 2's qemu arguments take the hub's netdev spec and a MAC, and refuse a netdev
// that could reach beyond loopback.
func TestLANArgs(t *testing.T) {
	l := newClusterLAN(t, nil)
	spec := l.netdevArgs("52:54:00:50:00:11")
	got, err := lanArgs(spec, "52:54:00:50:00:11")
	if want := []string{"-netdev", spec, "-device", "virtio-net-pci,netdev=n1,romfile=,mac=52:54:00:50:00:11"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("lanArgs = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []struct{ spec, mac string }{
		{"user,id=n1,restrict=on", "52:54:00:50:00:11"},
		{strings.Replace(spec, "remote.host=127.0.0.1", "remote.host=192.0.2.1", 1), "52:54:00:50:00:11"},
		{spec + ",remote.host=192.0.2.1", "52:54:00:50:00:11"},
		{strings.Replace(spec, "local.host=127.0.0.1", "local.host=0.0.0.0", 1), "52:54:00:50:00:11"},
		{strings.Replace(spec, "id=n1", "id=n0", 1), "52:54:00:50:00:11"},
		{spec, ""},
		{spec, "52:54:00:50:00:11,netdev=n0"},
	} {
		if got, err := lanArgs(bad.spec, bad.mac); err == nil {
			t.Errorf("lanArgs(%q, %q) = %q, want an error", bad.spec, bad.mac, got)
		}
	}
}

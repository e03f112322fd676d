package podnet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fakeAPI is an API server with the Node list podnet reads; it requires a client
// certificate from the test's CA, like the real one with the kubelet's.
type fakeAPI struct {
	mu     sync.Mutex
	nodes  []apiNode
	status int // answer every request with this status when not 0
	page   int // items per page when not 0; continue is the next index ("loop": always "0")
	loop   bool
	seen   []string
	srv    *httptest.Server
}

func (f *fakeAPI) set(nodes ...apiNode) { f.mu.Lock(); f.nodes = nodes; f.mu.Unlock() }

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "system:node:n1" {
		http.Error(w, "no client certificate", http.StatusUnauthorized)
		return
	}
	f.seen = append(f.seen, r.URL.RequestURI())
	if f.status != 0 {
		w.WriteHeader(f.status)
		json.NewEncoder(w).Encode(map[string]string{"kind": "Status", "message": `nodes is forbidden: User "system:node:n1" cannot list resource "nodes"`})
		return
	}
	if r.URL.Path != "/api/v1/nodes" || r.URL.Query().Get("limit") != "500" {
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(map[string]string{"message": "not found: " + r.URL.RequestURI()})
		return
	}
	if f.page == 0 {
		json.NewEncoder(w).Encode(nodeList{Items: f.nodes})
		return
	}
	start, _ := strconv.Atoi(r.URL.Query().Get("continue"))
	end := min(start+f.page, len(f.nodes))
	var l nodeList
	l.Items = f.nodes[start:end]
	if end < len(f.nodes) {
		l.Metadata.Continue = strconv.Itoa(end)
	}
	if f.loop {
		l.Metadata.Continue = "0"
	}
	json.NewEncoder(w).Encode(l)
}

// newFakeAPI starts the server and writes a kubeconfig for it the way kubeadm writes
// kubelet.conf: inline CA data, client certificate and key in one file.
func newFakeAPI(t *testing.T) (*fakeAPI, string) {
	t.Helper()
	f := &fakeAPI{}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	clientKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	clientDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject:     pkix.Name{CommonName: "system:node:n1", Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, ca, &clientKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	f.srv = httptest.NewUnstartedServer(f)
	f.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)

	dir := t.TempDir()
	keyDER, _ := x509.MarshalECPrivateKey(clientKey)
	pemFile := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: clientDER}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pki", "kubelet-client-current.pem"), pemFile, 0o600); err != nil {
		t.Fatal(err)
	}
	serverCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: %s
    server: %s
  name: default-cluster
contexts:
- context:
    cluster: default-cluster
    namespace: default
    user: default-auth
  name: default-context
current-context: default-context
preferences: {}
users:
- name: default-auth
  user:
    client-certificate: pki/kubelet-client-current.pem
    client-key: pki/kubelet-client-current.pem
`, b64(serverCA), f.srv.URL)
	path := filepath.Join(dir, "kubelet.conf")
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return f, path
}

func b64(b []byte) string {
	out, _ := json.Marshal(b) // encoding/json writes []byte as base64
	return strings.Trim(string(out), `"`)
}

func node(name, podCIDR, ip string) apiNode {
	var n apiNode
	n.Metadata.Name = name
	n.Spec.PodCIDR = podCIDR
	if podCIDR != "" {
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	n.Status.Addresses = append(n.Status.Addresses, struct {
		Type    string `json:"type"`
		Address string `json:"address"`
	}{"Hostname", name}, struct {
		Type    string `json:"type"`
		Address string `json:"address"`
	}{"InternalIP", ip})
	return n
}

// memRoutes is a routing table in memory; it fails Replace for the gateways in unreachable.
type memRoutes struct {
	routes      []Route
	unreachable netip.Addr
}

func (m *memRoutes) List() ([]Route, error) { return slices.Clone(m.routes), nil }
func (m *memRoutes) Replace(r Route) error {
	if r.Via == m.unreachable {
		return fmt.Errorf("netlink add route %s: network is unreachable", r)
	}
	m.routes = slices.DeleteFunc(m.routes, func(h Route) bool { return h.Dst == r.Dst })
	m.routes = append(m.routes, r)
	return nil
}
func (m *memRoutes) Delete(r Route) error {
	m.routes = slices.DeleteFunc(m.routes, func(h Route) bool { return h == r })
	return nil
}

func route(dst, via string) Route {
	return Route{Dst: netip.MustParsePrefix(dst), Via: netip.MustParseAddr(via)}
}

// TestCycles drives podnet against the fake API server through a cluster's life: no pod CIDR
// yet, the pod CIDR and a peer, a second peer, a peer leaving, hostile values, an API refusal.
func TestCycles(t *testing.T) {
	api, kubeconfig := newFakeAPI(t)
	var out bytes.Buffer
	rt := &memRoutes{routes: nil}
	o := Options{NodeName: "n1", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), Kubeconfig: kubeconfig,
		ConfPath: filepath.Join(t.TempDir(), "etc/cni/net.d/10-imgctl.conflist"), Routes: rt, Steps: steplog.New(&out)}
	o.defaults()
	var st state
	cycle := func() string {
		t.Helper()
		out.Reset()
		o.cycle(context.Background(), &st)
		return out.String()
	}

	api.set(node("n1", "", "10.0.0.11"))
	if got := cycle(); !strings.Contains(got, "step=podnet status=progress") || !strings.Contains(got, "waiting=") {
		t.Errorf("no pod CIDR: want one waiting line, got %q", got)
	}
	if got := cycle(); got != "" {
		t.Errorf("still no pod CIDR: want no second line, got %q", got)
	}
	if _, err := os.Stat(o.ConfPath); err == nil {
		t.Fatal("conflist written before the node has a pod CIDR")
	}

	api.set(node("n1", "10.244.1.0/24", "10.0.0.11"), node("m0", "10.244.0.0/24", "10.0.0.10"))
	got := cycle()
	for _, want := range []string{"step=podnet status=ok", "podcidr=10.244.1.0/24", "cni=" + o.ConfPath, "routes=1", `added="10.244.0.0/24 via 10.0.0.10"`} {
		if !strings.Contains(got, want) {
			t.Errorf("pod CIDR allocated: line lacks %s: %q", want, got)
		}
	}
	conf, err := os.ReadFile(o.ConfPath)
	if err != nil || !strings.Contains(string(conf), `"subnet": "10.244.1.0/24"`) {
		t.Fatalf("conflist: %v\n%s", err, conf)
	}
	if !slices.Equal(rt.routes, []Route{route("10.244.0.0/24", "10.0.0.10")}) {
		t.Errorf("routes %v", rt.routes)
	}
	if got := cycle(); got != "" {
		t.Errorf("nothing changed: want no line, got %q", got)
	}

	// A second peer joins; then the first leaves.
	api.set(node("n1", "10.244.1.0/24", "10.0.0.11"), node("m0", "10.244.0.0/24", "10.0.0.10"), node("n2", "10.244.2.0/24", "10.0.0.12"))
	if got := cycle(); !strings.Contains(got, "routes=2") || !strings.Contains(got, `added="10.244.2.0/24 via 10.0.0.12"`) || strings.Contains(got, "cni=") {
		t.Errorf("peer joined: %q", got)
	}
	api.set(node("n1", "10.244.1.0/24", "10.0.0.11"), node("n2", "10.244.2.0/24", "10.0.0.12"))
	if got := cycle(); !strings.Contains(got, "routes=1") || !strings.Contains(got, `removed="10.244.0.0/24 via 10.0.0.10"`) {
		t.Errorf("peer left: %q", got)
	}
	if !slices.Equal(rt.routes, []Route{route("10.244.2.0/24", "10.0.0.12")}) {
		t.Errorf("routes after a peer left: %v", rt.routes)
	}
	// A peer moves to another address: its route follows.
	api.set(node("n1", "10.244.1.0/24", "10.0.0.11"), node("n2", "10.244.2.0/24", "10.0.0.22"))
	cycle()
	if !slices.Equal(rt.routes, []Route{route("10.244.2.0/24", "10.0.0.22")}) {
		t.Errorf("routes after a peer moved: %v", rt.routes)
	}

	// Hostile values: each Node is left out with its reason, the good one is routed.
	api.set(node("n1", "10.244.1.0/24", "10.0.0.11"), node("n2", "10.244.2.0/24", "10.0.0.22"),
		node("x1", "0.0.0.0/0", "10.0.0.31"),      // a default route
		node("x2", "10.244.1.0/25", "10.0.0.32"),  // overlaps ours
		node("x3", "10.244.2.0/24", "10.0.0.33"),  // overlaps n2's (x3 sorts after n2)
		node("x4", "192.168.0.0/24", "10.0.0.34"), // outside the cluster CIDR
		node("x5", "10.244.5.0/24", "127.0.0.1"),  // loopback gateway
		node("x6", "10.244.6.0/24", "10.244.9.9"), // gateway inside the pod CIDR
		node("x7", "10.244.7.1/24", "10.0.0.37"),  // host bits
		node("x8", "-o foo", "10.0.0.38"),         // not a prefix
		node("x9", "10.244.9.0/24", "--help"),     // no IPv4 InternalIP
		node("xa", "fd00::/64", "10.0.0.40"),      // IPv6 only: nothing to route, not an error
		node("xb", "10.244.11.0/24", "10.0.0.41")) // fine
	got = cycle()
	for _, want := range []string{"routes=2", `added="10.244.11.0/24 via 10.0.0.41"`,
		`node \"x1\": spec.podCIDRs: 0.0.0.0/0: prefix length /0`, `node \"x2\": spec.podCIDRs: 10.244.1.0/25 overlaps 10.244.1.0/24`,
		`node \"x3\": spec.podCIDRs: 10.244.2.0/24 overlaps 10.244.2.0/24`, `node \"x4\": spec.podCIDRs: 192.168.0.0/24: outside the cluster's pod CIDR 10.244.0.0/16`,
		`node \"x5\": status.addresses: InternalIP 127.0.0.1: not a unicast address`, `node \"x6\": status.addresses: InternalIP 10.244.9.9: inside the cluster's pod CIDR`,
		`node \"x7\": spec.podCIDRs: 10.244.7.1/24: host bits set (expected 10.244.7.0/24)`, `node \"x8\": spec.podCIDRs: \"-o foo\": expected an IP prefix`,
		`node \"x9\": status.addresses: no IPv4 InternalIP`} {
		if !strings.Contains(got, want) {
			t.Errorf("hostile nodes: line lacks %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, `\"xa\"`) || strings.Contains(got, `\"xb\"`) {
		t.Errorf("hostile nodes: a good node is named as ignored:\n%s", got)
	}
	if !slices.Equal(rt.routes, []Route{route("10.244.2.0/24", "10.0.0.22"), route("10.244.11.0/24", "10.0.0.41")}) {
		t.Errorf("routes with hostile nodes: %v", rt.routes)
	}

	// The API server refuses: one fail line, not one per try; then the recovery line.
	api.mu.Lock()
	api.status = http.StatusForbidden
	api.mu.Unlock()
	got = cycle()
	if !strings.Contains(got, "step=podnet status=fail") || !strings.Contains(got, `403 Forbidden: nodes is forbidden`) {
		t.Errorf("refusal: %q", got)
	}
	if got := cycle(); got != "" {
		t.Errorf("same refusal again: want no line, got %q", got)
	}
	api.mu.Lock()
	api.status = 0
	api.mu.Unlock()
	if got := cycle(); !strings.Contains(got, "step=podnet status=ok") || !strings.Contains(got, "routes=2") {
		t.Errorf("recovered: %q", got)
	}

	// The Node was deleted and registered again with another pod CIDR: the conflist follows.
	api.set(node("n1", "10.244.4.0/24", "10.0.0.11"), node("n2", "10.244.2.0/24", "10.0.0.22"))
	if got := cycle(); !strings.Contains(got, "step=podnet status=ok") || !strings.Contains(got, "podcidr=10.244.4.0/24") || !strings.Contains(got, "cni="+o.ConfPath) {
		t.Errorf("pod CIDR changed: %q", got)
	}
	if conf, err := os.ReadFile(o.ConfPath); err != nil || !strings.Contains(string(conf), `"subnet": "10.244.4.0/24"`) {
		t.Errorf("conflist after the pod CIDR changed: %v\n%s", err, conf)
	}

	// This Node disappears from the list: a failure naming it, the routes stay.
	before := slices.Clone(rt.routes)
	api.set(node("n2", "10.244.2.0/24", "10.0.0.22"))
	if got := cycle(); !strings.Contains(got, "step=podnet status=fail") || !strings.Contains(got, `node \"n1\" is not in the API server's Node list`) {
		t.Errorf("own Node gone: %q", got)
	}
	if !slices.Equal(rt.routes, before) || len(before) != 1 {
		t.Errorf("routes changed while this Node is missing: %v, before %v", rt.routes, before)
	}

	// A route the kernel refuses (gateway not on this segment) fails the line and names why.
	api.set(node("n1", "10.244.1.0/24", "10.0.0.11"), node("n3", "10.244.3.0/24", "172.16.0.3"))
	rt.unreachable = netip.MustParseAddr("172.16.0.3")
	if got := cycle(); !strings.Contains(got, "step=podnet status=fail") || !strings.Contains(got, "network is unreachable") {
		t.Errorf("unreachable peer: %q", got)
	}
}

// TestRunNoKubeconfig: before kubeadm wrote kubelet.conf each try fails with one line naming
// the file, and Run keeps going until stopped.
func TestRunNoKubeconfig(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	missing := filepath.Join(t.TempDir(), "kubelet.conf")
	err := Run(ctx, Options{NodeName: "n1", Kubeconfig: missing, Interval: 20 * time.Millisecond, Routes: &memRoutes{}, Steps: steplog.New(&out)})
	if err != nil {
		t.Fatalf("Run returned %v after its context ended; want nil", err)
	}
	got := out.String()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "step=podnet status=fail") || !strings.Contains(got, missing) {
		t.Errorf("want one fail line naming %s, got:\n%s", missing, got)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestConflistGolden: the configuration containerd reads (testdata/10-imgctl.conflist).
func TestConflistGolden(t *testing.T) {
	got, err := Conflist(netip.MustParsePrefix("10.244.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "10-imgctl.conflist")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("conflist differs from %s (go test -update rewrites it):\n%s", path, got)
	}
	for _, bad := range []string{"10.244.1.1/24", "fd00::/64"} {
		if _, err := Conflist(netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("Conflist(%s) accepted", bad)
		}
	}
}

// TestListPages: the Node list is read page by page; a server that never ends its pages is
// refused after maxPages.
func TestListPages(t *testing.T) {
	api, kubeconfig := newFakeAPI(t)
	var nodes []apiNode
	for i := range 5 {
		nodes = append(nodes, node(fmt.Sprintf("n%d", i), fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("10.0.0.%d", 10+i)))
	}
	api.set(nodes...)
	api.page = 2
	c, err := loadClient(kubeconfig, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	got, err := c.listNodes(context.Background())
	if err != nil || len(got) != 5 || got[4].Metadata.Name != "n4" {
		t.Fatalf("listNodes = %d nodes, %v", len(got), err)
	}
	if want := []string{"/api/v1/nodes?limit=500", "/api/v1/nodes?continue=2&limit=500", "/api/v1/nodes?continue=4&limit=500"}; !slices.Equal(api.seen, want) {
		t.Errorf("requests %q, want %q", api.seen, want)
	}
	api.loop = true
	if _, err := c.listNodes(context.Background()); err == nil || !strings.Contains(err.Error(), "more than 100 pages") {
		t.Errorf("endless pages: err = %v", err)
	}
}

// TestKubeconfigErrors: each broken kubeconfig is refused with the file and what is wrong.
func TestKubeconfigErrors(t *testing.T) {
	_, good := newFakeAPI(t)
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	server := lineWith(t, string(raw), "server: ")
	for _, c := range []struct{ from, to, want string }{
		{server, "server: http://10.0.0.10:6443\n", `server "http://10.0.0.10:6443": expected https://HOST[:PORT]`},
		{server, "server: https://u:p@10.0.0.10:6443\n", `expected https://HOST[:PORT]`},
		{"current-context: default-context", "current-context: other", `current-context "other" names no context with a cluster`},
		{"    user: default-auth", "    user: nobody", `names user "nobody", which is not in users`},
		{"    cluster: default-cluster", "    cluster: nowhere", `names cluster "nowhere", which is not in clusters`},
		{"certificate-authority-data: ", "certificate-authority-data: AAAA\n    x: ", `certificate-authority: no PEM certificate`},
		{"client-certificate: pki/kubelet-client-current.pem", "client-certificate: pki/missing.pem", `client-certificate: open ` + filepath.Dir(good) + `/pki/missing.pem`},
		{"kind: Config", "kind: [", `kubeconfig ` + good + `: error converting YAML`},
	} {
		doc := strings.Replace(string(raw), c.from, c.to, 1)
		if doc == string(raw) {
			t.Fatalf("fixture lacks %q", c.from)
		}
		if err := os.WriteFile(good, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadClient(good, time.Second)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), good) {
			t.Errorf("%s → %s: err = %v, want %q naming %s", c.from, c.to, err, c.want, good)
		}
	}
}

// lineWith returns the line of s that starts (after spaces) with prefix, with its newline.
func lineWith(t *testing.T, s, prefix string) string {
	t.Helper()
	for _, l := range strings.SplitAfter(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return strings.TrimLeft(l, " ")
		}
	}
	t.Fatalf("no line %q in:\n%s", prefix, s)
	return ""
}

// TestIgnoredSummary: the console line names at most maxIgnoredShown left-out Nodes.
func TestIgnoredSummary(t *testing.T) {
	var many []string
	for i := range maxIgnoredShown + 3 {
		many = append(many, fmt.Sprintf("node %q: bad", fmt.Sprint("x", i)))
	}
	got := ignoredSummary(many)
	if strings.Count(got, ": bad") != maxIgnoredShown || !strings.HasSuffix(got, "; and 3 more (in the journal)") {
		t.Errorf("summary of %d: %q", len(many), got)
	}
	if got := ignoredSummary(many[:2]); got != `node "x0": bad; node "x1": bad` {
		t.Errorf("summary of 2: %q", got)
	}
}

package serve

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"math/big"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/bootauth"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/rollout"
	"github.com/imgctl/imgctl/images/store"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// lockedReader makes a deterministic random source safe for concurrent use.
type lockedReader struct {
	mu sync.Mutex
	r  *rand.ChaCha8
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// fixture is a server on a test store with its channels, inventory, credentials and reports,
// on a fixed clock and random source (so scripts are reproducible).
type fixture struct {
	st      *store.Store
	ch      *channel.Log
	inv     atomic.Pointer[inventory.Inventory]
	auth    *bootauth.Authority
	reports *rollout.Reports
	clock   *clock
	s       *Server
	logs    *logBuffer
}

// testInventory is the inventory of the tests; CA_CERT and CA_KEY stand for a PEM CA
// certificate and key (testCA), indented for the block scalars.
const testInventory = `apiVersion: imgctl/v1alpha1
kind: Inventory
groups:
  - name: prod
    config:
      cluster:
        name: prod
        apiServer: https://10.0.0.10:6443
machines:
  - name: node-a
    group: prod
    role: node
    channel: prod
    macs: ["52:54:00:00:00:0a"]
    uuid: 4c4c4544-0042-3510-8052-b4c04f4e3131
    kernelArgs: ["console=ttyS0,115200n8"]
    secret:
      bootstrapToken: aaaaaa.aaaaaaaaaaaaaaaa
      caCertHashes: ["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
  - name: node-b
    group: prod
    role: master
    image: 1.0.0
    macs: ["52:54:00:00:00:0b"]
    serial: SERIAL-B
    config:
      cluster:
        caCertificate: |
CA_CERT
    secret:
      bootstrapToken: bbbbbb.bbbbbbbbbbbbbbbb
      caKey: |
CA_KEY
  - name: node-c
    group: prod
    role: node
    channel: staging
    macs: ["52:54:00:00:00:0c"]
    secret:
      bootstrapToken: cccccc.cccccccccccccccc
      caCertHashes: ["sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"]
  - name: node-d
    group: prod
    role: node
    channel: nightly
    macs: ["52:54:00:00:00:0d"]
    secret:
      bootstrapToken: dddddd.dddddddddddddddd
      caCertHashes: ["sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"]
`

// testCA is a CA certificate and key, PEM, made once per test binary.
var testCA = sync.OnceValues(func() (certPEM, keyPEM string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Unix(1700000000, 0), NotAfter: time.Unix(1700000000, 0).Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
})

// inventoryText fills CA_CERT and CA_KEY of text.
func inventoryText(text string) string {
	cert, key := testCA()
	indent := func(s, pad string) string {
		return pad + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+pad)
	}
	text = strings.Replace(text, "CA_CERT", indent(cert, "          "), 1)
	return strings.Replace(text, "CA_KEY", indent(key, "        "), 1)
}

func newFixture(t *testing.T, st *store.Store, o Options) *fixture {
	t.Helper()
	f := &fixture{st: st, clock: &clock{now: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)}, logs: &logBuffer{}}
	var err error
	if f.ch, err = channel.Open(st.Dir(), nil); err != nil {
		t.Fatal(err)
	}
	if err := f.ch.SetOrder(context.Background(), []string{"nightly", "staging", "prod"}); err != nil {
		t.Fatal(err)
	}
	f.setInventory(t, testInventory)
	rnd := &lockedReader{r: rand.NewChaCha8([32]byte{1, 2, 3})}
	if f.auth, err = bootauth.Open(filepath.Join(st.Dir(), "serve"), bootauth.Options{Now: f.clock.Now, Rand: rnd, TTL: 30 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if f.reports, err = rollout.Open(rollout.StoreDir(st.Dir()), nil); err != nil {
		t.Fatal(err)
	}
	o.Store, o.Channels, o.Auth, o.Reports = st, f.ch, f.auth, f.reports
	o.Inventory = f.inv.Load
	o.Now = f.clock.Now
	if o.Logger == nil {
		o.Logger = testLogger(f.logs)
	}
	if f.s, err = New(o); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) setInventory(t *testing.T, text string) {
	t.Helper()
	inv, err := inventory.Parse("inventory.yaml", []byte(inventoryText(text)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f.inv.Store(inv)
}

func (f *fixture) promote(t *testing.T, img, to string) {
	t.Helper()
	if _, err := f.ch.Promote(context.Background(), f.st, channel.Promotion{Image: img, To: to, Force: true}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * DefaultRefresh) // the server sees it at the next boot
}

// do runs one request through the handler: from remote (ip:port), over TLS if tlsOn.
func (f *fixture) do(t *testing.T, method, target, remote string, tlsOn bool, body string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	r.Host = "boot.example:8080"
	r.RemoteAddr = remote
	if tlsOn {
		r.TLS = &tls.ConnectionState{}
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	f.s.Handler().ServeHTTP(w, r)
	return w
}

var credentialRE = regexp.MustCompile(`imgctl\.credential=(\S+)`)

// boot fetches the node script for mac from remote and returns it and its credential.
func (f *fixture) boot(t *testing.T, mac, remote string) (script, token string) {
	t.Helper()
	w := f.do(t, "GET", "/ipxe?mac="+mac+"&uuid=&serial=", remote, false, "")
	if w.Code != 200 {
		t.Fatalf("boot %s: %d %s", mac, w.Code, w.Body)
	}
	script = w.Body.String()
	if m := credentialRE.FindStringSubmatch(script); m != nil {
		token = m[1]
	}
	return script, token
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

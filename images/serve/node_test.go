package serve

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// isolationFixture boots node-a (channel prod) and node-b (pinned 1.0.0).
func isolationFixture(t *testing.T, o Options) (f *fixture, tokA, tokB string) {
	t.Helper()
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	f = newFixture(t, st, o)
	f.promote(t, img.Digest().String(), "prod")
	_, tokA = f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	_, tokB = f.boot(t, "52:54:00:00:00:0b", "10.0.0.2:1000")
	if tokA == "" || tokB == "" {
		t.Fatal("no credentials in the scripts")
	}
	return f, tokA, tokB
}

const (
	secretA = "aaaaaa.aaaaaaaaaaaaaaaa"
	secretB = "bbbbbb.bbbbbbbbbbbbbbbb"
	caKeyB  = "PRIVATE KEY"
)

func noSecrets(t *testing.T, what, body string) {
	t.Helper()
	for _, s := range []string{secretA, secretB, caKeyB} {
		if strings.Contains(body, s) {
			t.Errorf("%s: the answer holds a secret (%s):\n%s", what, s, body)
		}
	}
}

func TestNodeConfigIsolation(t *testing.T) {
	f, tokA, tokB := isolationFixture(t, Options{InsecureSecrets: true})
	cfg := func(tok, remote string) (int, string) {
		w := f.do(t, "GET", "/v1/nodeconfig", remote, true, "", "Authorization", nodeapi.Bearer(tok))
		return w.Code, w.Body.String()
	}
	// A's token, from the address A booted from: A's whole config, nothing of B's.
	code, body := cfg(tokA, "10.0.0.1:4000")
	if code != 200 || !strings.Contains(body, secretA) || !strings.Contains(body, "name: node-a") {
		t.Fatalf("node-a with its token: %d\n%s", code, body)
	}
	if strings.Contains(body, secretB) || strings.Contains(body, caKeyB) {
		t.Errorf("node-a's config holds node-b's secrets:\n%s", body)
	}
	// A retry from that address (a restarted configuration unit) still works.
	if code, body := cfg(tokA, "10.0.0.1:4001"); code != 200 || !strings.Contains(body, secretA) {
		t.Errorf("retry from the same address: %d", code)
	}
	// A's token replayed from another address: nothing secret, 403, a WARN line.
	code, body = cfg(tokA, "10.0.0.66:4000")
	if code != 403 {
		t.Errorf("replayed from another address: %d, want 403", code)
	}
	noSecrets(t, "replayed token", body)
	if !strings.Contains(f.logs.String(), "duplicate or spoofed node") {
		t.Errorf("no WARN line for the replay:\n%s", f.logs)
	}
	// B's token used by B works; A's token never yields B's config.
	if code, body := cfg(tokB, "10.0.0.2:4000"); code != 200 || !strings.Contains(body, caKeyB) || strings.Contains(body, secretA) {
		t.Errorf("node-b with its token: %d\n%s", code, body)
	}
	// Knowing B's MAC gets B's public part, without secrets.
	w := f.do(t, "GET", "/v1/nodeconfig?mac=52:54:00:00:00:0b", "10.0.0.1:4000", false, "")
	if w.Code != 200 || !strings.Contains(w.Body.String(), "name: node-b") {
		t.Errorf("public part of node-b: %d\n%s", w.Code, w.Body)
	}
	noSecrets(t, "public part by MAC", w.Body.String())
	// Without an identity, nothing.
	if w := f.do(t, "GET", "/v1/nodeconfig", "10.0.0.1:4000", false, ""); w.Code != 404 {
		t.Errorf("no credential, no identity: %d, want 404", w.Code)
	}
	// A forged or malformed token.
	for _, bad := range []string{tokA[:len(tokA)-1] + "0", "garbage", strings.Replace(tokA, "node-a", "node-b", 1)} {
		code, body := cfg(bad, "10.0.0.1:4000")
		if code != 401 {
			t.Errorf("forged token: %d, want 401", code)
		}
		noSecrets(t, "forged token", body)
	}
	if w := f.do(t, "GET", "/v1/nodeconfig", "10.0.0.1:4000", true, "", "Authorization", "Basic abc"); w.Code != 401 {
		t.Errorf("not a bearer credential: %d, want 401", w.Code)
	}
	// A newer boot of A, once used, supersedes the old token.
	_, tokA2 := f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	f.clock.Advance(time.Second)
	if code, _ := cfg(tokA2, "10.0.0.1:4000"); code != 200 {
		t.Fatalf("newer boot: %d", code)
	}
	code, body = cfg(tokA, "10.0.0.1:4000")
	if code != 403 {
		t.Errorf("superseded token: %d, want 403", code)
	}
	noSecrets(t, "superseded token", body)
	// After its lifetime, nothing.
	f.clock.Advance(31 * time.Minute)
	code, body = cfg(tokA2, "10.0.0.1:4000")
	if code != 401 {
		t.Errorf("expired token: %d, want 401", code)
	}
	noSecrets(t, "expired token", body)
	// No log line shows a token.
	for _, tok := range []string{tokA, tokB, tokA2} {
		if strings.Contains(f.logs.String(), tok) {
			t.Errorf("a log line shows a token:\n%s", f.logs)
		}
	}
}

// Without TLS, secrets need InsecureSecrets.
func TestNodeConfigSecretsNeedTLS(t *testing.T) {
	f, tokA, _ := isolationFixture(t, Options{InsecureSecrets: true})
	f.s.o.InsecureSecrets = false
	w := f.do(t, "GET", "/v1/nodeconfig", "10.0.0.1:4000", false, "", "Authorization", nodeapi.Bearer(tokA))
	if w.Code != 403 || !strings.Contains(w.Body.String(), "https only") {
		t.Errorf("plain http without --insecure-secrets: %d %s", w.Code, w.Body)
	}
	noSecrets(t, "plain http", w.Body.String())
	w = f.do(t, "GET", "/v1/nodeconfig", "10.0.0.1:4000", true, "", "Authorization", nodeapi.Bearer(tokA))
	if w.Code != 200 || !strings.Contains(w.Body.String(), secretA) {
		t.Errorf("over TLS: %d", w.Code)
	}
}

func report(ok bool) string {
	r := nodeapi.Report{Phase: nodeapi.PhaseInit, OK: ok, Time: time.Date(2026, 12, 5, 0, 1, 0, 0, time.UTC),
		Steps: []nodeapi.Step{{Name: "fetch-root", Status: nodeapi.StatusOK, Millis: 1200}}}
	if !ok {
		r.Failed = "mount-root"
		r.Steps = append(r.Steps, nodeapi.Step{Name: "mount-root", Status: nodeapi.StatusFail, Error: "bad superblock"})
	}
	data, _ := json.Marshal(r)
	return string(data)
}

func TestReports(t *testing.T) {
	f, tokA, tokB := isolationFixture(t, Options{InsecureSecrets: true})
	post := func(tok, remote, body string) (int, string) {
		w := f.do(t, "POST", "/v1/reports", remote, false, body, "Authorization", nodeapi.Bearer(tok), "Content-Type", nodeapi.ReportMediaType)
		return w.Code, w.Body.String()
	}
	if code, body := post(tokA, "10.0.0.1:5000", report(true)); code != 204 {
		t.Fatalf("report: %d %s", code, body)
	}
	if code, body := post(tokB, "10.0.0.2:5000", report(false)); code != 204 {
		t.Fatalf("failure report: %d %s", code, body)
	}
	recs, err := f.reports.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Node != "node-a" || recs[0].Channel != "prod" || recs[0].Role != "node" || recs[0].Image == "" ||
		recs[0].Addr != "10.0.0.1" || recs[1].Node != "node-b" || recs[1].Report.OK || recs[1].Role != "master" {
		t.Errorf("records: %+v", recs)
	}
	// Bad reports: 400 with the reason; nothing saved.
	for name, body := range map[string]string{
		"oversized": `{"phase":"init","ok":true,"steps":[],"time":"2026-12-05T00:00:00Z","x":"` + strings.Repeat("a", nodeapi.MaxReportBytes) + `"}`,
		"malformed": `{"phase":"boot"`,
		"unknown":   `{"phase":"init","ok":true,"steps":[],"time":"2026-12-05T00:00:00Z","extra":1}`,
		"invalid":   `{"phase":"reboot","ok":true,"steps":[],"time":"2026-12-05T00:00:00Z"}`,
	} {
		if code, msg := post(tokA, "10.0.0.1:5000", body); code != 400 || msg == "" {
			t.Errorf("%s report: %d %q, want 400", name, code, msg)
		}
	}
	// No credential, or another node's token from the wrong address.
	w := f.do(t, "POST", "/v1/reports", "10.0.0.1:5000", false, report(true))
	if w.Code != 401 {
		t.Errorf("report without a credential: %d", w.Code)
	}
	if code, _ := post(tokB, "10.0.0.1:5000", report(true)); code != 403 {
		t.Errorf("node-b's token from node-a's address: %d, want 403", code)
	}
	_, m := getMetrics(t, f)
	for _, want := range []string{
		`imgctl_serve_boot_reports_total{channel="prod",ok="true",phase="init"} 1`,
		`imgctl_serve_boot_reports_total{channel="",ok="false",phase="init"} 1`,
		`imgctl_serve_boot_failures_total{channel=""} 1`,
		`imgctl_serve_boots_total{channel="prod"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Two replicas on one store answer alike: a credential one issued works at the other.
func TestTwoReplicasOnOneStore(t *testing.T) {
	f, tokA, _ := isolationFixture(t, Options{InsecureSecrets: true})
	g := newFixture(t, f.st, Options{InsecureSecrets: true})
	g.clock = f.clock
	a := f.do(t, "GET", "/ipxe?mac=52:54:00:00:00:0b", "10.0.0.2:1000", false, "").Body.String()
	b := g.do(t, "GET", "/ipxe?mac=52:54:00:00:00:0b", "10.0.0.2:1000", false, "").Body.String()
	if credentialRE.ReplaceAllString(a, "") != credentialRE.ReplaceAllString(b, "") {
		t.Errorf("replicas differ:\n%s\n%s", a, b)
	}
	w := g.do(t, "GET", "/v1/nodeconfig", "10.0.0.1:4000", true, "", "Authorization", nodeapi.Bearer(tokA))
	if w.Code != 200 || !strings.Contains(w.Body.String(), secretA) {
		t.Errorf("replica 2 with replica 1's credential: %d %s", w.Code, w.Body)
	}
	// And the address binding made at one holds at the other.
	w = f.do(t, "GET", "/v1/nodeconfig", "10.0.0.99:4000", true, "", "Authorization", nodeapi.Bearer(tokA))
	if w.Code != 403 {
		t.Errorf("replica 1 after replica 2 bound the credential: %d, want 403", w.Code)
	}
}

// Over the network: the script fetched over plain HTTP carries the pin of the certificate the
// same port serves over TLS, and a client that accepts exactly that certificate gets the
// node's secrets with the script's credential.
func TestNodeConfigOverPinnedTLS(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	cert := selfSigned(t)
	f := newFixture(t, st, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	f.promote(t, img.Digest().String(), "prod")
	f.s.o.Now = time.Now
	base := start(t, f.s)
	_, script := get(t, "GET", base+"/ipxe?mac=52:54:00:00:00:0a")
	meta := regexp.MustCompile(`imgctl\.metadata=(\S+)`).FindStringSubmatch(script)
	pin := regexp.MustCompile(`imgctl\.metadata-pin=(sha256:[0-9a-f]{64})`).FindStringSubmatch(script)
	tok := credentialRE.FindStringSubmatch(script)
	if meta == nil || pin == nil || tok == nil {
		t.Fatalf("script lacks metadata URL, pin or credential:\n%s", script)
	}
	u, err := url.Parse(meta[1])
	if err != nil || u.Scheme != "https" {
		t.Fatalf("metadata URL %q: want https", meta[1])
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + nodeapi.NodeConfigPath
	pinned := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // verified by the pin instead
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			sum := sha256.Sum256(raw[0])
			if "sha256:"+hex.EncodeToString(sum[:]) != pin[1] {
				return errors.New("certificate does not match the pin")
			}
			return nil
		},
	}}}
	req, _ := http.NewRequest("GET", u.String(), nil)
	req.Header.Set(nodeapi.AuthorizationHeader, nodeapi.Bearer(tok[1]))
	resp, err := pinned.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), secretA) {
		t.Errorf("pinned TLS: %s\n%s", resp.Status, body)
	}
	pinned.CloseIdleConnections()
}

// A machine with addresses: (its DHCP reservation) gets its script and credential only from
// them; a credential sniffed and used from elsewhere is refused before it is bound, so the
// real node is not locked out.
func TestMachineAddresses(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	f := newFixture(t, st, Options{InsecureSecrets: true})
	f.setInventory(t, strings.Replace(testInventory, `    macs: ["52:54:00:00:00:0a"]`, `    macs: ["52:54:00:00:00:0a"]
    addresses: [10.0.0.1]`, 1))
	f.promote(t, img.Digest().String(), "prod")
	script, tok := f.boot(t, "52:54:00:00:00:0a", "10.0.0.66:1000")
	if tok != "" || !strings.Contains(script, "not allowed") {
		t.Errorf("script for node-a requested from 10.0.0.66 carries a credential or no reason:\n%s", script)
	}
	if !strings.Contains(f.logs.String(), "outside its addresses") {
		t.Errorf("no WARN line for the request from outside the machine's addresses:\n%s", f.logs)
	}
	_, tok = f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	if tok == "" {
		t.Fatal("no credential for node-a from its own address")
	}
	cfg := func(remote string) (int, string) {
		w := f.do(t, "GET", "/v1/nodeconfig", remote, true, "", "Authorization", nodeapi.Bearer(tok))
		return w.Code, w.Body.String()
	}
	code, body := cfg("10.0.0.66:4000")
	if code != 403 {
		t.Errorf("credential used from outside the machine's addresses: %d, want 403", code)
	}
	noSecrets(t, "credential from outside the addresses", body)
	if code, body := cfg("10.0.0.1:4000"); code != 200 || !strings.Contains(body, secretA) {
		t.Errorf("node-a from its address after the refused use: %d\n%s", code, body)
	}
}

// A node's credential opens its secrets until the node reports that configuration
// succeeded; after that (it stays readable in the node's /proc/cmdline) it opens nothing. A
// failed configuration keeps it, so a restarted configuration unit can try again.
func TestCredentialRetiredWhenConfigured(t *testing.T) {
	f, tokA, tokB := isolationFixture(t, Options{InsecureSecrets: true})
	configured := func(ok bool) string {
		r := nodeapi.Report{Phase: nodeapi.PhaseConfigure, OK: ok, Role: "node", Time: time.Date(2026, 12, 5, 0, 2, 0, 0, time.UTC),
			Steps: []nodeapi.Step{{Name: "kubelet", Status: nodeapi.StatusOK}}}
		if !ok {
			r.Failed, r.Steps[0].Status = "kubelet", nodeapi.StatusFail
		}
		data, _ := json.Marshal(r)
		return string(data)
	}
	post := func(tok, remote, body string) int {
		return f.do(t, "POST", "/v1/reports", remote, true, body, "Authorization", nodeapi.Bearer(tok)).Code
	}
	cfg := func(tok, remote string) (int, string) {
		w := f.do(t, "GET", "/v1/nodeconfig", remote, true, "", "Authorization", nodeapi.Bearer(tok))
		return w.Code, w.Body.String()
	}
	if code := post(tokB, "10.0.0.2:5000", configured(false)); code != 204 {
		t.Fatalf("failed configure report: %d", code)
	}
	if code, body := cfg(tokB, "10.0.0.2:5001"); code != 200 || !strings.Contains(body, caKeyB) {
		t.Errorf("node-b after a failed configuration: %d, want its secrets", code)
	}
	if code := post(tokA, "10.0.0.1:5000", configured(true)); code != 204 {
		t.Fatalf("configure report: %d", code)
	}
	code, body := cfg(tokA, "10.0.0.1:5001")
	if code != 403 {
		t.Errorf("node-a's credential after it reported configured: %d, want 403", code)
	}
	noSecrets(t, "retired credential", body)
	if !strings.Contains(f.logs.String(), "after its node was configured") {
		t.Errorf("no WARN line for the retired credential:\n%s", f.logs)
	}
}

package test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/builders/pxe"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/images/rollout"
	"github.com/imgctl/imgctl/images/serve"
	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/imgctl/imgctl/test/bootenv"
)

// The serve end to end test boots a small fleet from imgctl serve the way a bare-metal site
// does: firmware iPXE chains the server's /boot.ipxe, which sends each machine (known by its
// MAC) to the script of the image its channel points to, with a per-boot credential; the node
// agent fetches its own NodeConfig over TLS pinned to the server's certificate and reports back.

// serveAddr is where the guests reach imgctl serve: the address the netboot tests' file server
// has, on each guest's network, relayed to the server on loopback.
const serveAddr = filesAddr

// serveURL is the server's base URL as the guests reach it. The port is explicit: the node
// scripts' metadata URL is its https:// form (TLS on the same port), which would otherwise
// default to 443.
const serveURL = "http://" + serveAddr + ":80"

// serveChannel is the channel the fleet follows.
const serveChannel = "nightly"

// fleetNode is one machine of the test inventory.
type fleetNode struct {
	name, mac, group string
	labels           map[string]string // the node labels its NodeConfig ends up with
}

// testFleet is two role node machines in two groups: a master would run kubeadm init, which
// needs control-plane images this offline guest cannot pull (and has never run, issue 15), so
// the machines differ by name, MAC, group and labels instead of by role.
var testFleet = []fleetNode{
	{name: "fleet-blue-1", mac: "52:54:00:1c:00:01", group: "blue",
		labels: map[string]string{"imgctl.dev/pool": "blue", "imgctl.dev/machine": "one"}},
	{name: "fleet-green-2", mac: "52:54:00:1c:00:02", group: "green",
		labels: map[string]string{"imgctl.dev/pool": "green", "imgctl.dev/machine": "two"}},
}

// labelsString is the node labels as the test report prints them (kubelet's --node-labels:
// k=v, sorted by key, comma separated).
func (n fleetNode) labelsString() string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(n.labels)) {
		kv = append(kv, k+"="+n.labels[k])
	}
	return strings.Join(kv, ",")
}

// serveCert writes a self-signed ECDSA certificate for the server (valid for the guests'
// address and loopback) and its key into dir; it returns the files and the leaf's pin
// (sha256:HEX of the DER), the value of imgctl.metadata-pin.
func serveCert(t *testing.T, dir string) (certFile, keyFile, pin string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgctl serve e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(serveAddr), net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "serve.crt"), filepath.Join(dir, "serve.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	os.Chmod(keyFile, 0o600)
	sum := sha256.Sum256(der)
	return certFile, keyFile, "sha256:" + hex.EncodeToString(sum[:])
}

// writeInventory writes the fleet's inventory into dir: a group per node (its labels, the
// channel, the cluster), each machine by its MAC with its own client certificate and key as
// its secret. It returns the file.
func writeInventory(t *testing.T, dir string, fleet []fleetNode) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: imgctl/v1alpha1\nkind: Inventory\ngroups:\n")
	ca, caCert, caKey := fleetCA(t)
	for _, n := range fleet {
		fmt.Fprintf(&b, "  - name: %s\n    role: node\n    channel: %s\n    labels: {imgctl.dev/pool: %s}\n", n.group, serveChannel, n.labels["imgctl.dev/pool"])
		fmt.Fprintf(&b, "    config:\n      cluster:\n        apiServer: https://169.254.0.2:6443\n        caCertificate: |\n%s\n", indent(ca, 10))
	}
	b.WriteString("machines:\n")
	for _, n := range fleet {
		cert, key := fleetNodeCert(t, caCert, caKey, n.name)
		fmt.Fprintf(&b, "  - name: %s\n    group: %s\n    macs: [%q]\n    labels: {imgctl.dev/machine: %s}\n", n.name, n.group, n.mac, n.labels["imgctl.dev/machine"])
		fmt.Fprintf(&b, "    secret:\n      clientCertificate: |\n%s\n      clientKey: |\n%s\n", indent(cert, 8), indent(key, 8))
	}
	p := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n"+pad)
}

// fleetCA returns a cluster CA certificate (PEM), parsed, and its key.
func fleetCA(t *testing.T) (string, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return pemText("CERTIFICATE", der), c, k
}

// fleetNodeCert returns a kubelet client certificate for node name signed by the CA, and its
// key (PEM). The node agent refuses a certificate issued to another node's name: a node that
// got another node's secret fails its render step.
func fleetNodeCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pemText("CERTIFICATE", der), pemText("PRIVATE KEY", kder)
}

func pemText(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// serveProcess is `imgctl serve` running under the test: killed by PID when the test ends.
type serveProcess struct {
	addr string // 127.0.0.1:PORT
	cmd  *exec.Cmd
	log  *bootenv.Console
	done chan error
}

// startServe runs `imgctl serve` on the store in dir with the inventory and flags (e.g. the TLS
// certificate) on a free loopback port, and waits until /healthz answers.
func startServe(ctx context.Context, t *testing.T, dir, inventory string, flags ...string) *serveProcess {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &serveProcess{addr: addr, log: &bootenv.Console{}, done: make(chan error, 1)}
	s.cmd = exec.Command(imgctlBin, append([]string{"--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache"),
		"serve", "--inventory", inventory, "--listen", addr}, flags...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case werr := <-s.done:
			s.done <- werr
			t.Fatalf("imgctl serve exited (%v) before answering:\n%s", werr, s.log.String())
		case <-ctx.Done():
			t.Fatalf("imgctl serve: %v\n%s", ctx.Err(), s.log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("imgctl serve on %s did not answer /healthz within 30s: %v\n%s", addr, err, s.log.String())
		}
	}
}

// stop ends the server with SIGTERM (graceful shutdown) and returns how it exited.
func (s *serveProcess) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		return fmt.Errorf("imgctl serve did not exit within 30s of SIGTERM")
	}
}

// nodeConfig asks the server for a machine's NodeConfig over TLS (trusting the test's
// certificate) with a credential, as the node agent does; it returns the status and the body.
func (s *serveProcess) nodeConfig(t *testing.T, certFile, mac, cred string) (int, string) {
	t.Helper()
	pool := x509.NewCertPool()
	b, err := os.ReadFile(certFile)
	if err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("%s: %v", certFile, err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "https://"+s.addr+nodeapi.NodeConfigPath+"?mac="+mac, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(nodeapi.AuthorizationHeader, nodeapi.Bearer(cred))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// metrics returns the server's /metrics samples: "name{labels}" → value.
func (s *serveProcess) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// serveImages are the two images of the fleet test in one store: v1, the shared pxe build,
// and v2, the same with one more file (another root, so another digest).
type serveImages struct {
	v1              pxeArtifacts
	v2Image, v2Root string // digests
	v2RootSize      int64
	v2Dir           string // v2's exported artifacts
}

// buildServeImages builds v2 next to the shared pxe build (same store, cache and lock: only
// the extra layer and what depends on it are new).
func buildServeImages(ctx context.Context, t *testing.T) serveImages {
	t.Helper()
	a := buildPXE(t)
	start := time.Now()
	marker := filepath.Join(t.TempDir(), "v2-layer")
	if err := os.MkdirAll(filepath.Join(marker, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(marker, "etc", "imgctl-test-release"), []byte("v2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out-v2")
	v2 := buildPXEImage(ctx, t, a.build, a.work, out, kubernetesTools(t), a.pause,
		filepath.Join(a.work, "kubelet-testlayer"), marker)
	root, size := fileDigest(t, filepath.Join(out, pxe.RootName))
	if v2 == a.image || root == a.rootDigest {
		t.Fatalf("v2 is the same image or root as v1: image %s, root %s", v2, root)
	}
	t.Logf("v2 build: %v wall; v1 %s (root %s), v2 %s (root %s)", time.Since(start).Round(time.Second), a.image, a.rootDigest, v2, root)
	return serveImages{v1: a, v2Image: v2, v2Root: root, v2RootSize: size, v2Dir: out}
}

// fleetBoot is the result of one guest's netboot from imgctl serve.
type fleetBoot struct {
	node   fleetNode
	log    string // console, kernel messages removed
	report string // the IMGCTL-TEST-REPORT line
	wall   time.Duration
	err    error
	// retried is 1 when the guest kernel locked up and the machine was booted once more.
	retried int
}

// bootFleet netboots the nodes at once from the server (SeaBIOS and the NIC's iPXE ROM, each
// guest with its MAC) and waits for each to report and power off.
func bootFleet(ctx context.Context, t *testing.T, s *serveProcess, rootSize int64, nodes ...fleetNode) []fleetBoot {
	t.Helper()
	work := t.TempDir()
	launch := func(n fleetNode, attempt int) *vm {
		g := &netbootGuest{upstream: s.addr}
		o := vmOptions{bios: true, bootNIC: true, mac: n.mac, netdev: g.netdev(t), memoryMiB: netbootMemory(rootSize),
			logFile: filepath.Join(work, fmt.Sprintf("%s.%d.log", n.name, attempt))}
		return startVM(ctx, t, o)
	}
	results := make([]fleetBoot, len(nodes))
	done := make(chan int)
	for i, n := range nodes {
		v, start := launch(n, 0), time.Now()
		go func() {
			retried := 0
			for {
				err := waitReport(ctx, v)
				if errors.Is(err, errGuestLockup) && retried == 0 {
					// The guest kernel, not imgctl: under TCG a 6.1 guest sometimes spins in
					// nf_conntrack for minutes ("soft lockup"). Boot the machine once more, as an
					// operator would; the server sees a second boot, which checkServeMetrics allows.
					t.Logf("%s: the guest kernel locked up (%s); booting the machine once more",
						n.name, guestLockup.FindString(v.console.String()))
					v.stop()
					retried++
					v, start = launch(n, retried), time.Now()
					continue
				}
				if err == nil {
					select {
					case <-v.done:
					case <-time.After(2 * time.Minute):
						err = fmt.Errorf("the guest did not power off after the report")
					case <-ctx.Done():
						err = fmt.Errorf("the guest did not power off after the report: %w", ctx.Err())
					}
				}
				log := cleanConsole(v.console.String())
				results[i] = fleetBoot{node: n, log: log, wall: time.Since(start), err: err, retried: retried,
					report: regexp.MustCompile(`IMGCTL-TEST-REPORT [^\r\n]*`).FindString(log)}
				done <- i
				return
			}
		}()
	}
	for range nodes {
		<-done
	}
	return results
}

// guestLockup is the guest kernel's soft-lockup watchdog line.
var guestLockup = regexp.MustCompile(`watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s! \[[^\]]*\]`)

var errGuestLockup = errors.New("the guest kernel reported a soft lockup")

// waitReport waits for the guest's report line; a guest kernel soft lockup is errGuestLockup.
func waitReport(ctx context.Context, v *vm) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		out := v.console.String()
		switch {
		case strings.Contains(out, "IMGCTL-TEST-REPORT"):
			return nil
		case guestLockup.MatchString(out):
			return errGuestLockup
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %q", "IMGCTL-TEST-REPORT")
		case <-tick.C:
			if v.cmd.ProcessState != nil {
				return fmt.Errorf("guest exited before %q appeared", "IMGCTL-TEST-REPORT")
			}
		}
	}
}

// checkFleetBoot checks that node b booted root (digest) from the server and came up with its
// own NodeConfig, fetched over TLS pinned to pin.
func checkFleetBoot(t *testing.T, b fleetBoot, a pxeArtifacts, root string, rootSize int64, pin string) {
	t.Helper()
	if b.err != nil {
		t.Errorf("%s: %v\nconsole:\n%s", b.node.name, b.err, tail(b.log, 8000))
		return
	}
	t.Logf("%s: report after %v wall; steps:\n  %s", b.node.name, b.wall.Round(time.Second), strings.Join(stepLines(b.log), "\n  "))
	t.Log(b.report)
	t.Logf("%s fetch-root: %s", b.node.name, fetchRootLine.FindString(b.log))
	for _, want := range []string{"step=fetch-root status=ok", "bytes=" + fmt.Sprint(rootSize), "digest=" + root,
		"step=switch-root status=ok", boot.KeyMetadataPin + "=" + pin} {
		if !strings.Contains(b.log, want) {
			t.Errorf("%s: console lacks %q", b.node.name, want)
		}
	}
	checkKubeletBoot(t, b.log, b.report, a.pause, b.node.name, serveMetadataSource, nil)
	if !strings.Contains(b.report, "labels=["+b.node.labelsString()+"]") {
		t.Errorf("%s: report lacks the node's labels [%s]: %s", b.node.name, b.node.labelsString(), b.report)
	}
}

// serveMetadataSource is how the node agent's metadata step names the server it fetched its
// NodeConfig from (the URL the node script passes, redacted).
const serveMetadataSource = "imgctl https://" + serveAddr + ":80/v1/nodeconfig?REDACTED"

// TestServeFleet boots two machines with different MACs, groups and labels from imgctl serve
// (TLS on, so the node script pins the server's certificate) concurrently: each must fetch its
// own NodeConfig and reach a healthy kubelet. Then the channel is promoted to v2, one machine
// reboots and `imgctl rollout status` shows it on v2 and the other on v1; /metrics counted the
// boots.
func TestServeFleet(t *testing.T) {
	requireQEMU(t)
	testenv.Files(t, virtioROM)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	imgs := buildServeImages(ctx, t)
	a := imgs.v1
	if _, err := imgctl(ctx, t, a.build, "promote", a.image, "--to", serveChannel, "--reason", "serve e2e v1"); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	certFile, keyFile, pin := serveCert(t, work)
	srv := startServe(ctx, t, a.build, writeInventory(t, work, testFleet),
		"--tls-cert", certFile, "--tls-key", keyFile, "--advertise-url", serveURL)
	defer func() {
		if t.Failed() {
			t.Logf("imgctl serve log:\n%s", tail(srv.log.String(), 12000))
		}
	}()
	memory := max(a.rootSize, imgs.v2RootSize)

	// Both machines at once, on v1.
	start := time.Now()
	bootCtx, bootCancel := context.WithTimeout(ctx, 15*time.Minute)
	boots := bootFleet(bootCtx, t, srv, memory, testFleet...)
	bootCancel()
	t.Logf("fleet boot: %v wall for %d guests at once", time.Since(start).Round(time.Second), len(boots))
	for _, b := range boots {
		checkFleetBoot(t, b, a, a.rootDigest, a.rootSize, pin)
	}
	if t.Failed() {
		t.FailNow()
	}
	status := rolloutStatus(ctx, t, a.build)
	for _, n := range testFleet {
		checkRolloutNode(t, status, n.name, a.image, true)
	}
	checkRolloutChannel(t, status, a.image, 2, 2, 0)

	// The channel moves to v2; one machine reboots (a fresh run with the same MAC) and gets v2.
	if _, err := imgctl(ctx, t, a.build, "promote", imgs.v2Image, "--to", serveChannel, "--reason", "serve e2e v2"); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	bootCtx, bootCancel = context.WithTimeout(ctx, 10*time.Minute)
	again := bootFleet(bootCtx, t, srv, memory, testFleet[0])
	bootCancel()
	t.Logf("reboot: %v wall", time.Since(start).Round(time.Second))
	checkFleetBoot(t, again[0], a, imgs.v2Root, imgs.v2RootSize, pin)
	status = rolloutStatus(ctx, t, a.build)
	checkRolloutNode(t, status, testFleet[0].name, imgs.v2Image, true)
	checkRolloutNode(t, status, testFleet[1].name, a.image, false)
	checkRolloutChannel(t, status, imgs.v2Image, 1, 2, 1)

	retries := 0
	for _, b := range append(boots, again...) {
		retries += b.retried
	}
	checkServeMetrics(t, srv, 3, retries)
	// Each boot had its own credential (the kernel prints its command line on the console).
	var creds []string
	for _, b := range append(boots, again...) {
		c := credentialLine.FindStringSubmatch(b.log)
		if c == nil {
			t.Fatalf("%s: no %s= on the kernel command line", b.node.name, boot.KeyCredential)
		}
		if slices.Contains(creds, c[1]) {
			t.Errorf("%s: a credential was served twice", b.node.name)
		}
		creds = append(creds, c[1])
	}
	// The credentials as the server sees them now: blue's first one was superseded by its
	// reboot; green's and blue's new one were retired when their nodes reported configure ok
	// (they stay in each node's /proc/cmdline, so they must open nothing any more); naming the
	// other machine's MAC gets no one else's secrets either.
	blue, green := testFleet[0], testFleet[1]
	for _, c := range []struct {
		cred        string
		owner, mac  fleetNode // whose credential; whose MAC the query names
		status      int       // -1: any, as long as no other node's secret comes back
		wantSecrets bool
	}{
		{creds[0], blue, blue, http.StatusForbidden, false},
		{creds[1], green, green, http.StatusForbidden, false},
		{creds[2], blue, blue, http.StatusForbidden, false},
		{creds[2], blue, green, -1, false},
	} {
		code, body := srv.nodeConfig(t, certFile, c.mac.mac, c.cred)
		secret := strings.Contains(body, "clientKey")
		other := blue
		if c.owner.name == blue.name {
			other = green
		}
		switch {
		case c.status >= 0 && code != c.status, secret && code != http.StatusOK, c.wantSecrets && !secret,
			secret && (!strings.Contains(body, "name: "+c.owner.name) || strings.Contains(body, other.name)):
			t.Errorf("GET %s?mac=%s with %s's credential: %d, secrets %v, body:\n%.400s\nwant %d, secrets %v and only %s's",
				nodeapi.NodeConfigPath, c.mac.mac, c.owner.name, code, secret, body, c.status, c.wantSecrets, c.owner.name)
		default:
			t.Logf("GET %s?mac=%s with %s's credential: %d, secrets %v", nodeapi.NodeConfigPath, c.mac.mac, c.owner.name, code, secret)
		}
	}
	for _, want := range []string{"superseded", "after its node was configured"} {
		if !strings.Contains(srv.log.String(), want) {
			t.Errorf("the server did not log a refused credential (%q)", want)
		}
	}
	for i, c := range creds {
		if strings.Contains(srv.log.String(), c) {
			t.Errorf("the server log shows credential %d", i)
		}
	}
	if err := srv.stop(); err != nil {
		t.Errorf("imgctl serve after SIGTERM: %v", err)
	}
}

// credentialLine finds the node credential on the kernel command line the guest printed.
var credentialLine = regexp.MustCompile(`Command line: [^\r\n]*\b` + regexp.QuoteMeta(boot.KeyCredential) + `=([^\s]+)`)

// rolloutStatus is `imgctl rollout status CHANNEL -o json` on the store in dir.
func rolloutStatus(ctx context.Context, t *testing.T, dir string) rollout.Rollout {
	t.Helper()
	out, err := imgctl(ctx, t, dir, "-o", "json", "rollout", "status", serveChannel)
	if err != nil {
		t.Fatal(err)
	}
	var r rollout.Rollout
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("imgctl rollout status -o json: %v:\n%s", err, out)
	}
	t.Logf("imgctl rollout status %s -o json:\n%s", serveChannel, out)
	if len(r.Problems) > 0 {
		t.Errorf("rollout status: problems %q", r.Problems)
	}
	return r
}

// checkRolloutNode checks that node's last report is an ok configure phase on image (served
// through the channel, and the root it reports is the image's).
func checkRolloutNode(t *testing.T, r rollout.Rollout, node, image string, onHead bool) {
	t.Helper()
	for _, n := range r.Nodes {
		if n.Node != node {
			continue
		}
		if !n.Reported || string(n.Image) != image || !n.OK || n.Phase != nodeapi.PhaseConfigure || n.Channel != serveChannel ||
			n.RootMismatch || n.Role != "node" || n.OnHead != onHead {
			t.Errorf("rollout status: node %s: %+v; want image %s, ok, phase configure, role node, channel %s, onHead %v, the served root",
				node, n, image, serveChannel, onHead)
		}
		return
	}
	t.Errorf("rollout status lacks node %s: %+v", node, r.Nodes)
}

// checkRolloutChannel checks the channel's head and how many of its nodes run it.
func checkRolloutChannel(t *testing.T, r rollout.Rollout, head string, onHead, nodes, stale int) {
	t.Helper()
	for _, c := range r.Channels {
		if c.Name != serveChannel {
			continue
		}
		if string(c.Head) != head || c.OnHead != onHead || c.Nodes != nodes || c.Stale != stale || c.Failed != 0 || c.RootMismatch != 0 {
			t.Errorf("rollout status: channel %+v; want head %s run by %d of %d nodes, %d stale, none failed", c, head, onHead, nodes, stale)
		}
		return
	}
	t.Errorf("rollout status lacks channel %s: %+v", serveChannel, r.Channels)
}

// checkServeMetrics checks the server counted boots boot scripts of the channel, as many
// ok boot reports of each phase, and no failure.
func checkServeMetrics(t *testing.T, s *serveProcess, boots, retries int) {
	t.Helper()
	m := s.metrics(t)
	ch := `channel="` + serveChannel + `"`
	// A boot retried after a guest kernel lockup is a boot for the server, and it may have
	// reported before it hung.
	for _, c := range []struct {
		sample   string
		min, max int
	}{
		{"imgctl_serve_boots_total{" + ch + "}", boots + retries, boots + retries},
		{"imgctl_serve_boot_reports_total{" + ch + `,ok="true",phase="init"}`, boots, boots + retries},
		{"imgctl_serve_boot_reports_total{" + ch + `,ok="true",phase="configure"}`, boots, boots + retries},
		{"imgctl_serve_boot_failures_total{" + ch + "}", 0, 0},
	} {
		if got := m[c.sample]; got < float64(c.min) || got > float64(c.max) {
			t.Errorf("/metrics: %s = %v, want %d to %d", c.sample, got, c.min, c.max)
		}
	}
	var lines []string
	for k, v := range m {
		if strings.HasPrefix(k, "imgctl_serve_boot") {
			lines = append(lines, fmt.Sprintf("%s %v", k, v))
		}
	}
	slices.Sort(lines)
	t.Logf("/metrics, boots:\n  %s", strings.Join(lines, "\n  "))
}

// TestServeFleetFixtures checks, without qemu, what TestServeFleet gives the server: the
// inventory loads as written and tells the two machines apart (by MAC, with their own groups,
// labels and client certificates), and the pin is the one imgctl serve computes from the
// certificate.
func TestServeFleetFixtures(t *testing.T) {
	dir := t.TempDir()
	inv, err := inventory.Load(writeInventory(t, dir, testFleet))
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Warnings) > 0 {
		t.Errorf("inventory warnings: %q", inv.Warnings)
	}
	for _, n := range testFleet {
		id, err := inventory.ParseIdentity(n.mac, "", "")
		if err != nil {
			t.Fatal(err)
		}
		m, ok := inv.Lookup(id)
		if !ok || m.Name != n.name {
			t.Fatalf("MAC %s: machine %v, want %s", n.mac, m, n.name)
		}
		if m.Group != n.group || m.Channel != serveChannel || m.Role != nodeconfig.RoleNode || m.Config.Metadata.Name != n.name {
			t.Errorf("%s: group %q, channel %q, role %q, name %q", n.name, m.Group, m.Channel, m.Role, m.Config.Metadata.Name)
		}
		if got := m.Config.Spec.Kubelet.NodeLabels; !maps.Equal(got, n.labels) {
			t.Errorf("%s: node labels %v, want %v", n.name, got, n.labels)
		}
		if m.Config.Spec.Credentials != nil {
			t.Errorf("%s: the public config carries credentials", n.name)
		}
		blk, _ := pem.Decode([]byte(m.Secret.ClientCertificate))
		if blk == nil || m.Secret.ClientKey == "" {
			t.Fatalf("%s: no client certificate and key in the secret", n.name)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil || c.Subject.CommonName != "system:node:"+n.name {
			t.Errorf("%s: client certificate for %v (%v)", n.name, c.Subject, err)
		}
	}
	if got, want := testFleet[0].labelsString(), "imgctl.dev/machine=one,imgctl.dev/pool=blue"; got != want {
		t.Errorf("labels string %q, want %q", got, want)
	}
	certFile, keyFile, pin := serveCert(t, dir)
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := serve.CertificatePin(kp); err != nil || got != pin {
		t.Errorf("imgctl serve pins %s (%v), the test expects %s", got, err, pin)
	}
}

// TestGuestLockupLine: the line the fleet test retries a machine on (seen in CI: a guest
// spinning in nf_conntrack), and not on an ordinary console.
func TestGuestLockupLine(t *testing.T) {
	if !guestLockup.MatchString("[  588.472976] watchdog: BUG: soft lockup - CPU#1 stuck for 459s! [iptables:338]\n") {
		t.Error("the soft lockup line is not recognized")
	}
	if guestLockup.MatchString("imgctl-node step=kubelet-healthy status=ok latency=7198ms\nwatchdog: ok") {
		t.Error("an ordinary console is taken for a lockup")
	}
}

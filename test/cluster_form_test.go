package test

// Forming a cluster from images, end to end. The machines of examples/cluster-inventory.yaml
// (the README's bare-metal quick start, used as written: its CA, token, certificate key and
// MACs) netboot one pxe image with the control-plane images baked from imgctl serve, each with
// its own NodeConfig, and find each other on a cluster LAN (clusterLAN: NIC 2, the inventory's
// second MAC, with the address its DHCP reservation gives). NIC 1 is each guest's restricted
// user network to the server, as in the serve tests; the master's also forwards a loopback port
// to its API server, which the test talks to with a system:masters certificate it signs with the
// example CA. make test forms master-1 + node-1 (TestClusterMasterAndNode); make e2e-cluster adds
// master-2 (TestClusterThreeMachines, build tag cluster).

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
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/imgctl/imgctl/builders/pxe"
	"github.com/imgctl/imgctl/layers/testenv"
)

// controlPlaneLayout returns the directory scripts/build-control-plane-images.sh 1.21.13 wrote
// (layout/ and sources.txt): IMGCTL_CONTROL_PLANE_DIR, or the repository's tool cache, where it
// runs the script first when sources.txt is missing (it skips what is already built).
func controlPlaneLayout(t *testing.T) string {
	t.Helper()
	testenv.Integration(t, "the control-plane images (scripts/build-control-plane-images.sh)")
	dir := os.Getenv("IMGCTL_CONTROL_PLANE_DIR")
	if dir == "" {
		abs, err := filepath.Abs("../.cache/tools/control-plane/v1.21.13")
		if err != nil {
			t.Fatal(err)
		}
		dir = abs
	}
	if _, err := os.Stat(filepath.Join(dir, "sources.txt")); err != nil {
		t.Logf("building the control-plane images v1.21.13 into %s (first run only, ~6.5 min)", dir)
		cmd := exec.Command("../scripts/build-control-plane-images.sh", "1.21.13", dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("scripts/build-control-plane-images.sh: %v\n%s", err, out)
		}
	}
	return dir
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var ports []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// clusterCache is the download and layer cache the cluster tests' builds share across runs (as
// .cache/e2e-update is the update test's): a warm cache makes a build take a minute, not ten.
func clusterCache(t *testing.T) string { return e2eCache(t, "e2e-cluster") }

// exampleCluster is the CA, its key and the bootstrap token of examples/cluster-inventory.yaml
// (public example values).
type exampleCluster struct {
	caCert, caKey, token, certKey string
}

func readExampleCluster(t *testing.T) exampleCluster {
	t.Helper()
	var inv struct {
		Groups []struct {
			Config struct {
				Cluster struct {
					CACertificate string `yaml:"caCertificate"`
				} `yaml:"cluster"`
			} `yaml:"config"`
		} `yaml:"groups"`
	}
	var lab struct {
		BootstrapToken string `yaml:"bootstrapToken"`
	}
	var master struct {
		CAKey          string `yaml:"caKey"`
		CertificateKey string `yaml:"certificateKey"`
	}
	for _, f := range []struct {
		path string
		v    any
	}{
		{"../examples/cluster-inventory.yaml", &inv},
		{"../examples/cluster-inventory-secrets/lab.yaml", &lab},
		{"../examples/cluster-inventory-secrets/master-1.yaml", &master},
	} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, f.v); err != nil {
			t.Fatalf("%s: %v", f.path, err)
		}
	}
	if len(inv.Groups) == 0 || inv.Groups[0].Config.Cluster.CACertificate == "" || lab.BootstrapToken == "" || master.CAKey == "" {
		t.Fatal("examples/cluster-inventory.yaml and its secrets lack the CA, its key or the token")
	}
	return exampleCluster{caCert: inv.Groups[0].Config.Cluster.CACertificate, caKey: master.CAKey, token: lab.BootstrapToken, certKey: master.CertificateKey}
}

// adminClient is an HTTPS client of the guest's API server (through qemu's hostfwd on addr)
// with a system:masters certificate signed by the example CA, which the master's cluster uses.
func adminClient(t *testing.T, c exampleCluster) *http.Client {
	t.Helper()
	cb, _ := pem.Decode([]byte(c.caCert))
	kb, _ := pem.Decode([]byte(c.caKey))
	if cb == nil || kb == nil {
		t.Fatal("example CA: no PEM")
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "imgctl-e2e-admin", Organization: []string{"system:masters"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: "kubernetes", // a SAN kubeadm gives every API server certificate
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	}}}
}

// The example inventory and what the tests take from it.
const (
	exampleInventory = "../examples/cluster-inventory.yaml"
	exampleSecrets   = "../examples/cluster-inventory-secrets"
	clusterChannel   = "nightly" // the example inventory's channel
	// dnsProbeRef is the test pod's image (test/testdata/dnsprobe), baked beside the
	// control-plane images.
	dnsProbeRef = "registry.imgctl.invalid/test/dnsprobe:e2e"
	// kubernetesServiceIP is the first address of the example's serviceCIDR (10.96.0.0/12): the
	// kubernetes Service's cluster IP, what its DNS name resolves to.
	kubernetesServiceIP = "10.96.0.1"
)

// clusterMachine is one machine of the example inventory.
type clusterMachine struct {
	Name   string
	Role   string
	MACs   []string
	Config struct {
		Kubelet struct {
			ExtraArgs map[string]string `yaml:"extraArgs"`
		}
	}
}

// bootMAC is the NIC the machine netboots from (NIC 1), lanMAC its cluster LAN NIC (NIC 2),
// ip its LAN address (the kubelet's node-ip, the address the LAN's DHCP reserves for lanMAC).
func (m clusterMachine) bootMAC() string { return m.MACs[0] }
func (m clusterMachine) lanMAC() string  { return m.MACs[1] }
func (m clusterMachine) ip() string      { return m.Config.Kubelet.ExtraArgs["node-ip"] }

// exampleMachines reads the example inventory's machines by name; each must have the two MACs
// and the LAN address the cluster tests give it.
func exampleMachines(t *testing.T) map[string]clusterMachine {
	t.Helper()
	b, err := os.ReadFile(exampleInventory)
	if err != nil {
		t.Fatal(err)
	}
	var inv struct {
		Groups   []struct{ Name, Channel string }
		Machines []clusterMachine
	}
	if err := yaml.Unmarshal(b, &inv); err != nil {
		t.Fatalf("%s: %v", exampleInventory, err)
	}
	for _, g := range inv.Groups {
		if g.Channel != clusterChannel {
			t.Fatalf("%s: group %s follows channel %q; the cluster tests promote to %q", exampleInventory, g.Name, g.Channel, clusterChannel)
		}
	}
	out := map[string]clusterMachine{}
	for _, m := range inv.Machines {
		if len(m.MACs) != 2 {
			t.Fatalf("%s: machine %s: want two MACs (NIC 1 to the server, NIC 2 on the LAN), got %q", exampleInventory, m.Name, m.MACs)
		}
		if a, err := netip.ParseAddr(m.ip()); err != nil || !lanPrefix.Contains(a) {
			t.Fatalf("%s: machine %s: kubelet node-ip %q is not an address of the cluster LAN %s", exampleInventory, m.Name, m.ip(), lanPrefix)
		}
		out[m.Name] = m
	}
	return out
}

// copyExampleInventory copies the example inventory and its secrets into dir (the secrets 0600,
// as the README says) and returns the inventory's path.
func copyExampleInventory(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "cluster-inventory-secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	copyFile(t, exampleInventory, filepath.Join(dir, "cluster-inventory.yaml"))
	secrets, err := filepath.Glob(filepath.Join(exampleSecrets, "*.yaml"))
	if err != nil || len(secrets) == 0 {
		t.Fatalf("%s: no secret files (%v)", exampleSecrets, err)
	}
	for _, s := range secrets {
		dst := filepath.Join(dir, "cluster-inventory-secrets", filepath.Base(s))
		copyFile(t, s, dst)
		if err := os.Chmod(dst, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "cluster-inventory.yaml")
}

// editInventory applies edits to the inventory copy at path.
func editInventory(t *testing.T, path string, edits ...func(string) string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, e := range edits {
		s = e(s)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dnsProbeSource builds test/testdata/dnsprobe (static), packs it as dnsProbeRef into an OCI
// layout in dir with imgctl images pack, and returns the spec source that bakes it.
func dnsProbeSource(ctx context.Context, t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "dnsprobe")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./testdata/dnsprobe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building dnsprobe: %v\n%s", err, out)
	}
	layout := filepath.Join(dir, "dnsprobe-layout")
	out, err := imgctl(ctx, t, dir, "-o", "json", "images", "pack", "--layout", layout, "--name", dnsProbeRef,
		"--file", bin+":/dnsprobe:0755", "--entrypoint", "/dnsprobe")
	if err != nil {
		t.Fatal(err)
	}
	var packed struct{ Digest string }
	if err := json.Unmarshal([]byte(out), &packed); err != nil || !strings.HasPrefix(packed.Digest, "sha256:") {
		t.Fatalf("imgctl images pack: no digest (%v): %s", err, out)
	}
	return "oci-layout://" + layout + "@" + packed.Digest + "#image=/usr/lib/imgctl/images/dnsprobe.tar&name=" + dnsProbeRef
}

// clusterTestLayer adds a report unit that prints, once kube-node-configuration has finished
// (succeeded or failed), one console line with its outcome: IMGCTL-TEST-CLUSTER.
func clusterTestLayer(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "cluster-testlayer")
	writeTestLayer(t, root, map[string]string{
		"etc/systemd/system/imgctl-test-report.service": reportUnit("imgctl cluster test report", "kube-node-configuration.service"),
		"usr/local/bin/imgctl-test-report": `#!/bin/bash
echo "IMGCTL-TEST-CLUSTER node=$(hostname) configuration=$(systemctl is-active kube-node-configuration) kubelet=$(systemctl is-active kubelet) podnet=$(systemctl is-active imgctl-podnet)" > /dev/console
`,
	})
	return root
}

// clusterImage is the cluster tests' image in the store of dir, on clusterChannel.
type clusterImage struct {
	dir      string // the imgctl --store/--cache parent (cache shared across runs: clusterCache)
	image    string // digest
	rootSize int64
}

// buildClusterImage builds the pxe image every machine of the cluster boots: kubelet, kubeadm and
// crictl from kubernetesTools, the control-plane images (controlPlaneLayout), the dnsprobe image
// and the report layer; and promotes it to clusterChannel. The store is the test's own; the
// download and layer cache is clusterCache's.
func buildClusterImage(ctx context.Context, t *testing.T) clusterImage {
	t.Helper()
	k8s := kubernetesTools(t)
	cp := controlPlaneLayout(t)
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(clusterCache(t), "cache"), filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	srcs := []string{
		"--source", "kubelet=file://" + filepath.Join(k8s, "kubelet") + "#path=/usr/bin/kubelet&mode=0755",
		"--source", "kubelet=file://" + filepath.Join(k8s, "kubeadm") + "#path=/usr/bin/kubeadm&mode=0755",
		"--source", "extra=file://" + filepath.Join(k8s, "crictl") + "#path=/usr/bin/crictl&mode=0755",
		"--source", "extra=file://" + clusterTestLayer(t, dir) + "/",
		"--source", "extra=" + dnsProbeSource(ctx, t, dir),
	}
	lines, err := os.ReadFile(filepath.Join(cp, "sources.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Fields(string(lines)) {
		srcs = append(srcs, "--source", "extra="+l)
	}
	out := filepath.Join(dir, "out")
	start := time.Now()
	args := append([]string{"--k8s", "1.21.13", "--target", pxe.Name,
		"--lock", filepath.Join(clusterCache(t), "cluster-pxe.lock"), "--node-agent", nodeAgent(t), "--output", out}, srcs...)
	b := imgctlBuild(ctx, t, dir, args...)
	_, size := fileDigest(t, filepath.Join(out, pxe.RootName))
	t.Logf("built the cluster image %s in %v (root %d MiB)", b.Digest, time.Since(start).Round(time.Second), size>>20)
	if _, err := imgctl(ctx, t, dir, "promote", b.Digest, "--to", clusterChannel, "--reason", "cluster e2e"); err != nil {
		t.Fatal(err)
	}
	return clusterImage{dir: dir, image: b.Digest, rootSize: size}
}

// cluster is a cluster test's machinery: imgctl serve with the example inventory, the LAN, the
// guests, and the API server's client once the master is up.
type cluster struct {
	t        *testing.T
	img      clusterImage
	srv      *serveProcess
	lan      *clusterLAN
	machines map[string]clusterMachine
	logs     string
	apiPort  string // the loopback port forwarded to the master's 6443
	ex       exampleCluster
	api      *clusterAPI
	guests   map[string]*clusterGuest
	start    time.Time // the first power-on
	// singleThread boots the guests with vmOptions.singleThread (more than two guests at once).
	singleThread bool
}

// clusterGuest is one booted machine.
type clusterGuest struct {
	m       clusterMachine
	vm      *vm
	powerOn time.Time
}

// clusterGuestMemory is each guest's memory: the root in RAM (netbootMemory) plus room for
// the container store (tmpfs without a STATE partition: every baked image unpacked), etcd and
// the control plane.
func clusterGuestMemory(rootSize int64) int { return netbootMemory(rootSize) + 3072 }

// newCluster builds the image, starts imgctl serve on it with the example inventory (TLS, as
// the README) and the cluster LAN with the inventory's reservations and a default route.
//
// Each edit changes the inventory's copy: it gets the text and returns it changed (see
// insertAfter).
func newCluster(ctx context.Context, t *testing.T, edits ...func(inventory string) string) *cluster {
	t.Helper()
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap")
	testenv.Files(t, virtioROM)
	c := &cluster{t: t, machines: exampleMachines(t), ex: readExampleCluster(t), guests: map[string]*clusterGuest{}}
	c.img = buildClusterImage(ctx, t)
	work := t.TempDir()
	certFile, keyFile, _ := serveCert(t, work)
	inv := copyExampleInventory(t, work)
	if len(edits) > 0 {
		editInventory(t, inv, edits...)
	}
	c.srv = startServe(ctx, t, c.img.dir, inv,
		"--tls-cert", certFile, "--tls-key", keyFile, "--advertise-url", serveURL)
	leases := map[string]string{}
	for _, m := range c.machines {
		leases[m.lanMAC()] = m.ip()
	}
	c.lan = newClusterLAN(t, leases)
	c.lan.defaultRoute = true
	logs, err := filepath.Abs("../.cache/e2e-cluster/logs")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	c.logs = logs
	c.apiPort = freePorts(t, 1)[0]
	c.api = &clusterAPI{client: adminClient(t, c.ex), base: "https://127.0.0.1:" + c.apiPort}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("imgctl serve log:\n%s", tail(c.srv.log.String(), 6000))
			for name, g := range c.guests {
				t.Logf("%s console (whole: %s):\n%s", name, filepath.Join(c.logs, name+".log"), tail(cleanConsole(g.vm.console.String()), 6000))
			}
		}
	})
	return c
}

// boot powers a machine on: SeaBIOS netboots NIC 1 (the machine's boot MAC) from imgctl serve,
// NIC 2 joins the LAN; the master's NIC 1 also forwards apiPort to its API server.
func (c *cluster) boot(ctx context.Context, name string) *clusterGuest {
	t := c.t
	t.Helper()
	m, ok := c.machines[name]
	if !ok {
		t.Fatalf("%s has no machine %s", exampleInventory, name)
	}
	g := &netbootGuest{upstream: c.srv.addr}
	netdev := g.netdev(t)
	if m.Role == "master" {
		netdev += ",hostfwd=tcp:127.0.0.1:" + c.apiPort + "-:6443"
	}
	now := time.Now()
	if c.start.IsZero() {
		c.start = now
	}
	v := startVM(ctx, t, vmOptions{bios: true, bootNIC: true, mac: m.bootMAC(), netdev: netdev,
		memoryMiB: clusterGuestMemory(c.img.rootSize), lan: c.lan.netdevArgs(m.lanMAC()), lanMAC: m.lanMAC(), singleThread: c.singleThread,
		logFile: filepath.Join(c.logs, name+".log")})
	t.Cleanup(v.stop)
	cg := &clusterGuest{m: m, vm: v, powerOn: now}
	c.guests[name] = cg
	t.Logf("%s (%s) powered on %v after the first machine", name, m.Role, now.Sub(c.start).Round(time.Second))
	return cg
}

// waitKubeadm waits for the machine's kubeadm step to end and fails the test unless it
// succeeded; it logs when.
func (c *cluster) waitKubeadm(ctx context.Context, g *clusterGuest) {
	t := c.t
	t.Helper()
	if err := g.vm.waitFor(ctx, "IMGCTL-TEST-CLUSTER"); err != nil {
		t.Fatalf("%s: %v\nsteps:\n  %s", g.m.Name, err, strings.Join(stepLines(g.vm.console.String()), "\n  "))
	}
	log := cleanConsole(g.vm.console.String())
	if !strings.Contains(log, "step=kubeadm status=ok") || !strings.Contains(log, "configuration=active") {
		t.Fatalf("%s: configuration failed\nsteps:\n  %s\nreport: %s", g.m.Name, strings.Join(stepLines(log), "\n  "),
			clusterReport(log))
	}
	t.Logf("%s: configured %v after its power-on: %s", g.m.Name, time.Since(g.powerOn).Round(time.Second), clusterReport(log))
}

// clusterReport is the report unit's line.
func clusterReport(log string) string {
	i := strings.Index(log, "IMGCTL-TEST-CLUSTER")
	if i < 0 {
		return ""
	}
	line, _, _ := strings.Cut(log[i:], "\n")
	return strings.TrimSpace(line)
}

// logSteps logs every machine's step lines (each with its latency: the per-step timings).
func (c *cluster) logSteps() {
	for name, g := range c.guests {
		c.t.Logf("%s steps:\n  %s", name, strings.Join(stepLines(g.vm.console.String()), "\n  "))
	}
}

// checkNoSecrets fails the test if a credential of the example cluster reached a console.
func (c *cluster) checkNoSecrets() {
	secret := strings.SplitN(c.ex.token, ".", 2)
	for name, g := range c.guests {
		log := g.vm.console.String()
		for what, s := range map[string]string{"the bootstrap token's secret": secret[len(secret)-1], "the certificate key": c.ex.certKey} {
			if s != "" && strings.Contains(log, s) {
				t := c.t
				t.Errorf("%s: %s reached the console", name, what)
			}
		}
	}
}

// clusterAPI is the master's API server as the test reaches it (hostfwd), as system:masters.
type clusterAPI struct {
	client *http.Client
	base   string
}

// do sends a request with a JSON body (or none) and decodes a JSON answer into v (unless v is nil
// or the answer is not JSON); a status other than want is an error naming the path.
func (a *clusterAPI) do(method, path string, body any, want int, v any) ([]byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return b, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			return b, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return b, nil
}

func (a *clusterAPI) get(path string, v any) error {
	_, err := a.do(http.MethodGet, path, nil, http.StatusOK, v)
	return err
}

// apiNode is what the tests read of a Node.
type apiNode struct {
	Metadata struct {
		Name   string
		Labels map[string]string
	}
	Spec   struct{ PodCIDR string }
	Status struct {
		Conditions []struct{ Type, Status, Reason string }
		Addresses  []struct{ Type, Address string }
	}
}

func (n apiNode) ready() bool {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func (n apiNode) internalIP() string {
	for _, a := range n.Status.Addresses {
		if a.Type == "InternalIP" {
			return a.Address
		}
	}
	return ""
}

// waitReady waits until exactly the named Nodes are Ready with a pod CIDR and their LAN address
// as InternalIP, and returns them by name.
func (c *cluster) waitReady(ctx context.Context, names ...string) map[string]apiNode {
	t := c.t
	t.Helper()
	var last string
	for {
		var list struct{ Items []apiNode }
		if err := c.api.get("/api/v1/nodes", &list); err != nil {
			last = err.Error()
		} else {
			got := map[string]apiNode{}
			var states []string
			for _, n := range list.Items {
				got[n.Metadata.Name] = n
				states = append(states, fmt.Sprintf("%s ready=%v podCIDR=%s ip=%s", n.Metadata.Name, n.ready(), n.Spec.PodCIDR, n.internalIP()))
			}
			last = strings.Join(states, "; ")
			ok := len(got) == len(names)
			for _, name := range names {
				n, found := got[name]
				ok = ok && found && n.ready() && n.Spec.PodCIDR != "" && n.internalIP() == c.machines[name].ip()
			}
			if ok {
				return got
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the nodes %v were not all Ready: %s", names, last)
		case <-time.After(5 * time.Second):
		}
	}
}

// runDNSProbe runs the dnsprobe image as a pod on the node, resolving the kubernetes Service's
// names through the cluster DNS (CoreDNS, found through its Service IP), and waits for the pod's
// log to say they resolved to the Service's cluster IP. It checks that the pod's IP is in the
// node's pod CIDR, and returns the log line.
func (c *cluster) runDNSProbe(ctx context.Context, node apiNode) string {
	t := c.t
	t.Helper()
	name := "dnsprobe-" + node.Metadata.Name
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": "default"},
		"spec": map[string]any{
			"nodeName": node.Metadata.Name, "restartPolicy": "Never",
			"containers": []map[string]any{{"name": "probe", "image": dnsProbeRef, "imagePullPolicy": "Never",
				"args": []string{"kubernetes.default", "kubernetes.default.svc.cluster.local"}}},
		},
	}
	if _, err := c.api.do(http.MethodPost, "/api/v1/namespaces/default/pods", pod, http.StatusCreated, nil); err != nil {
		t.Fatal(err)
	}
	var last string
	for {
		var p struct {
			Status struct {
				Phase string
				PodIP string `json:"podIP"`
			}
		}
		if err := c.api.get("/api/v1/namespaces/default/pods/"+name, &p); err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("phase=%s podIP=%s", p.Status.Phase, p.Status.PodIP)
			if p.Status.Phase == "Running" {
				b, err := c.api.do(http.MethodGet, "/api/v1/namespaces/default/pods/"+name+"/log", nil, http.StatusOK, nil)
				log := string(b)
				if err != nil {
					last += "; log: " + err.Error()
				} else {
					last += "; log: " + strings.TrimSpace(tail(log, 500))
				}
				if strings.Contains(log, "DNSPROBE-OK") {
					line := log[strings.Index(log, "DNSPROBE-OK"):]
					line, _, _ = strings.Cut(line, "\n")
					for _, want := range []string{"kubernetes.default=" + kubernetesServiceIP, "kubernetes.default.svc.cluster.local=" + kubernetesServiceIP} {
						if !strings.Contains(line, want) {
							t.Errorf("%s: %q lacks %s", name, line, want)
						}
					}
					cidr, err := netip.ParsePrefix(node.Spec.PodCIDR)
					ip, ierr := netip.ParseAddr(p.Status.PodIP)
					if err != nil || ierr != nil || !cidr.Contains(ip) {
						t.Errorf("%s: pod IP %q is not in %s's pod CIDR %q", name, p.Status.PodIP, node.Metadata.Name, node.Spec.PodCIDR)
					}
					return line
				}
				if strings.Contains(log, "DNSPROBE-FAIL") {
					t.Fatalf("%s: the cluster DNS did not answer: %s", name, last)
				}
			}
			if p.Status.Phase == "Failed" || p.Status.Phase == "Succeeded" {
				t.Fatalf("%s ended: %s", name, last)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v: %s", name, ctx.Err(), last)
		case <-time.After(5 * time.Second):
		}
	}
}

// TestClusterMasterAndNode forms a cluster from images: master-1 and node-1 of the example
// inventory netboot the same image from imgctl serve, master-1 runs kubeadm init (powered on
// first, as the README says), node-1 joins with the bootstrap token and the CA's hash once it
// has; both Nodes Ready, and a pod on node-1 resolves the kubernetes Service's names through
// CoreDNS, which runs on the cluster's pod network.
func TestClusterMasterAndNode(t *testing.T) {
	testenv.Integration(t, "qemu guests forming a cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	c := newCluster(ctx, t)
	master := c.boot(ctx, "master-1")
	c.waitKubeadm(ctx, master)
	node := c.boot(ctx, "node-1")
	c.waitKubeadm(ctx, node)
	nodes := c.waitReady(ctx, "master-1", "node-1")
	allReady := time.Since(c.start)
	t.Logf("master-1 and node-1 Ready %v after the first power-on", allReady.Round(time.Second))
	line := c.runDNSProbe(ctx, nodes["node-1"])
	t.Logf("a pod on node-1 resolved the kubernetes Service %v after the first power-on: %s", time.Since(c.start).Round(time.Second), line)
	c.logSteps()
	c.checkNoSecrets()
}

package render

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/metadata"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/nodeconfig"
)

// clusterInventory is the three-machine example of the README's bare metal quick start.
const clusterInventory = "../../../../examples/cluster-inventory.yaml"

// inventoryNodeConfig is what a machine of an inventory gets on the real path: imgctl serve
// merges its public config and secret and writes them as YAML (images/serve writeYAML); the node
// reads that document through metadata.Fetch, which parses, defaults and validates it.
func inventoryNodeConfig(t *testing.T, m *inventory.Machine) *nodeconfig.NodeConfig {
	t.Helper()
	cfg := nodeconfig.Merge(m.Config.Public(), m.Secret)
	doc, err := yaml.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err := metadata.Fetch(context.Background(), []metadata.Provider{&metadata.File{Path: path}}, metadata.Options{Attempts: 1})
	if err != nil {
		t.Fatalf("%s: the node refuses its NodeConfig: %v", m.Name, err)
	}
	return c
}

// TestClusterInventoryExample loads examples/cluster-inventory.yaml with images/inventory and
// takes each machine's NodeConfig the way imgctl serve hands it out and the node reads it, then
// renders it (with the control-plane images baked): master-1 runs kubeadm init --upload-certs
// with the example CA, token and certificate key, master-2 kubeadm join --control-plane with
// the same certificate key, node-1 kubeadm join with the token; master-1 and master-2 advertise
// their LAN address; every kubelet
// registers its LAN address (node-ip); the CA hash, key and certificate of the example belong
// together. Real kubeadm 1.21.13 then reads every rendered configuration (config migrate).
func TestClusterInventoryExample(t *testing.T) {
	inv, err := inventory.Load(clusterInventory)
	if err != nil {
		t.Fatalf("inventory.Load(examples/cluster-inventory.yaml): %v", err)
	}
	want := []struct {
		name, nic1, lan, ip string
		role                nodeconfig.Role
		command             string
	}{
		{"master-1", "52:54:00:12:34:11", "52:54:00:50:00:11", "192.168.50.11", nodeconfig.RoleMaster, "kubeadm init"},
		{"master-2", "52:54:00:12:34:12", "52:54:00:50:00:12", "192.168.50.12", nodeconfig.RoleMasterFollower, "kubeadm join"},
		{"node-1", "52:54:00:12:34:13", "52:54:00:50:00:13", "192.168.50.13", nodeconfig.RoleNode, "kubeadm join"},
	}
	if len(inv.Machines) != len(want) {
		t.Fatalf("%d machines, want %d", len(inv.Machines), len(want))
	}
	configs := map[string]string{}
	var certKey string // master-1's
	for _, w := range want {
		for _, mac := range []string{w.nic1, w.lan} {
			if m, ok := inv.Lookup(inventory.Identity{MAC: mac}); !ok || m.Name != w.name {
				t.Errorf("Lookup(%s) = %v, %v; want %s", mac, m, ok, w.name)
			}
		}
		m, ok := inv.Machine(w.name)
		if !ok {
			t.Fatalf("no machine %s", w.name)
		}
		if m.Role != w.role || m.Channel != "nightly" {
			t.Errorf("%s: role %s channel %q, want %s and lab", w.name, m.Role, m.Channel, w.role)
		}
		cfg := inventoryNodeConfig(t, m)
		if cfg.Spec.Role != w.role || cfg.Metadata.Name != w.name {
			t.Errorf("%s: NodeConfig role %s name %q", w.name, cfg.Spec.Role, cfg.Metadata.Name)
		}
		cl := cfg.Spec.Cluster
		if cl.APIServer != "https://192.168.50.11:6443" || cl.PodCIDR != "10.244.0.0/16" || cl.ServiceCIDR != "10.96.0.0/12" {
			t.Errorf("%s: cluster %+v", w.name, cl)
		}
		// One image for all three: configure finds the same control-plane images baked.
		p, err := Render(Input{Config: cfg, Kubernetes: oracleVersion, NodeName: w.name, BakedImages: testBaked(t, oracleVersion)})
		if err != nil {
			t.Fatalf("%s: Render: %v", w.name, err)
		}
		if got := strings.Join(p.Command, " "); !strings.HasPrefix(got, w.command+" ") {
			t.Errorf("%s: command %q, want %s", w.name, got, w.command)
		}
		config := fileData(t, p, KubeadmConfigPath)
		configs[w.name] = config
		for _, s := range []string{"node-ip: " + w.ip + "\n", "name: " + w.name + "\n"} {
			if !strings.Contains(config, s) {
				t.Errorf("%s: kubeadm.yaml lacks %q:\n%s", w.name, s, config)
			}
		}
		if adv := strings.Contains(config, "advertiseAddress: "+w.ip+"\n"); adv != (w.role != nodeconfig.RoleNode) {
			t.Errorf("%s: advertises %s: %v, want it on a control-plane machine only:\n%s", w.name, w.ip, adv, config)
		}
		cr := cfg.Spec.Credentials
		switch w.role {
		case nodeconfig.RoleMaster:
			if !strings.Contains(config, "controlPlaneEndpoint: 192.168.50.11:6443\n") || !strings.Contains(config, "podSubnet: 10.244.0.0/16\n") {
				t.Errorf("master-1's ClusterConfiguration lacks the endpoint or pod subnet:\n%s", config)
			}
			checkExampleCA(t, cl.CACertificate, cr.CAKey, cr.CACertHashes)
			certKey = cr.CertificateKey
			if got := strings.Join(p.Command, " "); !strings.HasSuffix(got, " --upload-certs") || cr.CertificateKey == "" ||
				!strings.Contains(config, "certificateKey: "+cr.CertificateKey+"\n") || !strings.Contains(config, "token: abcdef.0123456789abcdef\n") {
				t.Errorf("master-1: %q with a config lacking its certificate key or token:\n%s", got, config)
			}
			// The inventory's CA key (PKCS#8, as openssl writes it), as SEC1 (what kubeadm's
			// followers can read back from the kubeadm-certs Secret).
			kb, _ := pem.Decode([]byte(cr.CAKey))
			written, _ := pem.Decode([]byte(fileData(t, p, CAKeyPath)))
			if kb == nil || written == nil || written.Type != "EC PRIVATE KEY" {
				t.Fatalf("master-1's %s is not an EC PRIVATE KEY", CAKeyPath)
			}
			want, err1 := x509.ParsePKCS8PrivateKey(kb.Bytes)
			got, err2 := x509.ParseECPrivateKey(written.Bytes)
			if err1 != nil || err2 != nil || !got.Equal(want) {
				t.Errorf("master-1's %s is not the inventory's CA key (%v, %v)", CAKeyPath, err1, err2)
			}
		case nodeconfig.RoleMasterFollower:
			if cr.CertificateKey == "" || !strings.Contains(config, "certificateKey: "+cr.CertificateKey+"\n") {
				t.Errorf("master-2's JoinConfiguration lacks the certificate key:\n%s", config)
			}
			if cr.CertificateKey != certKey {
				t.Errorf("master-2's certificate key is not the one master-1 uploads the certificates with")
			}
		case nodeconfig.RoleNode:
			if strings.Contains(config, "controlPlane:") || !strings.Contains(config, "token: abcdef.0123456789abcdef\n") {
				t.Errorf("node-1's JoinConfiguration is not a worker's with the token:\n%s", config)
			}
		}
	}
	if t.Failed() {
		return
	}

	// Real kubeadm reads the three configurations.
	kubeadm := kubernetesTool(t, "kubeadm")
	for name, config := range configs {
		docs, stderr := migrate(t, kubeadm, config)
		quiet(t, "config migrate ("+name+")", stderr)
		kind := "JoinConfiguration"
		if name == "master-1" {
			kind = "InitConfiguration"
			if got := get(docs["ClusterConfiguration"], "controlPlaneEndpoint"); got != "192.168.50.11:6443" {
				t.Errorf("master-1: migrated controlPlaneEndpoint = %v", got)
			}
		} else if got := get(docs[kind], "discovery", "bootstrapToken", "apiServerEndpoint"); got != "192.168.50.11:6443" {
			t.Errorf("%s: migrated discovery endpoint = %v", name, got)
		}
		ip := map[string]string{"master-1": "192.168.50.11", "master-2": "192.168.50.12", "node-1": "192.168.50.13"}[name]
		if got := get(docs[kind], "nodeRegistration", "kubeletExtraArgs", "node-ip"); got != ip {
			t.Errorf("%s: migrated %s node-ip = %v, want %s", name, kind, got, ip)
		}
		if name == "master-2" && get(docs[kind], "controlPlane", "certificateKey") == nil {
			t.Errorf("master-2: migrated JoinConfiguration has no controlPlane.certificateKey")
		}
	}
}

// checkExampleCA: the example's CA key is the certificate's, the certificate is a CA, and
// caCertHashes is the hash kubeadm computes of it (SHA-256 of its SubjectPublicKeyInfo).
func checkExampleCA(t *testing.T, certPEM, keyPEM string, hashes []string) {
	t.Helper()
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil {
		t.Fatal("the example caCertificate is not PEM")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA {
		t.Error("the example caCertificate is not a CA")
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if want := "sha256:" + hex.EncodeToString(sum[:]); !slices.Equal(hashes, []string{want}) {
		t.Errorf("caCertHashes %q, want the example CA's %s", hashes, want)
	}
	kb, _ := pem.Decode([]byte(keyPEM))
	if kb == nil {
		t.Fatal("the example caKey is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.(crypto.Signer).Public())
	if err != nil || !bytes.Equal(pub, cert.RawSubjectPublicKeyInfo) {
		t.Errorf("the example caKey is not the caCertificate's key (%v)", err)
	}
}

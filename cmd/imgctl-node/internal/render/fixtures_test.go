package render

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

// Test credentials: fake, and never a real cluster's.
const (
	testToken   = "abcdef.0123456789abcdef"
	testHash    = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testCertKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	testNode    = "node-1"
)

// testPKI is a CA and a kubelet client certificate for testNode. Ed25519 keys from fixed seeds
// and fixed serials make them, and so the golden files, identical on every run.
type testPKI struct {
	caCert, caKey, clientCert, clientKey string
}

func newTestPKI(t testing.TB, clientSubject pkix.Name) testPKI {
	t.Helper()
	caPriv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	clientPriv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, ed25519.SeedSize))
	notBefore := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubernetes"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caPriv.Public(), caPriv)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	clientTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      clientSubject,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	clientDER, err := x509.CreateCertificate(rand.Reader, clientTmpl, ca, clientPriv.Public(), caPriv)
	if err != nil {
		t.Fatal(err)
	}
	return testPKI{
		caCert:     certPEM(caDER),
		caKey:      keyPEM(t, caPriv),
		clientCert: certPEM(clientDER),
		clientKey:  keyPEM(t, clientPriv),
	}
}

// nodeSubject is what the Node authorizer expects of testNode's kubelet.
var nodeSubject = pkix.Name{CommonName: "system:node:" + testNode, Organization: []string{"system:nodes"}}

func certPEM(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func keyPEM(t testing.TB, k ed25519.PrivateKey) string {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// The test roles: one config per way of joining.
const (
	caseMaster         = "master"
	caseMasterFollower = "masterFollower"
	caseNodeToken      = "node-token"
	caseNodeCert       = "node-cert"
)

var testCases = []string{caseMaster, caseMasterFollower, caseNodeToken, caseNodeCert}

// testConfig returns a validated, defaulted NodeConfig for a test case, with every optional field
// that case uses set so that the golden files show it.
func testConfig(t testing.TB, c string, pki testPKI) *nodeconfig.NodeConfig {
	t.Helper()
	cfg := &nodeconfig.NodeConfig{
		APIVersion: nodeconfig.APIVersion,
		Kind:       nodeconfig.Kind,
		Metadata:   nodeconfig.ObjectMeta{Name: testNode},
		Spec: nodeconfig.Spec{
			Cluster: nodeconfig.Cluster{
				Name:      "prod",
				APIServer: "https://10.0.0.10:6443",
				PodCIDR:   "10.244.0.0/16",
			},
			Kubelet: nodeconfig.Kubelet{
				NodeLabels:         map[string]string{"topology.kubernetes.io/zone": "eu-west-1a", "pool": "gpu"},
				RegisterWithTaints: []string{"dedicated=gpu:NoSchedule", "spot:PreferNoSchedule"},
				ExtraArgs:          map[string]string{"v": "2", "node-ip": "10.0.0.21"},
				MaxPods:            64,
			},
		},
	}
	switch c {
	case caseMaster:
		cfg.Spec.Role = nodeconfig.RoleMaster
		cfg.Spec.Kubelet.RegisterWithTaints = nil // keep kubeadm's control-plane taint
		cfg.Spec.Cluster.CACertificate = pki.caCert
		cfg.Spec.Credentials = &nodeconfig.Credentials{CAKey: pki.caKey, BootstrapToken: testToken, CertificateKey: testCertKey}
	case caseMasterFollower:
		cfg.Spec.Role = nodeconfig.RoleMasterFollower
		cfg.Spec.Kubelet.RegisterWithTaints = nil
		cfg.Spec.Credentials = &nodeconfig.Credentials{
			BootstrapToken: testToken, CACertHashes: []string{testHash}, CertificateKey: testCertKey}
	case caseNodeToken:
		cfg.Spec.Role = nodeconfig.RoleNode
		cfg.Spec.Credentials = &nodeconfig.Credentials{BootstrapToken: testToken, CACertHashes: []string{testHash}}
	case caseNodeCert:
		cfg.Spec.Role = nodeconfig.RoleNode
		cfg.Spec.Cluster.CACertificate = pki.caCert
		cfg.Spec.Credentials = &nodeconfig.Credentials{ClientCertificate: pki.clientCert, ClientKey: pki.clientKey}
	default:
		t.Fatalf("unknown test case %q", c)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config %s: %v", c, err)
	}
	return cfg
}

// testInput is the Input for a test case at Kubernetes version k8s.
func testInput(t testing.TB, c, k8s string) Input {
	t.Helper()
	in := Input{Config: testConfig(t, c, newTestPKI(t, nodeSubject)), Kubernetes: k8s, NodeName: testNode}
	if c == caseMaster || c == caseMasterFollower {
		in.AdvertiseAddress = "192.0.2.11"
		in.BakedImages = testBaked(t, k8s)
	}
	return in
}

// testEtcdTag is the etcd the test control-plane images carry: not kubeadm 1.21's default
// (3.4.13-0), as with scripts/build-control-plane-images.sh.
const testEtcdTag = "3.5.0-0"

// testBaked names a full set of control-plane images for Kubernetes k8s under
// controlPlaneRepository, as configure finds them baked: etcd testEtcdTag, CoreDNS v1.8.0 and
// kubeadm's pause tag.
func testBaked(t testing.TB, k8s string) []string {
	t.Helper()
	kv, err := kubeversion.Parse(k8s)
	if err != nil {
		t.Fatal(err)
	}
	r := controlPlaneRepository + "/"
	return []string{
		r + "coredns:v1.8.0", r + "etcd:" + testEtcdTag,
		r + "kube-apiserver:v" + kv.String(), r + "kube-controller-manager:v" + kv.String(),
		r + "kube-proxy:v" + kv.String(), r + "kube-scheduler:v" + kv.String(),
		r + strings.TrimPrefix(kv.SandboxImage(), "registry.k8s.io/"), // pause:TAG
	}
}

// fileData returns the data of the plan's file at path, failing the test if there is none.
func fileData(t testing.TB, p *Plan, path string) string {
	t.Helper()
	for _, f := range p.Files {
		if f.Path == path {
			return string(f.Data)
		}
	}
	t.Fatalf("no file %s in the plan", path)
	return ""
}

func mustRender(t testing.TB, in Input) *Plan {
	t.Helper()
	p, err := Render(in)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	return p
}

package render

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
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

// testPKI is a CA and a kubelet client certificate for testNode. A fixed RSA CA key (the kind
// kubeadm loads; PKCS#1 v1.5 signatures are deterministic), an Ed25519 client key from a fixed
// seed and fixed serials make them, and so the golden files, identical on every run.
type testPKI struct {
	caCert, caKey, clientCert, clientKey string
}

// testCAKey is the test CA's key (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048):
// fake, and never a real cluster's.
const testCAKey = `-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCpmOjBZARhb9jN
BEURIf4KjmkEZ1pPbHhNK7vE52hwLX1SN9FKkxOsZwvM6/QP5LmMh4jcMaAQw4ma
K024AEoYGHjc95AJibZQog6FqQI+X8MybK2rcSEOBdmTaN0jRU66NM5oCNs4EXCd
kH9jvIglECdlhFOZKw7dbyCmbXv9sKcFKTYyENWmIrpLdqI1xZpJJk58zxgr1xcR
JBTOnr3avy2CmUhuinZdV3eTCo29MJ+Ydyi5GhB7ArraNUFMEMWHaWNUj7kA1D9w
Mi8WSACJ7djGrbwRMRAoqU1h4rJcbu3vawsKH1HoCB1uhAFraZm+i+7l04BPSrSc
AuS6O5tBAgMBAAECggEACTYtlTx5GvA75LXRyQqRPXJK/LLe5j+4YIuqrxkZFHe6
DfZLazsmF0gBDXQ27UqRc/M0IS6eWK7AOXQW7HKyk5C3ttvI8mWtFf/ZXVPm0+u4
YtOhkrVqM9RoQxAP68+ixS0jVWX+vzK+TMaZjrmhpO61zxcjAcejju4vZi697HNe
TZ1mdQSi7HJYpi1FTnUi5NLgWWM+wVAVnye8C7iLws7yivX9IF6C7V7Jb7ZiuSnG
LGN8y31VLjJMTUT5bHQp8zsu5jhJk3ItYknRVw5GT+C1HaMI3vuuKmm7ozEL5zzU
cMIMPKpKViFiRWkd3ch/U+aLRm5lpr8AjwFs4FLXWQKBgQDerjcKTK+QWzfGReV4
AkreSC64veekfNQ1enESQOTJVdC3HdXsbRxu37EzBVquDkfcGb5tdg7vkbbGMOGW
bwTNHsuOXS+KRPRa7WScs4+JEEifmE41Y1uXguZVh5jBko5cwpJ7lHr8mdXA2c5V
w/uVDIFLIq51Sx5yYLwqfNxbGQKBgQDC+VbnrdEbW9Eno5XANHjwKjp7oS1mSOie
M9mIzyWbth4AdIdfrwCRNCb13dfUIw511IacEbnJUoy+oy0NPjggL8q+fXGeikTl
MAnI31Pj7NH3Muk/dhXBRxSL0dx5nAo2bT12FZEhjrDoa/C9bxL2awzPwnwsovJ1
vfX7PpHuaQKBgH4kiG9gM4/97GF4FN5fxhOXJkhm44LNZ9UHkGf7tN7MqxggYZ+1
y4aPVy0E2nKBCnoHZ1VQrHNPww8Qf6odJ8YerMbvyM918kpT8kvGeAf33nvx5lPd
/fOdJmfLEWCOafDoE9zHpsfTSUAe4gC5rZmoZNGwSs2NCSlX3R/gbV95AoGANOz2
OEGop6KO7hGrztbvlVIBOhoQdtmHu5objNWeQdx33GvFa6XXo5LimI81zTIO9NFS
EP+GzS2JYx5sVlHzbllK0da/hufFt+kIXuywmwhoHpBFXKKzWRnwa9v121UOOKQC
sRE9qjxPrWfPm7yRCy8X9TW3+23oHyoHocHkXzECgYEAouUOjq2ek3HXIC69qyCI
eDusFVvbBsi+nk2xpqleDQ0hG0P4LYui/JJltSzHo0iBLum/2k29BALjRZ5HP2lK
FYydhNbrVWebBEqLyzfVw7MhAEtISMC4HQ4Mx/0KrJemyXkkUii0I7/qL4Cwrift
xa3Fu+X0lZ5FKZuY/7LAKUQ=
-----END PRIVATE KEY-----
`

func newTestPKI(t testing.TB, clientSubject pkix.Name) testPKI {
	t.Helper()
	b, _ := pem.Decode([]byte(testCAKey))
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caPriv := k.(*rsa.PrivateKey)
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
		caKey:      testCAKey,
		clientCert: certPEM(clientDER),
		clientKey:  keyPEM(t, clientPriv),
	}
}

// nodeSubject is what the Node authorizer expects of testNode's kubelet.
var nodeSubject = pkix.Name{CommonName: "system:node:" + testNode, Organization: []string{"system:nodes"}}

func certPEM(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func keyPEM(t testing.TB, k any) string {
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

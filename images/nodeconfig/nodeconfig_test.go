package nodeconfig

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// testPEM returns a self-signed certificate (not a CA) and its key, PEM encoded.
func testPEM(t *testing.T) (cert, key string) {
	t.Helper()
	return testCA(t, false)
}

const (
	token   = "abcdef.0123456789abcdef"
	hash    = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	certKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

const nodeYAML = `apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata: {name: node-7}
spec:
  role: node
  cluster:
    name: prod
    apiServer: https://10.0.0.10:6443
    podCIDR: 10.244.0.0/16
  kubelet:
    nodeLabels: {topology.kubernetes.io/zone: a, pool: gpu}
    registerWithTaints: ["dedicated=gpu:NoSchedule", "spot:PreferNoSchedule"]
    extraArgs: {v: "2"}
    maxPods: 110
  credentials:
    bootstrapToken: abcdef.0123456789abcdef
    caCertHashes: [sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
`

func TestParseValid(t *testing.T) {
	c, err := Parse("test", []byte(nodeYAML))
	if err != nil {
		t.Fatal(err)
	}
	want := NodeConfig{
		APIVersion: APIVersion, Kind: Kind, Metadata: ObjectMeta{Name: "node-7"},
		Spec: Spec{
			Role:    RoleNode,
			Cluster: Cluster{Name: "prod", APIServer: "https://10.0.0.10:6443", PodCIDR: "10.244.0.0/16"},
			Kubelet: Kubelet{
				NodeLabels:         map[string]string{"topology.kubernetes.io/zone": "a", "pool": "gpu"},
				RegisterWithTaints: []string{"dedicated=gpu:NoSchedule", "spot:PreferNoSchedule"},
				ExtraArgs:          map[string]string{"v": "2"},
				MaxPods:            110,
			},
			Credentials: &Credentials{BootstrapToken: token, CACertHashes: []string{hash}},
		},
	}
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("got %+v\nwant %+v", *c, want)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Spec.Cluster.DNSDomain != "cluster.local" || c.Spec.Cluster.ServiceCIDR != "10.96.0.0/12" ||
		!reflect.DeepEqual(c.Spec.Cluster.ClusterDNS, []string{"10.96.0.10"}) {
		t.Fatalf("defaults: %+v", c.Spec.Cluster)
	}
}

func TestParseJSON(t *testing.T) { // the metadata server may answer JSON: a YAML subset
	doc := `{"apiVersion":"imgctl/v1alpha1","kind":"NodeConfig","spec":{"role":"master","cluster":{"name":"prod"}}}`
	c, err := Parse("json", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseErrors(t *testing.T) {
	head := "apiVersion: imgctl/v1alpha1\nkind: NodeConfig\n"
	tests := []struct {
		name, doc string
		want      []string // substrings of the error, each in it
	}{
		{"unknown role", head + "spec: {role: worker}", []string{`user-data: spec.role: unknown role "worker" (expected master, masterFollower or node)`}},
		{"missing role", head + "spec: {}", []string{"user-data: spec.role: missing (expected master, masterFollower or node)"}},
		{"unknown field", head + "spec: {role: node, cluster: {apiserver: x}}", []string{
			"user-data: spec.cluster.apiserver: unknown field (expected name, apiServer, dnsDomain, serviceCIDR, podCIDR, clusterDNS, caCertificate, adminKubeconfig or etcd)"}},
		{"unknown top field", head + "status: {}\nspec: {role: node}", []string{"user-data: status: unknown field (expected apiVersion, kind, metadata or spec)"}},
		{"several problems", head + "spec: {role: node, foo: 1, kubelet: {maxPods: many, bar: 2}}", []string{
			"spec.foo: unknown field", `spec.kubelet.maxPods: expected an integer, got str "many"`, "spec.kubelet.bar: unknown field"}},
		{"duplicate", head + "spec: {role: node, role: master}", []string{"spec.role: duplicate field"}},
		{"wrong shape", head + "spec: {role: node, cluster: [a]}", []string{"spec.cluster: expected a mapping, got a list"}},
		{"list expected", head + "spec: {role: node, cluster: {clusterDNS: 10.96.0.10}}", []string{"spec.cluster.clusterDNS: expected a list"}},
		{"string expected", head + "spec: {role: node, cluster: {name: {a: b}}}", []string{"spec.cluster.name: expected a string, got a mapping"}},
		{"label value not string", head + "spec: {role: node, kubelet: {nodeLabels: {a: [b]}}}", []string{"spec.kubelet.nodeLabels.a: expected a string, got a list"}},
		{"int range", head + "spec: {role: node, kubelet: {maxPods: 99999999999}}", []string{"spec.kubelet.maxPods: integer 99999999999 out of range"}},
		{"apiVersion", "apiVersion: v1\nkind: NodeConfig\nspec: {role: node}", []string{`apiVersion: got "v1" (expected imgctl/v1alpha1)`}},
		{"kind", "apiVersion: imgctl/v1alpha1\nkind: Pod\nspec: {role: node}", []string{`kind: got "Pod" (expected NodeConfig)`}},
		{"not a mapping", "- a\n- b", []string{"user-data: (document): expected a mapping, got a list"}},
		{"empty", "", []string{"user-data: empty document"}},
		{"two docs", head + "spec: {role: node}\n---\n" + head, []string{"more than one YAML document"}},
		{"syntax", head + "spec: {role: node", []string{"user-data: yaml:"}},
		{"bad value", head + "spec: {role: node, cluster: {serviceCIDR: 10.96.0.1/12}}", []string{`spec.cluster.serviceCIDR: "10.96.0.1/12" has host bits set (expected 10.96.0.0/12)`}},
		{"cloud-init user data", "#!/bin/sh\necho hi\n", []string{"user-data: (document): expected a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("user-data", []byte(tt.doc))
			if err == nil {
				t.Fatalf("no error, got %+v", c)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nx0: &a0 [a, a, a, a, a, a, a, a, a]\n")
	for i := 1; i < 12; i++ {
		fmt.Fprintf(&b, "x%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	b.WriteString("spec: {role: node, kubelet: {registerWithTaints: *a11}}\n")
	start := time.Now()
	_, err := Parse("bomb", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "x11: unknown field") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestParseTooManyValues(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec:\n  role: node\n  kubelet:\n    nodeLabels:\n")
	for i := range maxNodes {
		fmt.Fprintf(&b, "      l%d: v\n", i)
	}
	_, err := Parse("big", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "document too large") || strings.Count(err.Error(), "\n") != 0 {
		t.Fatalf("got %.300v", err)
	}
}

func TestParseFieldError(t *testing.T) {
	_, err := Parse("x", []byte("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec: {role: worker}"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.role" {
		t.Fatalf("got %v, want a *FieldError for spec.role", err)
	}
}

func TestParseAliasesAndNull(t *testing.T) {
	doc := "apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec:\n  role: master\n  cluster: {name: &n prod}\n  kubelet: {nodeLabels: {cluster: *n}, extraArgs: ~}\n"
	c, err := Parse("x", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.Spec.Kubelet.NodeLabels["cluster"] != "prod" {
		t.Fatalf("alias not followed: %+v", c.Spec.Kubelet)
	}
}

// valid returns a valid config for role, for the Validate table to break.
func valid(t *testing.T, role Role) *NodeConfig {
	c := &NodeConfig{APIVersion: APIVersion, Kind: Kind, Metadata: ObjectMeta{Name: "n1"},
		Spec: Spec{Role: role, Cluster: Cluster{Name: "prod", APIServer: "https://10.0.0.10:6443"}}}
	switch role {
	case RoleNode:
		c.Spec.Credentials = &Credentials{BootstrapToken: token, CACertHashes: []string{hash}}
	case RoleMasterFollower:
		c.Spec.Credentials = &Credentials{BootstrapToken: token, CACertHashes: []string{hash}, CertificateKey: certKey}
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("base config for %s: %v", role, err)
	}
	return c
}

func TestValidate(t *testing.T) {
	cert, key := testPEM(t)
	cert2, key2 := testPEM(t)
	ca, caKey := testCA(t, true)
	tests := []struct {
		name   string
		role   Role
		modify func(c *NodeConfig)
		want   []string // empty: valid
	}{
		{"node token", RoleNode, func(*NodeConfig) {}, nil},
		{"node client cert", RoleNode, func(c *NodeConfig) {
			c.Spec.Credentials = &Credentials{ClientCertificate: cert, ClientKey: key}
			c.Spec.Cluster.CACertificate = cert2
		}, nil},
		{"node no credentials", RoleNode, func(c *NodeConfig) { c.Spec.Credentials = nil }, []string{
			"spec.credentials: role node needs bootstrapToken and caCertHashes, or clientCertificate, clientKey and spec.cluster.caCertificate"}},
		{"node token without hash", RoleNode, func(c *NodeConfig) { c.Spec.Credentials.CACertHashes = nil }, []string{
			"spec.credentials.caCertHashes: required for role node"}},
		{"node hash without token", RoleNode, func(c *NodeConfig) { c.Spec.Credentials.BootstrapToken = "" }, []string{
			"spec.credentials.bootstrapToken: required for role node"}},
		{"node cert without key and CA", RoleNode, func(c *NodeConfig) { c.Spec.Credentials = &Credentials{ClientCertificate: cert} }, []string{
			"spec.credentials.clientKey: required for role node", "spec.cluster.caCertificate: required for role node"}},
		{"node mismatched key", RoleNode, func(c *NodeConfig) {
			c.Spec.Credentials = &Credentials{ClientCertificate: cert, ClientKey: key2}
			c.Spec.Cluster.CACertificate = cert2
		}, []string{"spec.credentials.clientCertificate: not a certificate matching clientKey"}},
		{"node no apiServer", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.APIServer = "" }, []string{"spec.cluster.apiServer: required for role node"}},
		{"node caKey", RoleNode, func(c *NodeConfig) { c.Spec.Credentials.CAKey = key }, []string{
			"spec.credentials.caKey: only allowed for role master (role is node)"}},
		{"follower", RoleMasterFollower, func(*NodeConfig) {}, nil},
		{"follower missing all", RoleMasterFollower, func(c *NodeConfig) { c.Spec.Credentials = nil; c.Spec.Cluster.APIServer = "" }, []string{
			"spec.cluster.apiServer: required for role masterFollower",
			"spec.credentials.bootstrapToken: required for role masterFollower",
			"spec.credentials.caCertHashes: required for role masterFollower",
			"spec.credentials.certificateKey: required for role masterFollower"}},
		{"follower bad certificateKey", RoleMasterFollower, func(c *NodeConfig) { c.Spec.Credentials.CertificateKey = "xyz" }, []string{
			"spec.credentials.certificateKey: malformed"}},
		{"follower client cert", RoleMasterFollower, func(c *NodeConfig) { c.Spec.Credentials.ClientCertificate = cert }, []string{
			"spec.credentials.clientCertificate: only allowed for role node"}},
		{"master", RoleMaster, func(*NodeConfig) {}, nil},
		{"master without apiServer", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.APIServer = "" }, nil},
		{"master with CA", RoleMaster, func(c *NodeConfig) {
			c.Spec.Cluster.CACertificate = ca
			c.Spec.Credentials = &Credentials{CAKey: caKey}
		}, nil},
		{"master caKey without cert", RoleMaster, func(c *NodeConfig) { c.Spec.Credentials = &Credentials{CAKey: key} }, []string{
			"spec.cluster.caCertificate: required for role master"}},
		{"master no name", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.Name = "" }, []string{"spec.cluster.name: required for role master"}},
		{"master token and certificateKey", RoleMaster, func(c *NodeConfig) {
			c.Spec.Credentials = &Credentials{BootstrapToken: token, CertificateKey: certKey}
		}, nil},
		{"node certificateKey", RoleNode, func(c *NodeConfig) { c.Spec.Credentials.CertificateKey = certKey }, []string{
			"spec.credentials.certificateKey: only allowed for roles master and masterFollower (role is node)"}},
		{"bad caKey", RoleMaster, func(c *NodeConfig) {
			c.Spec.Cluster.CACertificate = cert
			c.Spec.Credentials = &Credentials{CAKey: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
		}, []string{"spec.credentials.caKey: bad private key"}},
		{"unknown role", RoleNode, func(c *NodeConfig) { c.Spec.Role = "worker" }, []string{`spec.role: unknown role "worker"`}},
		{"master adminKubeconfig", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "/root/.kube/config" }, nil},
		{"follower adminKubeconfig", RoleMasterFollower, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "/etc/kubernetes/admin-2.conf" }, nil},
		{"node adminKubeconfig", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "/root/.kube/config" }, []string{
			"spec.cluster.adminKubeconfig: only allowed for roles master and masterFollower (role is node)"}},
		{"relative adminKubeconfig", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "kube/config" }, []string{
			`spec.cluster.adminKubeconfig: "kube/config" is not an absolute file path (expected e.g. /root/.kube/config)`}},
		{"unclean adminKubeconfig", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "/root/../etc/x/" }, []string{
			`spec.cluster.adminKubeconfig: "/root/../etc/x/" is not a clean absolute file path (expected /etc/x)`}},
		{"root adminKubeconfig", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "/" }, []string{
			`spec.cluster.adminKubeconfig: "/" is not an absolute file path`}},
		{"control adminKubeconfig", RoleMaster, func(c *NodeConfig) { c.Spec.Cluster.AdminKubeconfig = "/root/a\nb" }, []string{
			`spec.cluster.adminKubeconfig: "/root/a\nb" contains a control character`}},
		{"apiVersion and kind", RoleNode, func(c *NodeConfig) { c.APIVersion, c.Kind = "", "" }, []string{"apiVersion: got", "kind: got"}},
		{"bad name", RoleNode, func(c *NodeConfig) { c.Metadata.Name = "Node_7" }, []string{`metadata.name: "Node_7" is not a DNS-1123 subdomain`}},
		{"fqdn name", RoleNode, func(c *NodeConfig) { c.Metadata.Name = "ip-10-0-0-7.ec2.internal" }, nil},
		{"bad cluster name", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.Name = "a.b" }, []string{"spec.cluster.name:"}},
		{"http apiServer", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.APIServer = "http://10.0.0.1:6443" }, []string{`spec.cluster.apiServer: "http://10.0.0.1:6443": expected https://HOST[:PORT]`}},
		{"apiServer path", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.APIServer = "https://a:6443/x" }, []string{"without path"}},
		{"apiServer port", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.APIServer = "https://a:99999" }, []string{"bad port"}},
		{"apiServer no port", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.APIServer = "https://api.prod.example" }, nil},
		{"dnsDomain", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.DNSDomain = "Cluster_Local" }, []string{"spec.cluster.dnsDomain:"}},
		{"serviceCIDR", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.ServiceCIDR = "10.96/12" }, []string{`spec.cluster.serviceCIDR: "10.96/12" is not a CIDR`}},
		{"podCIDR overlap", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.PodCIDR = "10.96.0.0/16" }, []string{"spec.cluster.podCIDR: 10.96.0.0/16 overlaps serviceCIDR"}},
		{"podCIDR bad", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.PodCIDR = "x" }, []string{"spec.cluster.podCIDR:"}},
		{"clusterDNS bad", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.ClusterDNS = []string{"10.96.0.10", "dns"} }, []string{`spec.cluster.clusterDNS[1]: "dns" is not an IP address`}},
		{"clusterDNS outside", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.ClusterDNS = []string{"8.8.8.8"} }, []string{"spec.cluster.clusterDNS[0]: 8.8.8.8 is outside serviceCIDR 10.96.0.0/12"}},
		{"caCertificate garbage", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.CACertificate = "hello" }, []string{"spec.cluster.caCertificate: no PEM certificate"}},
		{"caCertificate key", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.CACertificate = key }, []string{`spec.cluster.caCertificate: PEM block 1 is "PRIVATE KEY"`}},
		{"caCertificate bundle", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.CACertificate = cert + cert2 }, nil},
		{"caCertificate trailing", RoleNode, func(c *NodeConfig) { c.Spec.Cluster.CACertificate = cert + "junk" }, []string{"trailing data"}},
		{"labels", RoleNode, func(c *NodeConfig) {
			c.Spec.Kubelet.NodeLabels = map[string]string{"Bad/x": "a", "ok": "-bad-", "example.com/ok": "", "a/b/c": "x"}
		}, []string{"spec.kubelet.nodeLabels.Bad/x: bad label key: prefix", "spec.kubelet.nodeLabels.ok: bad label value", "spec.kubelet.nodeLabels.a/b/c: bad label key"}},
		{"taints", RoleNode, func(c *NodeConfig) {
			c.Spec.Kubelet.RegisterWithTaints = []string{"a=b:NoSchedule", "a", "a=b:Never", "-x:NoExecute", "a=!:NoExecute"}
		}, []string{"registerWithTaints[1]: \"a\": expected key[=value]:Effect", "registerWithTaints[2]: \"a=b:Never\": unknown effect",
			"registerWithTaints[3]: \"-x:NoExecute\": bad key", "registerWithTaints[4]: \"a=!:NoExecute\": bad value"}},
		{"extraArgs", RoleNode, func(c *NodeConfig) { c.Spec.Kubelet.ExtraArgs = map[string]string{"--v": "2", "node-ip": "10.0.0.7"} }, []string{
			"spec.kubelet.extraArgs.--v: bad flag name"}},
		{"maxPods", RoleNode, func(c *NodeConfig) { c.Spec.Kubelet.MaxPods = -1 }, []string{"spec.kubelet.maxPods: -1 is negative"}},
		{"token format", RoleNode, func(c *NodeConfig) { c.Spec.Credentials.BootstrapToken = "ABCDEF.0123456789abcdef" }, []string{
			"spec.credentials.bootstrapToken: malformed"}},
		{"hash format", RoleNode, func(c *NodeConfig) { c.Spec.Credentials.CACertHashes = []string{hash, "md5:00"} }, []string{
			`spec.credentials.caCertHashes[1]: "md5:00" is malformed`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid(t, tt.role)
			tt.modify(c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
			if got, want := strings.Count(err.Error(), "\n")+1, len(tt.want); got != want {
				t.Errorf("%d problems reported, want %d: %v", got, want, err)
			}
		})
	}
}

func TestValidateNeverEchoesSecrets(t *testing.T) {
	c := valid(t, RoleMasterFollower)
	c.Spec.Credentials.BootstrapToken = "SECRET.token"
	c.Spec.Credentials.CertificateKey = "SECRETKEY"
	err := c.Validate()
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("got %v", err)
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		name        string
		in          Cluster
		wantDNS     []string
		wantService string
	}{
		{"empty", Cluster{}, []string{"10.96.0.10"}, "10.96.0.0/12"},
		{"custom service CIDR", Cluster{ServiceCIDR: "172.20.0.0/16"}, []string{"172.20.0.10"}, "172.20.0.0/16"},
		{"IPv6", Cluster{ServiceCIDR: "fd00:10:96::/112"}, []string{"fd00:10:96::a"}, "fd00:10:96::/112"},
		{"too small", Cluster{ServiceCIDR: "10.0.0.0/29"}, nil, "10.0.0.0/29"},
		{"malformed", Cluster{ServiceCIDR: "nope"}, nil, "nope"},
		{"given DNS kept", Cluster{ClusterDNS: []string{"10.96.0.53"}}, []string{"10.96.0.53"}, "10.96.0.0/12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &NodeConfig{Spec: Spec{Cluster: tt.in}}
			c.Defaults()
			cl := c.Spec.Cluster
			if !reflect.DeepEqual(cl.ClusterDNS, tt.wantDNS) || cl.ServiceCIDR != tt.wantService || cl.DNSDomain != "cluster.local" {
				t.Fatalf("got %+v", cl)
			}
		})
	}
}

func TestPublicAndMerge(t *testing.T) {
	c, err := Parse("test", []byte(nodeYAML))
	if err != nil {
		t.Fatal(err)
	}
	pub := c.Public()
	if pub.Spec.Credentials != nil {
		t.Fatal("Public kept credentials")
	}
	out, err := yaml.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "credentials") || strings.Contains(string(out), "abcdef.") {
		t.Fatalf("public YAML leaks credentials:\n%s", out)
	}
	// Public is a deep copy.
	pub.Spec.Kubelet.NodeLabels["pool"] = "changed"
	pub.Spec.Kubelet.RegisterWithTaints[0] = "changed"
	if c.Spec.Kubelet.NodeLabels["pool"] != "gpu" || c.Spec.Kubelet.RegisterWithTaints[0] == "changed" {
		t.Fatal("Public shares maps or slices with the original")
	}
	pub = c.Public()
	merged := Merge(pub, *c.Spec.Credentials)
	if !reflect.DeepEqual(merged, *c) {
		t.Fatalf("Merge(Public(c), creds) != c:\n%+v\n%+v", merged, *c)
	}
	merged.Spec.Credentials.CACertHashes[0] = "changed"
	if c.Spec.Credentials.CACertHashes[0] != hash {
		t.Fatal("Merge shares the secret's slices")
	}

	tests := []struct {
		name   string
		public *Credentials
		secret Credentials
		want   *Credentials
	}{
		{"none", nil, Credentials{}, nil},
		{"secret only", nil, Credentials{BootstrapToken: token}, &Credentials{BootstrapToken: token}},
		{"overlay", &Credentials{BootstrapToken: "x", CACertHashes: []string{"a"}}, Credentials{BootstrapToken: token},
			&Credentials{BootstrapToken: token, CACertHashes: []string{"a"}}},
		{"hashes replaced", &Credentials{CACertHashes: []string{"a"}}, Credentials{CACertHashes: []string{"b"}},
			&Credentials{CACertHashes: []string{"b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NodeConfig{Spec: Spec{Credentials: tt.public}}
			got := Merge(p, tt.secret)
			if !reflect.DeepEqual(got.Spec.Credentials, tt.want) {
				t.Fatalf("got %+v want %+v", got.Spec.Credentials, tt.want)
			}
		})
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c, err := Parse("test", []byte(nodeYAML))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse("again", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !reflect.DeepEqual(c, c2) {
		t.Fatalf("round trip changed the config:\n%s", out)
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c3, err := Parse("json", js)
	if err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	if !reflect.DeepEqual(c, c3) {
		t.Fatalf("JSON round trip changed the config:\n%s", js)
	}
	pub := c.Public()
	js, _ = json.Marshal(pub)
	if strings.Contains(string(js), "credentials") {
		t.Fatalf("public JSON has credentials: %s", js)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(nodeYAML))
	if readme, err := os.ReadFile("README.md"); err == nil {
		// The documented examples: every ```yaml block of the README.
		for _, block := range strings.Split(string(readme), "```yaml\n")[1:] {
			f.Add([]byte(block[:strings.Index(block, "```")]))
		}
	} else {
		f.Fatal(err)
	}
	f.Add([]byte(`{"apiVersion":"imgctl/v1alpha1","kind":"NodeConfig","spec":{"role":"node","cluster":{"apiServer":"https://[::1]:6443","serviceCIDR":"fd00::/108"},"credentials":{"bootstrapToken":"abcdef.0123456789abcdef"}}}`))
	f.Add([]byte("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec: {role: master, cluster: {name: a}}"))
	f.Add([]byte("a: &a [*a]"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz: ") {
				t.Fatalf("error does not name the source: %v", err)
			}
			return
		}
		// What Parse accepts survives a YAML and a JSON round trip, credentials included.
		for _, enc := range []func(any) ([]byte, error){yaml.Marshal, json.Marshal} {
			out, err := enc(c)
			if err != nil {
				t.Fatal(err)
			}
			c2, err := Parse("again", out)
			if err != nil {
				t.Fatalf("re-parse: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(c, c2) {
				t.Fatalf("round trip changed the config:\n%s", out)
			}
		}
		// Defaults is idempotent, and Validate's verdict survives a round trip.
		c.Defaults()
		once := c.clone()
		c.Defaults()
		if !reflect.DeepEqual(&once, c) {
			t.Fatalf("Defaults is not idempotent: %+v, then %+v", once, c)
		}
		verr := c.Validate()
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c3, err := Parse("defaulted", out)
		if err != nil {
			t.Fatalf("re-parse of the defaulted config: %v\n%s", err, out)
		}
		if again := c3.Validate(); (verr == nil) != (again == nil) {
			t.Fatalf("Validate = %v, after a round trip %v\n%s", verr, again, out)
		}
		// Public strips exactly the credentials; Merge puts them back.
		pub := c.Public()
		if pub.Spec.Credentials != nil {
			t.Fatal("Public kept credentials")
		}
		var cr Credentials
		if c.Spec.Credentials != nil {
			cr = *c.Spec.Credentials
		}
		if m := Merge(pub, cr); !reflect.DeepEqual(m.Public(), pub) || m.Spec.Credentials.IsZero() != c.Spec.Credentials.IsZero() {
			t.Fatalf("Merge(Public(c), credentials) differs from c: %+v", m)
		}
	})
}

func TestCheckNodeName(t *testing.T) {
	for _, n := range []string{"node-1", "a", "ip-10-0-0-7.ec2.internal", "0", strings.Repeat("a", 63), strings.Repeat("a.", 31) + "bc"} {
		if err := CheckNodeName(n); err != nil {
			t.Errorf("CheckNodeName(%q) = %v", n, err)
		}
	}
	for n, want := range map[string]string{
		"":                              "not a DNS-1123 subdomain",
		"../x":                          "not a DNS-1123 subdomain",
		"a/b":                           "not a DNS-1123 subdomain",
		"a b":                           "not a DNS-1123 subdomain",
		"-x":                            "not a DNS-1123 subdomain",
		"x-":                            "not a DNS-1123 subdomain",
		"a..b":                          "not a DNS-1123 subdomain",
		".a":                            "not a DNS-1123 subdomain",
		"Node-1":                        "not a DNS-1123 subdomain",
		"node_1":                        "not a DNS-1123 subdomain",
		"a\nb":                          "not a DNS-1123 subdomain",
		strings.Repeat("a", 64):         "not a DNS-1123 subdomain", // a label of 64
		strings.Repeat("a", 300):        "not a DNS-1123 subdomain",
		strings.Repeat("a.", 32) + "b":  "65 characters: the node name becomes the host name, at most 64",
		strings.Repeat("ab.", 40) + "c": "121 characters",
	} {
		if err := CheckNodeName(n); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckNodeName(%q) = %v, want %q", n, err, want)
		}
	}
}

func TestDecodeNode(t *testing.T) {
	node := func(src string) *yaml.Node {
		t.Helper()
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
			t.Fatal(err)
		}
		return doc.Content[0]
	}
	var s Spec
	if probs := DecodeNode("config", node("cluster: {name: prod}\nkubelet: {maxPods: 20}\n"), &s); len(probs) > 0 {
		t.Fatalf("DecodeNode: %v", probs)
	}
	if s.Cluster.Name != "prod" || s.Kubelet.MaxPods != 20 {
		t.Errorf("DecodeNode decoded %+v", s)
	}
	var s2 Spec
	probs := DecodeNode("machines[1].config", node("cluster: {nmae: x}\nkubelet: {maxPods: many}\n"), &s2)
	var got []string
	for _, p := range probs {
		got = append(got, p.Error())
	}
	want := []string{
		"machines[1].config.cluster.nmae: unknown field (expected name, apiServer, dnsDomain, serviceCIDR, podCIDR, clusterDNS, caCertificate, adminKubeconfig or etcd)",
		`machines[1].config.kubelet.maxPods: expected an integer, got str "many"`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeNode problems:\n got %q\nwant %q", got, want)
	}
	if s2.Cluster.Name != "" {
		t.Errorf("DecodeNode decoded despite problems: %+v", s2)
	}
	var c Credentials
	if probs := DecodeNode("secret", node("bootstrapToken: abcdef.0123456789abcdef\n"), &c); len(probs) > 0 || c.BootstrapToken == "" {
		t.Errorf("DecodeNode(Credentials) = %v, %+v", probs, c)
	}
	if probs := DecodeNode("x", node("a: b\n"), c); len(probs) != 1 || !strings.Contains(probs[0].Error(), "non-nil pointer") {
		t.Errorf("DecodeNode(non-pointer) = %v", probs)
	}
}

// TestValidateCAKey checks what kubeadm init does with a master's CA at boot, at validation: the
// key must be one kubeadm loads (RSA or ECDSA), match the first certificate of caCertificate
// (the one kubeadm reads from ca.crt) and that certificate must be a CA.
func TestValidateCAKey(t *testing.T) {
	ca, caKey := testCA(t, true)
	other, _ := testCA(t, true)
	leaf, leafKey := testCA(t, false)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	edPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}))
	tests := []struct {
		name, cert, key string
		want            string // "": valid
	}{
		{"matching", ca, caKey, ""},
		{"bundle, first matches", ca + other, caKey, ""},
		{"another CA's key", other, caKey, "spec.credentials.caKey: does not match the first certificate of spec.cluster.caCertificate (kubeadm uses that one)"},
		{"bundle, second matches", other + ca, caKey, "spec.credentials.caKey: does not match the first certificate"},
		{"ed25519", ca, edPEM, "spec.credentials.caKey: an Ed25519 key: kubeadm uses RSA or ECDSA CA keys"},
		{"not a CA", leaf, leafKey, "spec.cluster.caCertificate: the first certificate is not a CA (basicConstraints CA:TRUE): kubeadm refuses it as the cluster CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid(t, RoleMaster)
			c.Spec.Cluster.CACertificate = tt.cert
			c.Spec.Credentials = &Credentials{CAKey: tt.key}
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want %q", err, tt.want)
			case err != nil && strings.Contains(err.Error(), "PRIVATE"):
				t.Fatalf("error echoes the key: %v", err)
			}
		})
	}
}

// testCA returns a self-signed certificate (a CA or not) and its PKCS#8 key, PEM encoded.
func testCA(t *testing.T, isCA bool) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		BasicConstraintsValid: true, IsCA: isCA, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

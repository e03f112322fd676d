package render

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenVersions is one Kubernetes version per kubeadm configuration API version.
var goldenVersions = []string{"1.21.13", "1.25.16", "1.31.4"}

// privateKeyRE matches PEM private keys: the golden files leave them out (the fixtures are fake,
// but committed key material trips secret scanners); TestCertNodeFiles and TestMasterCA check
// those files byte for byte instead.
var privateKeyRE = regexp.MustCompile(`(?s)-----BEGIN ([A-Z ]*)PRIVATE KEY-----\n.*?-----END ([A-Z ]*)PRIVATE KEY-----\n`)

// formatPlan renders a plan as one reviewable text: the command, then every file with its mode.
func formatPlan(p *Plan) string {
	var b strings.Builder
	cmd := "(none: start kubelet)"
	if p.Command != nil {
		cmd = strings.Join(p.Command, " ")
	}
	fmt.Fprintf(&b, "command: %s\n", cmd)
	for _, f := range p.Files {
		data := privateKeyRE.ReplaceAllString(string(f.Data), "(${1}PRIVATE KEY of the test fixtures)\n")
		fmt.Fprintf(&b, "-- %s %04o --\n%s", f.Path, f.Mode.Perm(), data)
	}
	return b.String()
}

// TestGolden renders every role at one version of each kubeadm API family and compares every
// file and the command with testdata/ROLE-VERSION.golden (go test -update rewrites them).
func TestGolden(t *testing.T) {
	for _, c := range testCases {
		for _, v := range goldenVersions {
			t.Run(c+"/"+v, func(t *testing.T) {
				got := formatPlan(mustRender(t, testInput(t, c, v)))
				path := filepath.Join("testdata", c+"-"+v+".golden")
				if *update {
					if err := os.MkdirAll("testdata", 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test -update to create it)", err)
				}
				if got != string(want) {
					t.Errorf("%s differs (go test -update rewrites it):\n%s", path, firstDiff(string(want), got))
				}
			})
		}
	}
}

// firstDiff describes the first line where want and got differ.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  want %q\n  got  %q", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}

func TestPlanShape(t *testing.T) {
	wantCmd := map[string][]string{
		caseMaster:         {"kubeadm", "init", "--config", KubeadmConfigPath, "--upload-certs"},
		caseMasterFollower: {"kubeadm", "join", "--config", KubeadmConfigPath},
		caseNodeToken:      {"kubeadm", "join", "--config", KubeadmConfigPath},
		caseNodeCert:       nil,
	}
	wantPaths := map[string][]string{
		caseMaster:         {CrictlConfigPath, CACertPath, CAKeyPath, ContainerdConfigPath, KubeadmConfigPath},
		caseMasterFollower: {CrictlConfigPath, ContainerdConfigPath, KubeadmConfigPath},
		caseNodeToken:      {CrictlConfigPath, ContainerdConfigPath, KubeadmConfigPath},
		caseNodeCert: {KubeletExtraArgsPath, CrictlConfigPath, ContainerdConfigPath, CACertPath, KubeletKubeconfigPath,
			KubeletClientPath, KubeletConfigPath, KubeletFlagsPath},
	}
	pki := newTestPKI(t, nodeSubject)
	secrets := []string{testToken, testCertKey, pki.caKey, pki.clientKey}
	for _, c := range testCases {
		t.Run(c, func(t *testing.T) {
			in := testInput(t, c, "1.21.13")
			p := mustRender(t, in)
			if !slices.Equal(p.Command, wantCmd[c]) {
				t.Errorf("Command = %q, want %q", p.Command, wantCmd[c])
			}
			var paths []string
			for _, f := range p.Files {
				paths = append(paths, f.Path)
				if !filepath.IsAbs(f.Path) {
					t.Errorf("%s is not absolute", f.Path)
				}
				for _, s := range secrets {
					if strings.Contains(string(f.Data), strings.TrimSpace(s)) && f.Mode.Perm() != 0o600 {
						t.Errorf("%s holds a secret but has mode %04o (want 0600)", f.Path, f.Mode.Perm())
					}
				}
				if f.Mode.Perm()&0o022 != 0 || f.Mode&^0o777 != 0 {
					t.Errorf("%s: mode %v is group/other writable or not a plain file mode", f.Path, f.Mode)
				}
			}
			if !slices.IsSorted(paths) {
				t.Errorf("files are not sorted by path: %q", paths)
			}
			if want := slices.Sorted(slices.Values(wantPaths[c])); !slices.Equal(slices.Sorted(slices.Values(paths)), want) {
				t.Errorf("paths = %q, want %q", paths, want)
			}
		})
	}
}

// envFlags parses NAME="--a=b --c=d" from an environment file into flag name → value.
func envFlags(t *testing.T, data, name string) map[string]string {
	t.Helper()
	for line := range strings.SplitSeq(data, "\n") {
		v, ok := strings.CutPrefix(line, name+"=")
		if !ok {
			continue
		}
		v, err := unquote(v)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		flags := map[string]string{}
		for f := range strings.FieldsSeq(v) {
			n, val, ok := strings.Cut(strings.TrimPrefix(f, "--"), "=")
			if !ok || !strings.HasPrefix(f, "--") {
				t.Fatalf("%s: %q is not --name=value", name, f)
			}
			if _, dup := flags[n]; dup {
				t.Fatalf("%s: --%s twice", name, n)
			}
			flags[n] = val
		}
		return flags
	}
	t.Fatalf("no %s= line in\n%s", name, data)
	return nil
}

func unquote(s string) (string, error) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", fmt.Errorf("value %s is not double-quoted", s)
	}
	return s[1 : len(s)-1], nil
}

// TestCertNodeVersionGates checks which kubelet settings are flags and which config fields, by
// version, for a node that starts its own kubelet.
func TestCertNodeVersionGates(t *testing.T) {
	for _, tc := range []struct {
		v                            string
		runtime, endpointFlag, infra bool // flags present
		endpointField                bool // containerRuntimeEndpoint in config.yaml
	}{
		{"1.21.13", true, true, true, false},
		{"1.23.17", true, true, true, false},
		{"1.24.0", false, true, true, false},
		{"1.26.15", false, true, true, false},
		{"1.27.0", false, false, true, true},
		{"1.34.2", false, false, true, true},
		{"1.35.0", false, false, false, true},
	} {
		t.Run(tc.v, func(t *testing.T) {
			p := mustRender(t, testInput(t, caseNodeCert, tc.v))
			flags := envFlags(t, fileData(t, p, KubeletFlagsPath), "KUBELET_KUBEADM_ARGS")
			check := func(name string, want bool, value string) {
				got, ok := flags[name]
				if ok != want || (ok && got != value) {
					t.Errorf("--%s: present=%v value=%q; want present=%v value=%q", name, ok, got, want, value)
				}
			}
			check("container-runtime", tc.runtime, "remote")
			check("container-runtime-endpoint", tc.endpointFlag, ContainerdSocket)
			check("pod-infra-container-image", tc.infra, sandboxOf(t, tc.v))
			check("hostname-override", true, testNode)
			check("register-node", true, "true")
			check("node-labels", true, "pool=gpu,topology.kubernetes.io/zone=eu-west-1a")
			check("register-with-taints", true, "dedicated=gpu:NoSchedule,spot:PreferNoSchedule")
			if len(flags) != 4+btoi(tc.runtime)+btoi(tc.endpointFlag)+btoi(tc.infra) {
				t.Errorf("unexpected flags: %v", flags)
			}

			kc := kubeletConfigOf(t, fileData(t, p, KubeletConfigPath))
			if got := kc.ContainerRuntimeEndpoint != ""; got != tc.endpointField {
				t.Errorf("containerRuntimeEndpoint = %q, want set=%v", kc.ContainerRuntimeEndpoint, tc.endpointField)
			}
			extra := envFlags(t, fileData(t, p, KubeletExtraArgsPath), "KUBELET_EXTRA_ARGS")
			if len(extra) != 2 || extra["v"] != "2" || extra["node-ip"] != "10.0.0.21" {
				t.Errorf("KUBELET_EXTRA_ARGS = %v, want v=2 node-ip=10.0.0.21", extra)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// kubeletConfigOf decodes a KubeletConfiguration strictly into the real type.
func kubeletConfigOf(t *testing.T, data string) *kubeletv1beta1.KubeletConfiguration {
	t.Helper()
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.UnmarshalStrict([]byte(data), &kc); err != nil {
		t.Fatalf("KubeletConfiguration does not decode strictly: %v\n%s", err, data)
	}
	return &kc
}

// TestKubeletConfiguration checks the KubeletConfiguration decodes strictly into the real type
// with the intended values, and carries no zero-value noise.
func TestKubeletConfiguration(t *testing.T) {
	for _, v := range []string{"1.21.13", "1.31.4"} {
		t.Run(v, func(t *testing.T) {
			data := fileData(t, mustRender(t, testInput(t, caseNodeCert, v)), KubeletConfigPath)
			kc := kubeletConfigOf(t, data)
			if kc.APIVersion != "kubelet.config.k8s.io/v1beta1" || kc.Kind != "KubeletConfiguration" {
				t.Errorf("apiVersion/kind = %s/%s", kc.APIVersion, kc.Kind)
			}
			checks := []struct {
				name string
				ok   bool
			}{
				{"cgroupDriver systemd", kc.CgroupDriver == "systemd"},
				{"anonymous auth off", kc.Authentication.Anonymous.Enabled != nil && !*kc.Authentication.Anonymous.Enabled},
				{"webhook auth on", kc.Authentication.Webhook.Enabled != nil && *kc.Authentication.Webhook.Enabled},
				{"clientCAFile", kc.Authentication.X509.ClientCAFile == CACertPath},
				{"authorization Webhook", kc.Authorization.Mode == kubeletv1beta1.KubeletAuthorizationModeWebhook},
				{"clusterDNS", slices.Equal(kc.ClusterDNS, []string{"10.96.0.10"})},
				{"clusterDomain", kc.ClusterDomain == "cluster.local"},
				{"staticPodPath", kc.StaticPodPath == StaticPodPath},
				{"healthz", kc.HealthzBindAddress == "127.0.0.1" && kc.HealthzPort != nil && *kc.HealthzPort == 10248},
				{"rotateCertificates", kc.RotateCertificates},
				{"maxPods", kc.MaxPods == 64},
				{"resolvConf", kc.ResolverConfig != nil && *kc.ResolverConfig == "/etc/resolv.conf"},
				// Graceful node shutdown (on by default from 1.21): an update's reboot stops pods cleanly.
				{"shutdownGracePeriod 30s", kc.ShutdownGracePeriod.Duration == 30*time.Second},
				{"shutdownGracePeriodCriticalPods 10s", kc.ShutdownGracePeriodCriticalPods.Duration == 10*time.Second},
			}
			for _, c := range checks {
				if !c.ok {
					t.Errorf("%s: not as expected in\n%s", c.name, data)
				}
			}
			var m map[string]any
			if err := yaml.Unmarshal([]byte(data), &m); err != nil {
				t.Fatal(err)
			}
			keys := slices.Sorted(func(yield func(string) bool) {
				for k := range m {
					if !yield(k) {
						return
					}
				}
			})
			want := []string{"apiVersion", "authentication", "authorization", "cgroupDriver", "clusterDNS",
				"clusterDomain", "healthzBindAddress", "healthzPort", "kind", "maxPods", "resolvConf",
				"rotateCertificates", "shutdownGracePeriod", "shutdownGracePeriodCriticalPods", "staticPodPath"}
			if v == "1.31.4" {
				want = append(want, "containerRuntimeEndpoint")
				slices.Sort(want)
			}
			if !slices.Equal(keys, want) {
				t.Errorf("top-level fields = %q, want %q", keys, want)
			}
			for _, noise := range []string{"{}", ": 0s", "null", `""`, "creationTimestamp"} {
				if strings.Contains(data, noise) {
					t.Errorf("zero-value noise %q in\n%s", noise, data)
				}
			}
		})
	}
	// A master's KubeletConfiguration is cluster-wide: maxPods stays a per-node flag.
	data := fileData(t, mustRender(t, testInput(t, caseMaster, "1.21.13")), KubeadmConfigPath)
	docs := strings.Split(data, "\n---\n")
	if len(docs) != 3 {
		t.Fatalf("master kubeadm.yaml has %d documents, want 3", len(docs))
	}
	if kc := kubeletConfigOf(t, docs[2]); kc.MaxPods != 0 || kc.CgroupDriver != "systemd" {
		t.Errorf("master KubeletConfiguration: maxPods %d (want unset), cgroupDriver %q", kc.MaxPods, kc.CgroupDriver)
	}
}

// kubeadmDocs splits a kubeadm configuration file into its documents, decoded.
func kubeadmDocs(t *testing.T, data string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for d := range strings.SplitSeq(data, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("%v in\n%s", err, d)
		}
		out[fmt.Sprint(m["kind"])] = m
	}
	return out
}

// get walks a decoded document by keys.
func get(m any, keys ...string) any {
	for _, k := range keys {
		mm, ok := m.(map[string]any)
		if !ok {
			return nil
		}
		m = mm[k]
	}
	return m
}

// TestKubeadmShapes checks the fields that differ by role and by kubeadm API version.
func TestKubeadmShapes(t *testing.T) {
	for _, v := range goldenVersions {
		kv, err := kubeversion.Parse(v)
		if err != nil {
			t.Fatal(err)
		}
		apiVersion := kv.KubeadmAPIVersion()
		t.Run(v, func(t *testing.T) {
			// kubeletExtraArgs: a map before v1beta4, a list of {name, value} sorted by name from it.
			join := kubeadmDocs(t, fileData(t, mustRender(t, testInput(t, caseNodeToken, v)), KubeadmConfigPath))["JoinConfiguration"]
			wantArgs := [][2]string{{"max-pods", "64"}, {"node-ip", "10.0.0.21"},
				{"node-labels", "pool=gpu,topology.kubernetes.io/zone=eu-west-1a"}, {"v", "2"}}
			args := get(join, "nodeRegistration", "kubeletExtraArgs")
			switch a := args.(type) {
			case map[string]any:
				if apiVersion == kubeversion.KubeadmV1beta4 || len(a) != len(wantArgs) {
					t.Errorf("kubeletExtraArgs = %v for %s", a, apiVersion)
				}
				for _, w := range wantArgs {
					if a[w[0]] != w[1] {
						t.Errorf("kubeletExtraArgs[%s] = %v, want %s", w[0], a[w[0]], w[1])
					}
				}
			case []any:
				if apiVersion != kubeversion.KubeadmV1beta4 || len(a) != len(wantArgs) {
					t.Fatalf("kubeletExtraArgs = %v for %s", a, apiVersion)
				}
				for i, w := range wantArgs {
					if get(a[i], "name") != w[0] || get(a[i], "value") != w[1] {
						t.Errorf("kubeletExtraArgs[%d] = %v, want {name: %s, value: %s}", i, a[i], w[0], w[1])
					}
				}
			default:
				t.Fatalf("kubeletExtraArgs = %#v", args)
			}
			if join["apiVersion"] != apiVersion {
				t.Errorf("apiVersion = %v, want %s", join["apiVersion"], apiVersion)
			}
			if got := get(join, "discovery", "bootstrapToken", "apiServerEndpoint"); got != "10.0.0.10:6443" {
				t.Errorf("apiServerEndpoint = %v", got)
			}
			taints := get(join, "nodeRegistration", "taints").([]any)
			if len(taints) != 2 || get(taints[0], "key") != "dedicated" || get(taints[0], "value") != "gpu" ||
				get(taints[0], "effect") != "NoSchedule" || get(taints[1], "key") != "spot" ||
				get(taints[1], "value") != nil || get(taints[1], "effect") != "PreferNoSchedule" {
				t.Errorf("taints = %v", taints)
			}
			// One join attempt's discovery is bounded: discovery.timeout, v1beta4's timeouts.discovery.
			timeout := []string{"discovery", "timeout"}
			if apiVersion == kubeversion.KubeadmV1beta4 {
				timeout = []string{"timeouts", "discovery"}
			}
			if got := get(join, timeout...); got != "2m0s" {
				t.Errorf("%s = %v, want 2m0s", strings.Join(timeout, "."), got)
			}
			if get(join, "controlPlane") != nil {
				t.Errorf("a worker's JoinConfiguration has controlPlane")
			}

			follower := kubeadmDocs(t, fileData(t, mustRender(t, testInput(t, caseMasterFollower, v)), KubeadmConfigPath))["JoinConfiguration"]
			if get(follower, "controlPlane", "certificateKey") != testCertKey ||
				get(follower, "controlPlane", "localAPIEndpoint", "advertiseAddress") != "192.0.2.11" {
				t.Errorf("masterFollower controlPlane = %v", get(follower, "controlPlane"))
			}
			if get(follower, "nodeRegistration", "taints") != nil {
				t.Errorf("masterFollower without registerWithTaints sets taints (kubeadm's default control-plane taint would be lost)")
			}

			docs := kubeadmDocs(t, fileData(t, mustRender(t, testInput(t, caseMaster, v)), KubeadmConfigPath))
			cc := docs["ClusterConfiguration"]
			for _, c := range []struct {
				keys []string
				want any
			}{
				{[]string{"kubernetesVersion"}, "v" + v},
				{[]string{"clusterName"}, "prod"},
				{[]string{"controlPlaneEndpoint"}, "10.0.0.10:6443"},
				{[]string{"networking", "serviceSubnet"}, "10.96.0.0/12"},
				{[]string{"networking", "podSubnet"}, "10.244.0.0/16"},
				{[]string{"networking", "dnsDomain"}, "cluster.local"},
				{[]string{"apiVersion"}, apiVersion},
			} {
				if got := get(cc, c.keys...); got != c.want {
					t.Errorf("ClusterConfiguration %s = %v, want %v", strings.Join(c.keys, "."), got, c.want)
				}
			}
			ic := docs["InitConfiguration"]
			if get(ic, "localAPIEndpoint", "advertiseAddress") != "192.0.2.11" || get(ic, "nodeRegistration", "name") != testNode ||
				get(ic, "nodeRegistration", "criSocket") != ContainerdSocket || get(ic, "apiVersion") != apiVersion {
				t.Errorf("InitConfiguration = %v", ic)
			}
			if docs["KubeletConfiguration"] == nil {
				t.Errorf("master kubeadm.yaml lacks a KubeletConfiguration")
			}
		})
	}
}

// TestMasterOptional checks a master without CA key, API server or advertise address: kubeadm
// generates the CA, advertises its own address and uses it as the endpoint.
func TestMasterOptional(t *testing.T) {
	in := testInput(t, caseMaster, "1.25.16")
	in.Config.Spec.Credentials = nil
	in.Config.Spec.Cluster.CACertificate = ""
	in.Config.Spec.Cluster.APIServer = ""
	in.Config.Spec.Kubelet = nodeconfig.Kubelet{RegisterWithTaints: []string{"node-role.kubernetes.io/master:NoSchedule"}}
	in.AdvertiseAddress = ""
	p := mustRender(t, in)
	for _, f := range p.Files {
		if f.Path == CACertPath || f.Path == CAKeyPath {
			t.Errorf("%s written without credentials.caKey", f.Path)
		}
	}
	docs := kubeadmDocs(t, fileData(t, p, KubeadmConfigPath))
	if get(docs["ClusterConfiguration"], "controlPlaneEndpoint") != nil {
		t.Errorf("controlPlaneEndpoint set without cluster.apiServer")
	}
	if get(docs["InitConfiguration"], "localAPIEndpoint") != nil {
		t.Errorf("localAPIEndpoint set without AdvertiseAddress")
	}
	if get(docs["InitConfiguration"], "nodeRegistration", "kubeletExtraArgs") != nil {
		t.Errorf("kubeletExtraArgs set without labels, maxPods or extraArgs")
	}
	taints, _ := get(docs["InitConfiguration"], "nodeRegistration", "taints").([]any)
	if len(taints) != 1 || get(taints[0], "key") != "node-role.kubernetes.io/master" || get(taints[0], "value") != nil {
		t.Errorf("taints = %v, want registerWithTaints to replace kubeadm's default", taints)
	}
}

// TestAPIServerEndpoint checks the port default (443, as in the https URL) and IPv6 literals.
func TestAPIServerEndpoint(t *testing.T) {
	for _, tc := range []struct{ url, endpoint string }{
		{"https://api.example.com", "api.example.com:443"},
		{"https://api.example.com/", "api.example.com:443"},
		{"https://[fd00::10]:6443", "[fd00::10]:6443"},
		{"https://[fd00::10]", "[fd00::10]:443"},
	} {
		for _, c := range []string{caseNodeToken, caseNodeCert} {
			in := testInput(t, c, "1.21.13")
			in.Config.Spec.Cluster.APIServer = tc.url
			p := mustRender(t, in)
			if c == caseNodeToken {
				join := kubeadmDocs(t, fileData(t, p, KubeadmConfigPath))["JoinConfiguration"]
				if got := get(join, "discovery", "bootstrapToken", "apiServerEndpoint"); got != tc.endpoint {
					t.Errorf("%s: apiServerEndpoint = %v, want %s", tc.url, got, tc.endpoint)
				}
				continue
			}
			var kc kubeconfig
			if err := yaml.UnmarshalStrict([]byte(fileData(t, p, KubeletKubeconfigPath)), &kc); err != nil {
				t.Fatal(err)
			}
			if got := kc.Clusters[0].Cluster.Server; got != "https://"+tc.endpoint {
				t.Errorf("%s: kubeconfig server = %s, want https://%s", tc.url, got, tc.endpoint)
			}
		}
	}
}

func TestCertNodeFiles(t *testing.T) {
	pki := newTestPKI(t, nodeSubject)
	p := mustRender(t, testInput(t, caseNodeCert, "1.21.13"))
	if got := fileData(t, p, KubeletClientPath); got != pki.clientCert+pki.clientKey {
		t.Errorf("%s is not the certificate followed by its key:\n%s", KubeletClientPath, got)
	}
	if got := fileData(t, p, CACertPath); got != pki.caCert {
		t.Errorf("%s is not cluster.caCertificate", CACertPath)
	}
	var kc kubeconfig
	if err := yaml.UnmarshalStrict([]byte(fileData(t, p, KubeletKubeconfigPath)), &kc); err != nil {
		t.Fatal(err)
	}
	if len(kc.Clusters) != 1 || len(kc.Users) != 1 || len(kc.Contexts) != 1 ||
		kc.CurrentContext != kc.Contexts[0].Name || kc.Contexts[0].Context.Cluster != kc.Clusters[0].Name ||
		kc.Contexts[0].Context.User != kc.Users[0].Name || kc.Clusters[0].Cluster.CertificateAuthority != CACertPath ||
		kc.Users[0].User.ClientCertificate != KubeletClientPath || kc.Users[0].User.ClientKey != KubeletClientPath {
		t.Errorf("kubeconfig does not tie one cluster, user and context together: %+v", kc)
	}
	// Without extraArgs, /etc/default/kubelet still overwrites whatever an earlier boot left.
	in := testInput(t, caseNodeCert, "1.21.13")
	in.Config.Spec.Kubelet = nodeconfig.Kubelet{}
	p = mustRender(t, in)
	if got := envFlags(t, fileData(t, p, KubeletExtraArgsPath), "KUBELET_EXTRA_ARGS"); len(got) != 0 {
		t.Errorf("KUBELET_EXTRA_ARGS = %v, want none", got)
	}
	flags := envFlags(t, fileData(t, p, KubeletFlagsPath), "KUBELET_KUBEADM_ARGS")
	if _, ok := flags["node-labels"]; ok {
		t.Errorf("--node-labels without nodeLabels")
	}
	if _, ok := flags["register-with-taints"]; ok {
		t.Errorf("--register-with-taints without registerWithTaints")
	}
	if strings.Contains(fileData(t, p, KubeletConfigPath), "maxPods") {
		t.Errorf("maxPods set without spec.kubelet.maxPods")
	}
}

func TestMasterCA(t *testing.T) {
	pki := newTestPKI(t, nodeSubject)
	p := mustRender(t, testInput(t, caseMaster, "1.21.13"))
	// The same key, in the form kubeadm writes (TestMasterCAKeyForKubeadm).
	b, _ := pem.Decode([]byte(fileData(t, p, CAKeyPath)))
	if b == nil || b.Type != "RSA PRIVATE KEY" {
		t.Fatalf("%s is not an RSA PRIVATE KEY", CAKeyPath)
	}
	got, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	wb, _ := pem.Decode([]byte(pki.caKey))
	want, err := x509.ParsePKCS8PrivateKey(wb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) {
		t.Errorf("%s is not credentials.caKey", CAKeyPath)
	}
	if got := fileData(t, p, CACertPath); got != pki.caCert {
		t.Errorf("%s is not cluster.caCertificate", CACertPath)
	}
}

// TestMasterCAKeyForKubeadm: the master writes credentials.caKey in the form kubeadm itself
// writes keys: an ECDSA key as SEC1 (EC PRIVATE KEY) and an RSA key as PKCS#1, whatever form the
// NodeConfig gives (openssl writes PKCS#8). kubeadm 1.21 uploads ca.key for the followers as is,
// and their download-certs phase reads an ECDSA key only as SEC1: with a PKCS#8 one, every
// kubeadm join --control-plane failed ("unknown data found in Secret entry"). An Ed25519 key,
// which kubeadm cannot load, is refused.
func TestMasterCAKeyForKubeadm(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ed := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, ed25519.SeedSize))
	block := func(typ string, der []byte, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	pkcs8 := func(k any) string { d, err := x509.MarshalPKCS8PrivateKey(k); return block("PRIVATE KEY", d, err) }
	sec1 := func() string { d, err := x509.MarshalECPrivateKey(ec); return block("EC PRIVATE KEY", d, err) }()
	pkcs1 := block("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk), nil)
	// ca is a self-signed CA certificate for k.
	ca := func(k crypto.Signer) string {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
			NotBefore: time.Unix(0, 0), NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
			BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
		return block("CERTIFICATE", der, err)
	}
	for _, c := range []struct {
		name, in, want string
		key            crypto.Signer
	}{
		{"ECDSA PKCS#8", pkcs8(ec), sec1, ec},
		{"ECDSA SEC1", sec1, sec1, ec},
		{"RSA PKCS#8", pkcs8(rk), pkcs1, rk},
		{"RSA PKCS#1", pkcs1, pkcs1, rk},
		{"Ed25519 PKCS#8", pkcs8(ed), "", ed},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := testInput(t, caseMaster, "1.21.13")
			in.Config.Spec.Cluster.CACertificate = ca(c.key)
			in.Config.Spec.Credentials.CAKey = c.in
			if c.want == "" {
				_, err := Render(in)
				if err == nil || !strings.Contains(err.Error(), "spec.credentials.caKey: an Ed25519 key: kubeadm uses RSA or ECDSA CA keys") {
					t.Fatalf("Render: %v, want the Ed25519 key refused", err)
				}
				return
			}
			if got := fileData(t, mustRender(t, in), CAKeyPath); got != c.want {
				t.Errorf("%s =\n%s\nwant\n%s", CAKeyPath, got, c.want)
			}
		})
	}
}

func TestSandboxImageInput(t *testing.T) {
	in := testInput(t, caseNodeCert, "1.21.13")
	in.SandboxImage = "registry.example.com/pause@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	p := mustRender(t, in)
	if !strings.Contains(fileData(t, p, ContainerdConfigPath), `sandbox_image = "`+in.SandboxImage+`"`) {
		t.Errorf("containerd config does not use the given sandbox image")
	}
	if got := envFlags(t, fileData(t, p, KubeletFlagsPath), "KUBELET_KUBEADM_ARGS")["pod-infra-container-image"]; got != in.SandboxImage {
		t.Errorf("--pod-infra-container-image = %q, want the given sandbox image", got)
	}
	if p.SandboxImage != in.SandboxImage {
		t.Errorf("Plan.SandboxImage = %q, want the given sandbox image", p.SandboxImage)
	}
	// Without one, the plan names the version's default, which the files use.
	for _, v := range []string{"1.21.13", "1.31.4"} {
		p := mustRender(t, testInput(t, caseNodeCert, v))
		if want := sandboxOf(t, v); p.SandboxImage != want || !strings.Contains(fileData(t, p, ContainerdConfigPath), `sandbox_image = "`+want+`"`) {
			t.Errorf("%s: Plan.SandboxImage = %q, want %q in it and in the containerd config", v, p.SandboxImage, want)
		}
	}
}

// TestRenderErrors checks that each bad input is reported naming its field and what was expected,
// that all problems come at once, and that no error echoes a secret.
func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		c      string
		mutate func(*Input)
		want   []string
	}{
		{"no config", caseNodeToken, func(in *Input) { in.Config = nil }, []string{"Config: missing"}},
		{"old version", caseNodeToken, func(in *Input) { in.Kubernetes = "1.20.15" }, []string{`Kubernetes: unsupported Kubernetes version "1.20.15" (supported: 1.21 to 1.36)`}},
		{"new version", caseNodeToken, func(in *Input) { in.Kubernetes = "1.37.0" }, []string{`Kubernetes: unsupported Kubernetes version "1.37.0" (supported: 1.21 to 1.36)`}},
		{"bad version", caseNodeToken, func(in *Input) { in.Kubernetes = "latest" }, []string{`Kubernetes: invalid Kubernetes version "latest" (expected X.Y.Z such as 1.21.13; supported: 1.21 to 1.36)`}},
		{"no patch", caseMaster, func(in *Input) { in.Kubernetes = "1.21" }, []string{`Kubernetes: invalid Kubernetes version "1.21" (expected X.Y.Z`}},
		{"pre-release", caseMaster, func(in *Input) { in.Kubernetes = "1.31.0-rc.1" }, []string{`Kubernetes: invalid Kubernetes version "1.31.0-rc.1" (expected X.Y.Z`}},
		{"no node name", caseNodeToken, func(in *Input) { in.NodeName = "" }, []string{`NodeName: "" is not a DNS-1123 subdomain`}},
		{"bad node name", caseNodeCert, func(in *Input) { in.NodeName = "Node 1" }, []string{`NodeName: "Node 1" is not a DNS-1123 subdomain`}},
		{"bad sandbox", caseNodeToken, func(in *Input) { in.SandboxImage = `pause" x` }, []string{`SandboxImage: "pause\" x" is not an image reference`}},
		{"bad advertise", caseMaster, func(in *Input) { in.AdvertiseAddress = "master-1" }, []string{`AdvertiseAddress: "master-1" is not a routable unicast IP address`}},
		{"unspecified advertise", caseMasterFollower, func(in *Input) { in.AdvertiseAddress = "0.0.0.0" }, []string{`AdvertiseAddress: "0.0.0.0"`}},
		{"loopback advertise", caseMaster, func(in *Input) { in.AdvertiseAddress = "127.0.0.1" }, []string{`AdvertiseAddress: "127.0.0.1"`}},
		{"extra arg with space", caseNodeCert, func(in *Input) { in.Config.Spec.Kubelet.ExtraArgs["feature-gates"] = "A=true, B=false" },
			[]string{`spec.kubelet.extraArgs.feature-gates: value "A=true, B=false" contains " "`}},
		{"extra arg with quote", caseNodeToken, func(in *Input) { in.Config.Spec.Kubelet.ExtraArgs["v"] = `2"` },
			[]string{`spec.kubelet.extraArgs.v: value "2\"" contains "\""`}},
		{"labels twice", caseNodeToken, func(in *Input) { in.Config.Spec.Kubelet.ExtraArgs["node-labels"] = "a=b" },
			[]string{"spec.kubelet.extraArgs.node-labels: conflicts with spec.kubelet.nodeLabels"}},
		{"taints twice", caseNodeCert, func(in *Input) { in.Config.Spec.Kubelet.ExtraArgs["register-with-taints"] = "a:NoSchedule" },
			[]string{"spec.kubelet.extraArgs.register-with-taints: conflicts with spec.kubelet.registerWithTaints"}},
		{"max pods twice", caseMaster, func(in *Input) { in.Config.Spec.Kubelet.ExtraArgs["max-pods"] = "10" },
			[]string{"spec.kubelet.extraArgs.max-pods: conflicts with spec.kubelet.maxPods"}},
		{"invalid config", caseNodeToken, func(in *Input) {
			in.Config.Spec.Credentials.BootstrapToken = "secret-token-value"
			in.Config.Spec.Role = "worker"
		}, []string{"spec.credentials.bootstrapToken: malformed", `spec.role: unknown role "worker"`}},
		{"no defaults", caseNodeToken, func(in *Input) { in.Config.Spec.Cluster.ClusterDNS = nil },
			[]string{"spec.cluster: dnsDomain, serviceCIDR and clusterDNS must be set (call NodeConfig.Defaults before Render)"}},
		{"several at once", caseNodeToken, func(in *Input) { in.Kubernetes = "1.19.0"; in.NodeName = "" },
			[]string{"Kubernetes: unsupported", "NodeName:"}},
		{"token and certificate", caseNodeCert, func(in *Input) {
			in.Config.Spec.Credentials.BootstrapToken = testToken
			in.Config.Spec.Credentials.CACertHashes = []string{testHash}
		}, []string{"spec.credentials: bootstrapToken and clientCertificate are both set"}},
		{"foreign client certificate", caseNodeCert, func(in *Input) { in.NodeName = "node-2" },
			[]string{`spec.credentials.clientCertificate: subject CN "system:node:node-1", O ["system:nodes"] (expected CN "system:node:node-2", O system:nodes`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput(t, tc.c, "1.21.13")
			tc.mutate(&in)
			p, err := Render(in)
			if err == nil {
				t.Fatalf("Render = %v, want an error", formatPlan(p))
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\nlacks %q", msg, w)
				}
			}
			for _, s := range []string{testToken, "secret-token-value", testCertKey, "PRIVATE KEY"} {
				if strings.Contains(msg, s) {
					t.Errorf("error echoes a secret: %q", msg)
				}
			}
		})
	}

	// A client certificate outside group system:nodes.
	in := testInput(t, caseNodeCert, "1.21.13")
	pki := newTestPKI(t, pkix.Name{CommonName: "system:node:" + testNode})
	in.Config.Spec.Credentials = &nodeconfig.Credentials{ClientCertificate: pki.clientCert, ClientKey: pki.clientKey}
	in.Config.Spec.Cluster.CACertificate = pki.caCert
	if _, err := Render(in); err == nil || !strings.Contains(err.Error(), "O system:nodes") {
		t.Errorf("Render with a certificate outside system:nodes: %v", err)
	}
}

// TestAdvertiseAddressIgnoredForNode: a node's kubelet has no API server to advertise.
func TestAdvertiseAddressIgnoredForNode(t *testing.T) {
	in := testInput(t, caseNodeToken, "1.21.13")
	in.AdvertiseAddress = "not used"
	p := mustRender(t, in)
	if strings.Contains(fileData(t, p, KubeadmConfigPath), "not used") {
		t.Errorf("a node's AdvertiseAddress reached its JoinConfiguration")
	}
}

// sandboxOf is the sandbox image Render uses for Kubernetes v when Input.SandboxImage is "".
func sandboxOf(t *testing.T, v string) string {
	t.Helper()
	kv, err := kubeversion.Parse(v)
	if err != nil {
		t.Fatal(err)
	}
	return kv.SandboxImage()
}

// TestControlPlaneImages: a master whose control-plane images are baked has kubeadm use them:
// imageRepository is their repository, etcd's and CoreDNS's tags are named when they are not
// kubeadm's defaults, and containerd's sandbox is that repository's pause.
func TestControlPlaneImages(t *testing.T) {
	const r = controlPlaneRepository
	for _, tc := range []struct {
		name              string
		mutate            func([]string) []string
		wantEtcd, wantDNS any
	}{
		{"etcd 3.5.0", nil, testEtcdTag, nil},
		{"default etcd, newer coredns", func(b []string) []string {
			return append(slices.DeleteFunc(b, func(s string) bool { return strings.Contains(s, "/etcd:") || strings.Contains(s, "/coredns:") }),
				r+"/etcd:3.4.13-0", r+"/coredns:v1.9.3")
		}, nil, "v1.9.3"},
		{"other images around", func(b []string) []string {
			return append(b, "registry.k8s.io/pause:3.4.1", "example.com/k8s/kube-apiserver:v1.21.12", "docker.io/library/busybox:1")
		}, testEtcdTag, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput(t, caseMaster, "1.21.13")
			if tc.mutate != nil {
				in.BakedImages = tc.mutate(in.BakedImages)
			}
			p := mustRender(t, in)
			cc := kubeadmDocs(t, fileData(t, p, KubeadmConfigPath))["ClusterConfiguration"]
			if got := get(cc, "imageRepository"); got != r {
				t.Errorf("imageRepository = %v, want %s", got, r)
			}
			if got := get(cc, "etcd", "local", "imageTag"); got != tc.wantEtcd {
				t.Errorf("etcd.local.imageTag = %v, want %v", got, tc.wantEtcd)
			}
			if got := get(cc, "dns", "imageTag"); got != tc.wantDNS {
				t.Errorf("dns.imageTag = %v, want %v", got, tc.wantDNS)
			}
			if p.SandboxImage != r+"/pause:3.4.1" || !strings.Contains(fileData(t, p, ContainerdConfigPath), `sandbox_image = "`+r+`/pause:3.4.1"`) {
				t.Errorf("sandbox = %q, want the control-plane repository's pause in the plan and containerd's config", p.SandboxImage)
			}
		})
	}

	// Another repository serves when it alone has the kube-apiserver of the version.
	in := testInput(t, caseMaster, "1.21.13")
	for i, s := range in.BakedImages {
		in.BakedImages[i] = strings.Replace(s, r, "registry.example.com/k8s", 1)
	}
	cc := kubeadmDocs(t, fileData(t, mustRender(t, in), KubeadmConfigPath))["ClusterConfiguration"]
	if got := get(cc, "imageRepository"); got != "registry.example.com/k8s" {
		t.Errorf("imageRepository = %v, want registry.example.com/k8s", got)
	}

	// A node takes the baked pause of the control-plane repository too, and needs no more.
	node := testInput(t, caseNodeToken, "1.21.13")
	node.BakedImages = []string{"registry.k8s.io/pause:3.4.1", r + "/pause:3.4.1", r + "/kube-apiserver:v1.21.13"}
	if p := mustRender(t, node); p.SandboxImage != r+"/pause:3.4.1" {
		t.Errorf("node sandbox = %q, want %s/pause:3.4.1", p.SandboxImage, r)
	}
}

// TestSkipImages: a node (with a token or a client certificate) skips the control-plane-only
// images of the repository holding the version's kube-apiserver, whatever their tags, and nothing
// else; a master or masterFollower imports everything.
func TestSkipImages(t *testing.T) {
	const r = controlPlaneRepository
	for _, c := range []string{caseMaster, caseMasterFollower, caseNodeToken, caseNodeCert} {
		t.Run(c, func(t *testing.T) {
			in := testInput(t, c, "1.21.13")
			in.BakedImages = append(testInput(t, caseMaster, "1.21.13").BakedImages, // all seven
				"registry.example.com/k8s/kube-apiserver:v1.21.13", "registry.example/probe:1", r+"/etcd:3.5.0-0")
			got := mustRender(t, in).SkipImages
			var want []string
			if c == caseNodeToken || c == caseNodeCert {
				for _, n := range in.BakedImages {
					if strings.HasPrefix(n, r+"/") && !strings.Contains(n, "/kube-proxy:") && !strings.Contains(n, "/coredns:") && !strings.Contains(n, "/pause:") {
						want = append(want, n)
					}
				}
				slices.Sort(want)
				if len(want) < 5 {
					t.Fatalf("test input bakes too few control-plane images: %q", in.BakedImages)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("SkipImages = %q, want %q", got, want)
			}
		})
	}
	// Without the version's kube-apiserver baked, nothing is control-plane only.
	in := testInput(t, caseNodeToken, "1.21.13")
	in.BakedImages = []string{r + "/etcd:3.5.0-0", r + "/kube-apiserver:v1.20.0", r + "/pause:3.4.1"}
	if got := mustRender(t, in).SkipImages; got != nil {
		t.Errorf("SkipImages = %q, want none", got)
	}
}

// TestMissingControlPlaneImages: a master or masterFollower whose image lacks control-plane
// images is refused, naming the role and every missing image; a node is not.
func TestMissingControlPlaneImages(t *testing.T) {
	const r = controlPlaneRepository
	for _, c := range []string{caseMaster, caseMasterFollower} {
		t.Run(c, func(t *testing.T) {
			in := testInput(t, c, "1.21.13")
			in.BakedImages = slices.DeleteFunc(in.BakedImages, func(s string) bool {
				return strings.Contains(s, "/etcd:") || strings.Contains(s, "/kube-proxy:")
			})
			_, err := Render(in)
			role := testConfig(t, c, newTestPKI(t, nodeSubject)).Spec.Role
			want := "spec.role: this image cannot serve role " + string(role) + ": kubeadm 1.21.13 needs control-plane images it does not bake (nothing is pulled at boot): " +
				r + "/kube-proxy:v1.21.13, " + r + "/etcd:3.4.13-0"
			if err == nil || err.Error() != want {
				t.Errorf("Render = %v\nwant %s", err, want)
			}

			in.BakedImages = nil
			_, err = Render(in)
			want = "spec.role: this image cannot serve role " + string(role) + ": kubeadm 1.21.13 needs control-plane images it does not bake (nothing is pulled at boot): " +
				r + "/kube-apiserver:v1.21.13, " + r + "/kube-controller-manager:v1.21.13, " + r + "/kube-scheduler:v1.21.13, " +
				r + "/kube-proxy:v1.21.13, " + r + "/pause:3.4.1, " + r + "/etcd:3.4.13-0, " + r + "/coredns:v1.8.0"
			if err == nil || err.Error() != want {
				t.Errorf("Render = %v\nwant %s", err, want)
			}
		})
	}
	for _, c := range []string{caseNodeToken, caseNodeCert} {
		in := testInput(t, c, "1.21.13")
		in.BakedImages = nil
		mustRender(t, in)
	}
}

// TestBakedSandbox: without a control-plane repository, any baked image of a repository named
// pause is the sandbox.
func TestBakedSandbox(t *testing.T) {
	v, err := kubeversion.Parse("1.21.13")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{[]string{"registry.k8s.io/pause:3.4.1"}, "registry.k8s.io/pause:3.4.1"},
		{[]string{"a/coredns:1", "localhost:5000/pause@sha256:" + strings.Repeat("a", 64)}, "localhost:5000/pause@sha256:" + strings.Repeat("a", 64)},
		{[]string{"localhost:5000/pause"}, "localhost:5000/pause"},
		{[]string{"registry/paused:1", "registry/pause-x:1"}, ""},
		{[]string{"registry.k8s.io/pause:3.4.1", "r/kube-apiserver:v1.21.13", "r/pause:3.4.1"}, "r/pause:3.4.1"},
		{[]string{"registry.k8s.io/pause:3.4.1", "r/kube-apiserver:v1.21.12", "r/pause:3.4.1"}, "registry.k8s.io/pause:3.4.1"},
		{nil, ""},
	} {
		if got := bakedSandbox(tc.names, v); got != tc.want {
			t.Errorf("bakedSandbox(%q) = %q, want %q", tc.names, got, tc.want)
		}
	}
}

// TestAdvertiseAddressFromNodeIP: a control-plane machine with several NICs (on a qemu or cloud
// host the default route's NIC may carry the same address on every machine) advertises the
// address its kubelet is told to use, spec.kubelet.extraArgs.node-ip, unless the caller gives one.
func TestAdvertiseAddressFromNodeIP(t *testing.T) {
	for _, tc := range []struct {
		name, nodeIP, given, want, wantErr string
		role                               string
	}{
		{name: "master", role: caseMaster, nodeIP: "192.168.50.11", want: "192.168.50.11"},
		{name: "follower", role: caseMasterFollower, nodeIP: "192.168.50.12", want: "192.168.50.12"},
		{name: "dual stack takes the first", role: caseMaster, nodeIP: "192.168.50.11,fd00::11", want: "192.168.50.11"},
		{name: "the caller wins", role: caseMaster, nodeIP: "192.168.50.11", given: "192.0.2.11", want: "192.0.2.11"},
		{name: "no node-ip", role: caseMaster},
		{name: "bad node-ip", role: caseMaster, nodeIP: "lan0", wantErr: `spec.kubelet.extraArgs.node-ip: "lan0" is not a routable unicast IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput(t, tc.role, "1.21.13")
			in.AdvertiseAddress = tc.given
			if in.Config.Spec.Kubelet.ExtraArgs == nil {
				in.Config.Spec.Kubelet.ExtraArgs = map[string]string{}
			}
			delete(in.Config.Spec.Kubelet.ExtraArgs, "node-ip")
			if tc.nodeIP != "" {
				in.Config.Spec.Kubelet.ExtraArgs["node-ip"] = tc.nodeIP
			}
			p, err := Render(in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Render: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			docs := kubeadmDocs(t, fileData(t, p, KubeadmConfigPath))
			var got any
			if tc.role == caseMaster {
				got = get(docs["InitConfiguration"], "localAPIEndpoint", "advertiseAddress")
			} else {
				got = get(docs["JoinConfiguration"], "controlPlane", "localAPIEndpoint", "advertiseAddress")
			}
			if tc.want == "" && got != nil || tc.want != "" && got != tc.want {
				t.Errorf("advertiseAddress = %v, want %q", got, tc.want)
			}
		})
	}
}

// TestEtcdTiming checks spec.cluster.etcd reaches the master's ClusterConfiguration as etcd's
// flags (a map before v1beta4, a list from it), next to the image tag, and that a
// follower's or node's own spec.cluster.etcd renders nothing: they join the cluster's.
func TestEtcdTiming(t *testing.T) {
	for _, v := range goldenVersions {
		kv, err := kubeversion.Parse(v)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(v, func(t *testing.T) {
			in := testInput(t, caseMaster, v)
			in.Config.Spec.Cluster.Etcd = nodeconfig.Etcd{HeartbeatInterval: "500ms", ElectionTimeout: "10s"}
			local := get(kubeadmDocs(t, fileData(t, mustRender(t, in), KubeadmConfigPath))["ClusterConfiguration"], "etcd", "local")
			want := [][2]string{{"election-timeout", "10000"}, {"heartbeat-interval", "500"}}
			switch a := get(local, "extraArgs").(type) {
			case map[string]any:
				if kv.KubeadmAPIVersion() == kubeversion.KubeadmV1beta4 || len(a) != len(want) || a[want[0][0]] != want[0][1] || a[want[1][0]] != want[1][1] {
					t.Errorf("etcd.local.extraArgs = %v, want %v", a, want)
				}
			case []any:
				if kv.KubeadmAPIVersion() != kubeversion.KubeadmV1beta4 || len(a) != len(want) {
					t.Fatalf("etcd.local.extraArgs = %v, want %v", a, want)
				}
				for i, w := range want {
					if get(a[i], "name") != w[0] || get(a[i], "value") != w[1] {
						t.Errorf("etcd.local.extraArgs[%d] = %v, want %v", i, a[i], w)
					}
				}
			default:
				t.Fatalf("etcd.local = %#v", local)
			}
			plain := get(kubeadmDocs(t, fileData(t, mustRender(t, testInput(t, caseMaster, v)), KubeadmConfigPath))["ClusterConfiguration"], "etcd", "local")
			if tag := get(local, "imageTag"); tag != get(plain, "imageTag") || get(plain, "extraArgs") != nil {
				t.Errorf("etcd.local.imageTag = %v, without spec.cluster.etcd %v", tag, plain)
			}

			for _, c := range []string{caseMasterFollower, caseNodeToken} {
				in := testInput(t, c, v)
				in.Config.Spec.Cluster.Etcd = nodeconfig.Etcd{ElectionTimeout: "10s"}
				if data := fileData(t, mustRender(t, in), KubeadmConfigPath); strings.Contains(data, "election") {
					t.Errorf("%s's kubeadm config carries etcd flags:\n%s", c, data)
				}
			}
		})
	}
}

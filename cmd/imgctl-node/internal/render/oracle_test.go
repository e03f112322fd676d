package render

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/kubeversion"
	"github.com/imgctl/imgctl/layers/testenv"
)

// The oracles: real kubeadm and kubelet of oracleVersion and crictl, built from the Go module proxy by
// scripts/build-kubernetes.sh into IMGCTL_KUBERNETES_DIR or <repo>/.cache/tools/kubernetes/vVERSION,
// and containerd when it is installed.
const oracleVersion = "1.21.13"

var (
	buildOnce sync.Once
	buildErr  error
)

// repoRoot is the directory of imgctl's go.mod above the test's working directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/imgctl/imgctl\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no imgctl go.mod above the working directory")
		}
		dir = parent
	}
}

// kubernetesTool returns the path of kubeadm or kubelet oracleVersion, building both if they are
// missing (cached; about 4 minutes cold). It skips only under -short.
func kubernetesTool(t *testing.T, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: the Kubernetes %s oracle needs kubeadm and kubelet (scripts/build-kubernetes.sh)", oracleVersion)
	}
	root := repoRoot(t)
	dir := os.Getenv("IMGCTL_KUBERNETES_DIR")
	if dir == "" {
		dir = filepath.Join(root, ".cache", "tools", "kubernetes", "v"+oracleVersion)
	}
	bin := filepath.Join(dir, name)
	_, err := os.Stat(bin)
	if errors.Is(err, fs.ErrNotExist) {
		buildOnce.Do(func() {
			t.Logf("building kubeadm and kubelet %s into %s", oracleVersion, dir)
			cmd := exec.Command(filepath.Join(root, "scripts", "build-kubernetes.sh"), oracleVersion, dir)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("scripts/build-kubernetes.sh %s %s: %v\n%s", oracleVersion, dir, err, out)
			}
		})
		if buildErr != nil {
			t.Fatal(buildErr)
		}
		_, err = os.Stat(bin)
	}
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// runTool runs an oracle offline: any HTTP(S) request it makes goes to a closed loopback port
// instead of the internet, and its home is empty. It fails the test if the command fails.
func runTool(t *testing.T, bin string, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{
		"HOME=" + t.TempDir(),
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=",
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), errOut.String()
}

// writeTemp writes data to a file in a fresh temporary directory.
func writeTemp(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// quiet fails the test if kubeadm said anything on stderr: unknown fields and kinds are only
// warnings there (strict.go "error unmarshaling configuration"), the exit status stays 0.
func quiet(t *testing.T, what, stderr string) {
	t.Helper()
	if strings.TrimSpace(stderr) != "" {
		t.Errorf("kubeadm %s warned:\n%s", what, stderr)
	}
}

// migrate runs kubeadm config migrate on a configuration and returns the migrated documents.
func migrate(t *testing.T, kubeadm, config string) (docs map[string]map[string]any, stderr string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "new.yaml")
	_, stderr = runTool(t, kubeadm, "config", "migrate", "--old-config", writeTemp(t, "old.yaml", config), "--new-config", out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return kubeadmDocs(t, string(b)), stderr
}

// TestKubeadmOracle has kubeadm 1.21.13 read what Render writes for 1.21.13: config images list
// loads, defaults and validates the master's InitConfiguration + ClusterConfiguration (and
// strictly decodes its KubeletConfiguration); config migrate does the same for the join
// configurations. Both run as any user and offline once kubernetesVersion is explicit.
func TestKubeadmOracle(t *testing.T) {
	kubeadm := kubernetesTool(t, "kubeadm")

	t.Run("master images list", func(t *testing.T) {
		config := fileData(t, mustRender(t, testInput(t, caseMaster, oracleVersion)), KubeadmConfigPath)
		stdout, stderr := runTool(t, kubeadm, "config", "images", "list", "--config", writeTemp(t, "kubeadm.yaml", config))
		quiet(t, "config images list", stderr)
		t.Logf("kubeadm config images list:\n%s", stdout)
		if !strings.Contains(stdout, "/kube-apiserver:v"+oracleVersion+"\n") {
			t.Errorf("kube-apiserver v%s not listed: kubernetesVersion was not read", oracleVersion)
		}
		wantTag := strings.TrimPrefix(sandboxOf(t, oracleVersion), kubeversion.SandboxRepository+":")
		var pause string
		for l := range strings.SplitSeq(stdout, "\n") {
			if _, tag, ok := strings.Cut(l, "/pause:"); ok {
				pause = tag
			}
		}
		if pause != wantTag {
			t.Errorf("kubeadm expects pause:%s, kubeversion has %s for %s", pause, wantTag, oracleVersion)
		}
		// kubeadm pulls nothing: the images it lists are exactly the baked ones.
		listed := strings.Fields(stdout)
		slices.Sort(listed)
		if baked := testBaked(t, oracleVersion); !slices.Equal(listed, baked) {
			t.Errorf("kubeadm lists %q,\nthe image bakes %q", listed, baked)
		}
	})

	// A CoreDNS tag other than kubeadm's default reaches kubeadm through dns.imageTag.
	t.Run("master images list with another coredns", func(t *testing.T) {
		in := testInput(t, caseMaster, oracleVersion)
		in.BakedImages = slices.DeleteFunc(in.BakedImages, func(s string) bool { return strings.Contains(s, "/coredns:") })
		in.BakedImages = append(in.BakedImages, controlPlaneRepository+"/coredns:v1.9.3")
		stdout, stderr := runTool(t, kubeadm, "config", "images", "list", "--config", writeTemp(t, "kubeadm.yaml", fileData(t, mustRender(t, in), KubeadmConfigPath)))
		quiet(t, "config images list", stderr)
		listed := strings.Fields(stdout)
		slices.Sort(listed)
		slices.Sort(in.BakedImages)
		if !slices.Equal(listed, in.BakedImages) {
			t.Errorf("kubeadm lists %q,\nthe image bakes %q", listed, in.BakedImages)
		}
	})

	// kubeadm's preflight with the rendered configuration: HTTPProxyCIDR, which kubeadm built
	// with Go 1.26 cannot pass (see PreflightHTTPProxyCIDR), is only a warning. The host fails
	// other checks (no kubelet service, the CRI, …), so kubeadm stops there and changes nothing.
	t.Run("master preflight", func(t *testing.T) {
		testenv.Root(t, "kubeadm init phase preflight runs as root only")
		config := fileData(t, mustRender(t, testInput(t, caseMaster, oracleVersion)), KubeadmConfigPath)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, _ := exec.CommandContext(ctx, kubeadm, "init", "phase", "preflight", "--config", writeTemp(t, "kubeadm.yaml", config)).CombinedOutput()
		if strings.Contains(string(out), "[ERROR "+PreflightHTTPProxyCIDR+"]") || !strings.Contains(string(out), "[WARNING "+PreflightHTTPProxyCIDR+"]") {
			t.Errorf("kubeadm init phase preflight: want %s as a warning, not an error:\n%s", PreflightHTTPProxyCIDR, out)
		}
	})

	t.Run("master migrate", func(t *testing.T) {
		config := fileData(t, mustRender(t, testInput(t, caseMaster, oracleVersion)), KubeadmConfigPath)
		docs, stderr := migrate(t, kubeadm, config)
		quiet(t, "config migrate", stderr)
		ic, cc := docs["InitConfiguration"], docs["ClusterConfiguration"]
		for _, c := range []struct {
			doc  map[string]any
			keys []string
			want any
		}{
			{ic, []string{"nodeRegistration", "name"}, testNode},
			{ic, []string{"nodeRegistration", "criSocket"}, ContainerdSocket},
			{ic, []string{"nodeRegistration", "kubeletExtraArgs", "node-labels"}, "pool=gpu,topology.kubernetes.io/zone=eu-west-1a"},
			{ic, []string{"nodeRegistration", "kubeletExtraArgs", "max-pods"}, "64"},
			{ic, []string{"localAPIEndpoint", "advertiseAddress"}, "192.0.2.11"},
			{ic, []string{"certificateKey"}, testCertKey},
			{cc, []string{"kubernetesVersion"}, "v" + oracleVersion},
			{cc, []string{"clusterName"}, "prod"},
			{cc, []string{"controlPlaneEndpoint"}, "10.0.0.10:6443"},
			{cc, []string{"networking", "podSubnet"}, "10.244.0.0/16"},
			{cc, []string{"networking", "serviceSubnet"}, "10.96.0.0/12"},
			{cc, []string{"networking", "dnsDomain"}, "cluster.local"},
			{cc, []string{"apiServer", "timeoutForControlPlane"}, ControlPlaneTimeout.String()},
		} {
			if got := get(c.doc, c.keys...); got != c.want {
				t.Errorf("migrated %s = %v, want %v", strings.Join(c.keys, "."), got, c.want)
			}
		}
		// The followers' and nodes' token, with kubeadm's defaults for a join token.
		tokens, _ := get(ic, "bootstrapTokens").([]any)
		if len(tokens) != 1 || get(tokens[0], "token") != testToken || get(tokens[0], "ttl") != "24h0m0s" ||
			fmt.Sprint(get(tokens[0], "groups")) != "[system:bootstrappers:kubeadm:default-node-token]" {
			t.Errorf("migrated bootstrapTokens = %v, want the NodeConfig's token with kubeadm's defaults", get(ic, "bootstrapTokens"))
		}
		// kubeadm keeps the preflight check a control-plane node ignores (see PreflightHTTPProxyCIDR).
		if got := fmt.Sprint(get(ic, "nodeRegistration", "ignorePreflightErrors")); got != "["+PreflightHTTPProxyCIDR+"]" {
			t.Errorf("migrated nodeRegistration.ignorePreflightErrors = %s, want [%s]", got, PreflightHTTPProxyCIDR)
		}
		// kubeadm applied its default control-plane taint, which Render left to it.
		if taints, _ := get(ic, "nodeRegistration", "taints").([]any); len(taints) != 1 || get(taints[0], "key") != "node-role.kubernetes.io/master" {
			t.Errorf("migrated taints = %v, want kubeadm's control-plane taint", get(ic, "nodeRegistration", "taints"))
		}
	})

	// spec.cluster.etcd reaches kubeadm as the local etcd's flags, beside its image tag.
	t.Run("master etcd timing migrate", func(t *testing.T) {
		in := testInput(t, caseMaster, oracleVersion)
		in.Config.Spec.Cluster.Etcd = nodeconfig.Etcd{HeartbeatInterval: "500ms", ElectionTimeout: "10s"}
		docs, stderr := migrate(t, kubeadm, fileData(t, mustRender(t, in), KubeadmConfigPath))
		quiet(t, "config migrate", stderr)
		local := get(docs["ClusterConfiguration"], "etcd", "local")
		if get(local, "extraArgs", "heartbeat-interval") != "500" || get(local, "extraArgs", "election-timeout") != "10000" || get(local, "imageTag") == nil {
			t.Errorf("migrated etcd.local = %v, want heartbeat-interval 500, election-timeout 10000 and the image tag", local)
		}
	})

	t.Run("node KubeletConfiguration", func(t *testing.T) {
		// kubeadm decodes a KubeletConfiguration next to its own documents strictly against
		// kubelet 1.21's types: put the certificate node's config.yaml there.
		master := fileData(t, mustRender(t, testInput(t, caseMaster, oracleVersion)), KubeadmConfigPath)
		docs := strings.Split(master, "\n---\n")
		node := fileData(t, mustRender(t, testInput(t, caseNodeCert, oracleVersion)), KubeletConfigPath)
		config := strings.Join(append(docs[:2:2], node), "\n---\n")
		_, stderr := runTool(t, kubeadm, "config", "images", "list", "--config", writeTemp(t, "kubeadm.yaml", config))
		quiet(t, "config images list with the node's config.yaml", stderr)
	})

	for _, c := range []string{caseNodeToken, caseMasterFollower} {
		t.Run(c+" migrate", func(t *testing.T) {
			config := fileData(t, mustRender(t, testInput(t, c, oracleVersion)), KubeadmConfigPath)
			docs, stderr := migrate(t, kubeadm, config)
			quiet(t, "config migrate", stderr)
			jc := docs["JoinConfiguration"]
			if jc == nil {
				t.Fatalf("no JoinConfiguration in kubeadm's output: %v", docs)
			}
			checks := []struct {
				keys []string
				want any
			}{
				{[]string{"apiVersion"}, kubeversion.KubeadmV1beta2},
				{[]string{"discovery", "bootstrapToken", "apiServerEndpoint"}, "10.0.0.10:6443"},
				{[]string{"discovery", "bootstrapToken", "token"}, testToken},
				{[]string{"discovery", "tlsBootstrapToken"}, testToken}, // kubeadm's default from the token
				{[]string{"discovery", "timeout"}, "2m0s"},
				{[]string{"nodeRegistration", "name"}, testNode},
				{[]string{"nodeRegistration", "criSocket"}, ContainerdSocket},
				{[]string{"nodeRegistration", "kubeletExtraArgs", "node-labels"}, "pool=gpu,topology.kubernetes.io/zone=eu-west-1a"},
				{[]string{"nodeRegistration", "kubeletExtraArgs", "v"}, "2"},
			}
			if c == caseMasterFollower {
				checks = append(checks,
					struct {
						keys []string
						want any
					}{[]string{"controlPlane", "certificateKey"}, testCertKey},
					struct {
						keys []string
						want any
					}{[]string{"controlPlane", "localAPIEndpoint", "advertiseAddress"}, "192.0.2.11"})
			}
			for _, ch := range checks {
				if got := get(jc, ch.keys...); got != ch.want {
					t.Errorf("migrated %s = %v, want %v", strings.Join(ch.keys, "."), got, ch.want)
				}
			}
			if hashes, _ := get(jc, "discovery", "bootstrapToken", "caCertHashes").([]any); len(hashes) != 1 || hashes[0] != testHash {
				t.Errorf("migrated caCertHashes = %v", hashes)
			}
			taints, _ := get(jc, "nodeRegistration", "taints").([]any)
			ignored := fmt.Sprint(get(jc, "nodeRegistration", "ignorePreflightErrors"))
			switch c {
			case caseNodeToken:
				if len(taints) != 2 || get(taints[1], "key") != "spot" || get(taints[1], "effect") != "PreferNoSchedule" {
					t.Errorf("migrated taints = %v", taints)
				}
				if ignored != "<nil>" && ignored != "[]" {
					t.Errorf("a node's join ignores preflight checks %s, want none", ignored)
				}
			case caseMasterFollower:
				if len(taints) != 1 || get(taints[0], "key") != "node-role.kubernetes.io/master" {
					t.Errorf("migrated taints = %v, want kubeadm's control-plane taint", taints)
				}
				if ignored != "["+PreflightHTTPProxyCIDR+"]" {
					t.Errorf("migrated nodeRegistration.ignorePreflightErrors = %s, want [%s]", ignored, PreflightHTTPProxyCIDR)
				}
			}
		})
	}

	// The harness itself: kubeadm's warning for an unknown field must reach quiet.
	t.Run("unknown field is caught", func(t *testing.T) {
		config := fileData(t, mustRender(t, testInput(t, caseNodeToken, oracleVersion)), KubeadmConfigPath)
		_, stderr := migrate(t, kubeadm, config+"bogusField: 1\n")
		if !strings.Contains(stderr, `unknown field "bogusField"`) {
			t.Errorf("kubeadm did not report an unknown field; stderr:\n%s", stderr)
		}
	})
}

// TestKubeletFlagsOracle checks every flag the certificate node passes is one kubelet 1.21.13 has.
func TestKubeletFlagsOracle(t *testing.T) {
	kubelet := kubernetesTool(t, "kubelet")
	help, _ := runTool(t, kubelet, "--help")
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-[a-z], )?--([a-z0-9-]+)`).FindAllStringSubmatch(help, -1) {
		known[m[1]] = true
	}
	if !known["kubeconfig"] || len(known) < 100 {
		t.Fatalf("could not read kubelet's flags from --help (%d found)", len(known))
	}
	p := mustRender(t, testInput(t, caseNodeCert, oracleVersion))
	for path, name := range map[string]string{KubeletFlagsPath: "KUBELET_KUBEADM_ARGS", KubeletExtraArgsPath: "KUBELET_EXTRA_ARGS"} {
		for f := range envFlags(t, fileData(t, p, path), name) {
			if !known[f] {
				t.Errorf("%s: kubelet %s has no flag --%s", path, oracleVersion, f)
			}
		}
	}
}

// tomlValues reads "key = value" lines of a TOML file by [section].
func tomlValues(text string) map[string]map[string]string {
	out := map[string]map[string]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "["):
			section = strings.Trim(l, "[]")
		case strings.Contains(l, " = "):
			k, v, _ := strings.Cut(l, " = ")
			if out[section] == nil {
				out[section] = map[string]string{}
			}
			out[section][k] = v
		}
	}
	return out
}

// TestContainerdOracle has containerd parse the config and print what it will run with. It needs
// containerd (Debian's containerd package) on PATH.
func TestContainerdOracle(t *testing.T) {
	testenv.Tools(t, "containerd")
	containerd, _ := exec.LookPath("containerd")
	config := fileData(t, mustRender(t, testInput(t, caseNodeToken, oracleVersion)), ContainerdConfigPath)
	dump, _ := runTool(t, containerd, "--config", writeTemp(t, "config.toml", config), "config", "dump")
	got := tomlValues(dump)
	const cri = `plugins."io.containerd.grpc.v1.cri"`
	for _, c := range []struct{ section, key, want string }{
		{"", "version", "2"},
		{cri, "sandbox_image", `"` + sandboxOf(t, oracleVersion) + `"`},
		{cri + ".containerd", "default_runtime_name", `"runc"`},
		{cri + ".containerd.runtimes.runc", "runtime_type", `"io.containerd.runc.v2"`},
		{cri + ".containerd.runtimes.runc.options", "SystemdCgroup", "true"},
		{cri + ".cni", "bin_dir", `"/usr/lib/cni"`}, // Debian containernetworking-plugins
		{cri + ".cni", "conf_dir", `"/etc/cni/net.d"`},
	} {
		if v := got[c.section][c.key]; v != c.want {
			t.Errorf("containerd runs with [%s] %s = %s, want %s", c.section, c.key, v, c.want)
		}
	}
}

// TestCrictlOracle has crictl (kubeadm's preflight runs it) read the /etc/crictl.yaml Render
// writes: both endpoints are containerd's socket.
func TestCrictlOracle(t *testing.T) {
	crictl := kubernetesTool(t, "crictl")
	config := writeTemp(t, "crictl.yaml", fileData(t, mustRender(t, testInput(t, caseNodeToken, oracleVersion)), CrictlConfigPath))
	for key, want := range map[string]string{"runtime-endpoint": ContainerdSocket, "image-endpoint": ContainerdSocket, "timeout": "10"} {
		got, stderr := runTool(t, crictl, "--config", config, "config", "--get", key)
		if strings.TrimSpace(got) != want || strings.TrimSpace(stderr) != "" {
			t.Errorf("crictl config --get %s = %q (stderr %q), want %s", key, got, stderr, want)
		}
	}
}

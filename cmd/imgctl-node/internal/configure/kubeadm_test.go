package configure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
)

const (
	testCertKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	// generatedToken is a token kubeadm init made up itself: not in any NodeConfig.
	generatedToken = "zyx987.zyxwvutsrqponmlk"
	generatedKey   = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

const masterConfig = `apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: master-1
spec:
  role: master
  cluster:
    name: prod
    apiServer: https://10.0.0.10:6443
`

const followerConfig = `apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: master-2
spec:
  role: masterFollower
  cluster:
    apiServer: https://10.0.0.10:6443
  credentials:
    bootstrapToken: abcdef.0123456789abcdef
    caCertHashes: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
    certificateKey: ` + testCertKey + `
`

// bakeControlPlane bakes archives of every control-plane image kubeadm 1.21.13 needs.
func bakeControlPlane(t *testing.T, root string) {
	const r = "registry.imgctl.invalid/kubernetes/"
	for _, n := range []string{"kube-apiserver:v1.21.13", "kube-controller-manager:v1.21.13", "kube-scheduler:v1.21.13",
		"kube-proxy:v1.21.13", "pause:3.4.1", "etcd:3.5.0-0", "coredns:v1.8.0"} {
		comp, _, _ := strings.Cut(n, ":")
		writeArchive(t, root, ImagesDir+"/"+comp+".tar", r+n)
	}
}

// kubeadmFailure is what kubeadm 1.21 writes on stderr when a phase fails (cmd/kubeadm's
// phase runner and util.CheckErr).
func kubeadmFailure(phase, msg string) string {
	return "[preflight] Running pre-flight checks\n" +
		"error execution phase " + phase + ": " + msg + "\n" +
		"To see the stack trace of this error execute with --v=5 or higher\n"
}

// stepLines returns the console's step lines for step name.
func stepLines(f *fixture, name string) []string {
	var out []string
	for l := range strings.Lines(f.steps.String()) {
		if strings.Contains(l, " step="+name+" ") {
			out = append(out, strings.TrimSuffix(l, "\n"))
		}
	}
	return out
}

func noSecrets(t *testing.T, what, s string) {
	t.Helper()
	for _, sec := range []string{"abcdef.0123456789abcdef", "0123456789abcdef0123456789abcdef", testCertKey, generatedToken, generatedKey} {
		if strings.Contains(s, sec) {
			t.Errorf("%s shows a secret (%s):\n%s", what, sec, s)
		}
	}
}

// TestKubeadmInitOutputRedacted: kubeadm init prints the join commands with a token and the
// certificate key; none of it reaches the console or the step line.
func TestKubeadmInitOutputRedacted(t *testing.T) {
	f, o := newFixture(t, masterConfig)
	bakeControlPlane(t, f.root)
	f.kubeadm = func(out io.Writer, args string, n int) error {
		fmt.Fprintf(out, "[upload-certs] Using certificate key:\n%s\n", generatedKey)
		fmt.Fprintf(out, "  kubeadm join 10.0.0.10:6443 --token %s \\\n", generatedToken)
		fmt.Fprintf(out, "\t--discovery-token-ca-cert-hash sha256:%s \\\n", strings.Repeat("ab", 32))
		fmt.Fprintf(out, "\t--control-plane --certificate-key %s", generatedKey) // no final newline
		return nil
	}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	out := f.output.String()
	noSecrets(t, "the output", out)
	noSecrets(t, "the steps", f.steps.String())
	for _, want := range []string{"--token REDACTED", "--certificate-key REDACTED\n", "\nREDACTED\n", "sha256:" + strings.Repeat("ab", 32)} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if l := stepLines(f, "kubeadm"); len(l) != 1 || !strings.Contains(l[0], "status=ok") || !strings.Contains(l[0], `command="kubeadm init" attempts=1`) {
		t.Errorf("kubeadm step lines = %q", l)
	}
}

// TestKubeadmFailureNamesPhase: a failed kubeadm is one step line naming kubeadm's phase
// (phase=unknown when it names none), with kubeadm's message, redacted; a master does not retry.
func TestKubeadmFailureNamesPhase(t *testing.T) {
	for _, tc := range []struct {
		name, output, phase, err string
	}{
		{"preflight", kubeadmFailure("preflight", "[preflight] Some fatal errors occurred:\n\t[ERROR ImagePull]: failed to pull image registry.imgctl.invalid/kubernetes/etcd:3.5.0-0 for token "+generatedToken+"\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`"),
			"preflight", `kubeadm init: error execution phase preflight: [preflight] Some fatal errors occurred: / [ERROR ImagePull]: failed to pull image registry.imgctl.invalid/kubernetes/etcd:3.5.0-0 for token REDACTED / [preflight] If you know what you are doing, you can make a check non-fatal with ` + "`--ignore-preflight-errors=...`" + ` (exit status 1)`},
		{"nested phase", kubeadmFailure("wait-control-plane", "couldn't initialize a Kubernetes cluster"),
			"wait-control-plane", "kubeadm init: error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster (exit status 1)"},
		{"no phase", "W1205 12:00:00 some warning\nunable to read config from \"/etc/imgctl/kubeadm.yaml\"\nTo see the stack trace of this error execute with --v=5 or higher\n",
			"unknown", `kubeadm init: unable to read config from "/etc/imgctl/kubeadm.yaml" (exit status 1)`},
		{"no output", "", "unknown", "kubeadm init: exit status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, o := newFixture(t, masterConfig)
			bakeControlPlane(t, f.root)
			f.kubeadm = func(out io.Writer, args string, n int) error {
				io.WriteString(out, tc.output)
				return errors.New("exit status 1")
			}
			err := Run(context.Background(), o)
			if err == nil || err.Error() != tc.err {
				t.Errorf("Run = %v\nwant %s", err, tc.err)
			}
			lines := stepLines(f, "kubeadm")
			if len(lines) != 1 {
				t.Fatalf("kubeadm step lines = %q, want one", lines)
			}
			re := regexp.MustCompile(`^imgctl-node step=kubeadm status=fail latency=\d+ms phase=` + regexp.QuoteMeta(tc.phase) + ` command="kubeadm init" attempts=1 err="`)
			if !re.MatchString(lines[0]) {
				t.Errorf("step line %q\ndoes not match %s", lines[0], re)
			}
			noSecrets(t, "the steps", f.steps.String())
			noSecrets(t, "the output", f.output.String())
			if slices.Contains(f.commands, "kubeadm reset -f") {
				t.Errorf("a master was reset and retried: %q", f.commands)
			}
		})
	}
}

// TestNodeJoinRetries: a node's join is tried NodeJoinAttempts times with kubeadm reset -f
// between, each retry one progress line; then the step fails once.
func TestNodeJoinRetries(t *testing.T) {
	f, o := newFixture(t, tokenConfig)
	f.kubeadm = func(out io.Writer, args string, n int) error {
		if args == "reset -f" {
			return nil
		}
		io.WriteString(out, kubeadmFailure("preflight", `couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID "abcdef"`))
		return errors.New("exit status 1")
	}
	err := Run(context.Background(), o)
	if err == nil {
		t.Fatal("Run succeeded")
	}
	join := "kubeadm join --config " + render.KubeadmConfigPath
	want := []string{"systemctl restart containerd.service", join}
	for range NodeJoinAttempts - 1 {
		want = append(want, "kubeadm reset -f", join)
	}
	if !slices.Equal(f.commands, want) {
		t.Errorf("commands =\n%s\nwant\n%s", strings.Join(f.commands, "\n"), strings.Join(want, "\n"))
	}
	lines := stepLines(f, "kubeadm")
	if len(lines) != NodeJoinAttempts {
		t.Fatalf("kubeadm step lines = %q, want %d", lines, NodeJoinAttempts)
	}
	for i, l := range lines[:NodeJoinAttempts-1] {
		if !strings.Contains(l, "status=progress latency=") || !strings.Contains(l, fmt.Sprintf(`phase=preflight command="kubeadm join" attempt=%d retry-in=%dms err="kubeadm join: error execution phase preflight`, i+1, 1<<i)) {
			t.Errorf("retry line %d = %q", i+1, l)
		}
	}
	if l := lines[NodeJoinAttempts-1]; !strings.Contains(l, `status=fail`) || !strings.Contains(l, fmt.Sprintf(`phase=preflight command="kubeadm join" attempts=%d err="kubeadm join: error execution phase preflight: couldn't validate the identity`, NodeJoinAttempts)) {
		t.Errorf("last line = %q", l)
	}
	if got := f.lines(); got[len(got)-1] != "kubeadm=fail" {
		t.Errorf("steps = %q, want the run to end at the failed kubeadm", got)
	}

	// Success on the second attempt.
	f, o = newFixture(t, tokenConfig)
	f.kubeadm = func(out io.Writer, args string, n int) error {
		if args == "reset -f" || n >= 2 {
			return nil
		}
		io.WriteString(out, kubeadmFailure("kubelet-start", "timed out waiting for the condition"))
		return errors.New("exit status 1")
	}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if l := stepLines(f, "kubeadm"); len(l) != 2 || !strings.Contains(l[0], "phase=kubelet-start") || !strings.Contains(l[1], `status=ok`) || !strings.Contains(l[1], "attempts=2") {
		t.Errorf("kubeadm step lines = %q", l)
	}

	// A failing reset ends the retries, naming it.
	f, o = newFixture(t, tokenConfig)
	f.kubeadm = func(out io.Writer, args string, n int) error {
		io.WriteString(out, "some output\n")
		return errors.New("exit status 1")
	}
	if err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "after attempt 1 failed in phase unknown, kubeadm reset -f: kubeadm reset: some output (exit status 1)") {
		t.Errorf("Run = %v", err)
	}
	if l := stepLines(f, "kubeadm"); len(l) != 1 || !strings.Contains(l[0], "status=fail latency=") || !strings.Contains(l[0], "phase=reset") {
		t.Errorf("kubeadm step lines = %q", l)
	}
}

// TestFollowerRetriesLonger: a masterFollower whose certificate key expired keeps retrying
// with a growing backoff until FollowerRetryFor, every retry naming kubeadm's phase.
func TestFollowerRetriesLonger(t *testing.T) {
	f, o := newFixture(t, followerConfig)
	bakeControlPlane(t, f.root)
	o.FollowerRetryFor = 200 * time.Millisecond
	o.KubeadmBackoff = 5 * time.Millisecond
	f.kubeadm = func(out io.Writer, args string, n int) error {
		if args == "reset -f" {
			return nil
		}
		io.WriteString(out, kubeadmFailure("control-plane-prepare/download-certs",
			"error downloading certs: error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one"))
		return errors.New("exit status 1")
	}
	start := time.Now()
	err := Run(context.Background(), o)
	took := time.Since(start)
	if err == nil {
		t.Fatal("Run succeeded")
	}
	lines := stepLines(f, "kubeadm")
	// Backoffs 5, 10, 20, 40, 80 ms fit 200 ms: at least 5 attempts, more than a node's.
	if len(lines) < 5 || took > 2*time.Second {
		t.Errorf("%d kubeadm lines in %s, want at least 5 within FollowerRetryFor:\n%s", len(lines), took, strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if !strings.Contains(l, "phase=control-plane-prepare/download-certs") {
			t.Errorf("line without the phase: %q", l)
		}
	}
	if !strings.Contains(lines[len(lines)-1], "status=fail") || !strings.Contains(lines[len(lines)-1], "This Secret might have expired") {
		t.Errorf("last line = %q", lines[len(lines)-1])
	}
	if !strings.Contains(lines[1], "retry-in=10ms") || !strings.Contains(lines[2], "retry-in=20ms") {
		t.Errorf("backoff does not grow: %q", lines[:3])
	}
	noSecrets(t, "the steps", f.steps.String())
}

// TestFollowerEtcdJoinNotRetried: a masterFollower whose join failed in
// control-plane-join/etcd is neither reset nor tried again. kubeadm may have added this
// machine's etcd member to the cluster already: with it unstarted a two-member cluster has no
// quorum, and kubeadm reset cannot remove it then (it found no etcd configuration: "Assuming
// external etcd") but deletes the local etcd's manifest and data, the one thing that could still
// restore the quorum. Seen in TestClusterThreeMachines under TCG: the retry after a reset found
// the API server gone. The step fails at once, naming the phase and what to check.
func TestFollowerEtcdJoinNotRetried(t *testing.T) {
	f, o := newFixture(t, followerConfig)
	bakeControlPlane(t, f.root)
	o.KubeadmBackoff = time.Millisecond
	f.kubeadm = func(out io.Writer, args string, n int) error {
		if args == "reset -f" {
			return nil
		}
		io.WriteString(out, kubeadmFailure("control-plane-join/etcd", "error creating local etcd static pod manifest file: context deadline exceeded"))
		return errors.New("exit status 1")
	}
	err := Run(context.Background(), o)
	if err == nil {
		t.Fatal("Run succeeded")
	}
	kubeadm := slices.DeleteFunc(slices.Clone(f.commands), func(c string) bool { return !strings.HasPrefix(c, "kubeadm ") })
	if want := []string{"kubeadm join --config " + render.KubeadmConfigPath}; !slices.Equal(kubeadm, want) {
		t.Errorf("kubeadm commands = %q, want %q (no reset, no retry)", kubeadm, want)
	}
	lines := stepLines(f, "kubeadm")
	if len(lines) != 1 || !strings.Contains(lines[0], "status=fail") || !strings.Contains(lines[0], `phase=control-plane-join/etcd command="kubeadm join" attempts=1`) ||
		!strings.Contains(lines[0], "not retried") || !strings.Contains(lines[0], "etcdctl member list") {
		t.Errorf("kubeadm step lines = %q", lines)
	}
	// A node never adds an etcd member: whatever its phase, it retries.
	f, o = newFixture(t, tokenConfig)
	o.KubeadmBackoff = time.Millisecond
	f.kubeadm = func(out io.Writer, args string, n int) error {
		if args == "reset -f" || n >= 2 {
			return nil
		}
		io.WriteString(out, kubeadmFailure("control-plane-join/etcd", "odd"))
		return errors.New("exit status 1")
	}
	if err := Run(context.Background(), o); err != nil {
		t.Errorf("node: %v", err)
	}
}

// TestFollowerResumesLatePhases: a masterFollower whose join failed after its etcd member joined
// (control-plane-join/update-status or mark-control-plane; the API server was too slow) is not
// reset: kubeadm reset could not reach the API server to remove the member and deleted the local
// etcd, leaving the cluster without quorum (seen in TestClusterThreeMachines). It runs the failed
// phase and those after it again (kubeadm join phase …) with the same backoff until they pass.
func TestFollowerResumesLatePhases(t *testing.T) {
	for _, failed := range []string{"control-plane-join/update-status", "control-plane-join/mark-control-plane"} {
		t.Run(failed, func(t *testing.T) {
			f, o := newFixture(t, followerConfig)
			bakeControlPlane(t, f.root)
			o.KubeadmBackoff = time.Millisecond
			cfg := "--config " + render.KubeadmConfigPath
			f.kubeadm = func(out io.Writer, args string, n int) error {
				switch {
				case args == "join "+cfg:
					io.WriteString(out, kubeadmFailure(failed, `error uploading configuration: Post "https://192.0.2.11:6443/api/v1/namespaces/kube-system/configmaps": context deadline exceeded`))
					return errors.New("exit status 1")
				case args == "join phase "+strings.ReplaceAll(failed, "/", " ")+" "+cfg && n == 1:
					io.WriteString(out, "error execution phase "+failed+": Patch \"https://192.0.2.11:6443/api/v1/nodes/master-2\": context deadline exceeded\n")
					return errors.New("exit status 1")
				}
				return nil
			}
			if err := Run(context.Background(), o); err != nil {
				t.Fatalf("%v\n%s", err, f.steps.String())
			}
			kubeadm := slices.DeleteFunc(slices.Clone(f.commands), func(c string) bool { return !strings.HasPrefix(c, "kubeadm ") })
			want := []string{"kubeadm join " + cfg, "kubeadm join phase " + strings.ReplaceAll(failed, "/", " ") + " " + cfg}
			if failed == "control-plane-join/update-status" {
				want = append(want, "kubeadm join phase control-plane-join update-status "+cfg)
			} else {
				want = append(want, "kubeadm join phase control-plane-join mark-control-plane "+cfg)
			}
			if failed == "control-plane-join/update-status" {
				want = append(want, "kubeadm join phase control-plane-join mark-control-plane "+cfg)
			}
			if !slices.Equal(kubeadm, want) {
				t.Errorf("kubeadm commands =\n%s\nwant (no reset)\n%s", strings.Join(kubeadm, "\n"), strings.Join(want, "\n"))
			}
			lines := stepLines(f, "kubeadm")
			if len(lines) != 3 || !strings.Contains(lines[0], "status=progress") || !strings.Contains(lines[0], "phase="+failed) ||
				!strings.Contains(lines[0], "resume="+failed) || !strings.Contains(lines[1], "phase="+failed) ||
				!strings.Contains(lines[2], "status=ok") || !strings.Contains(lines[2], "attempts=3") || !strings.Contains(lines[2], "resumed-from="+failed) {
				t.Errorf("kubeadm step lines:\n%s", strings.Join(lines, "\n"))
			}
		})
	}
}

// TestControlPlaneRoleNeedsImages: metadata naming a control-plane role the image cannot serve
// (no control-plane images baked) fails the render step, naming the role and the images.
func TestControlPlaneRoleNeedsImages(t *testing.T) {
	f, o := newFixture(t, followerConfig)
	err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "spec.role: this image cannot serve role masterFollower: kubeadm 1.21.13 needs control-plane images it does not bake (nothing is pulled at boot): registry.imgctl.invalid/kubernetes/kube-apiserver:v1.21.13, ") {
		t.Errorf("Run = %v", err)
	}
	if got := f.lines(); got[len(got)-1] != "render=fail" || len(f.commands) != 0 {
		t.Errorf("steps = %q, commands %q", got, f.commands)
	}
	noSecrets(t, "the steps", f.steps.String())
}

// TestRedactingWriter: lines are redacted whole however they arrive; an overlong line is cut,
// never inside a secret; the tail is bounded.
func TestRedactingWriter(t *testing.T) {
	const sec = "abcdef.0123456789abcdef"
	var out strings.Builder
	w := newRedactingWriter(&out, []string{sec, ""})
	for _, c := range "token " + sec + " ok\n" {
		fmt.Fprint(w, string(c))
	}
	io.WriteString(w, strings.Repeat("x", maxLineBytes-5)+sec) // no newline yet: cut before the secret
	io.WriteString(w, "y\n")
	for i := range kubeadmTailLines + 5 {
		fmt.Fprintf(w, "line %d\n", i)
	}
	io.WriteString(w, "last")
	w.Flush()
	got := out.String()
	if strings.Contains(got, "0123456789abcdef") {
		t.Errorf("output shows the secret")
	}
	if !strings.HasPrefix(got, "token REDACTED ok\n"+strings.Repeat("x", maxLineBytes-5)+"\nREDACTEDy\n") {
		t.Errorf("output starts %q", got[:min(len(got), 80)])
	}
	tail := w.Tail()
	if len(tail) != kubeadmTailLines || tail[len(tail)-1] != "last" {
		t.Errorf("tail has %d lines, last %q", len(tail), tail[len(tail)-1])
	}
}

// TestConfigurationUnitBounds: kube-node-configuration.service gives configure time for its
// longest bounded run (a masterFollower's retries) and never restarts it.
func TestConfigurationUnitBounds(t *testing.T) {
	b, err := os.ReadFile("../../../../scripts/bootstrap/root/usr/lib/systemd/system/kube-node-configuration.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	m := regexp.MustCompile(`(?m)^TimeoutStartSec=(\d+)min$`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatalf("no TimeoutStartSec=Nmin in the unit:\n%s", unit)
	}
	timeout, _ := time.ParseDuration(m[1] + "m")
	follower := DefaultFollowerRetryFor + DefaultKubeadmAttemptTimeout + 2*DefaultReadyTimeout + 5*time.Minute
	node := NodeJoinAttempts*DefaultKubeadmAttemptTimeout + (NodeJoinAttempts-1)*MaxKubeadmBackoff + 2*DefaultReadyTimeout
	if timeout < follower || timeout < node {
		t.Errorf("TimeoutStartSec=%s is shorter than configure's bounds (masterFollower %s, node %s)", timeout, follower, node)
	}
	if regexp.MustCompile(`(?m)^Restart=`).MatchString(unit) {
		t.Errorf("the unit restarts configure: a failed join would loop")
	}
}

// TestAdminKubeconfig: after kubeadm succeeded, a control-plane node copies
// /etc/kubernetes/admin.conf to spec.cluster.adminKubeconfig, mode 0600, and nowhere else; a
// failed kubeadm copies nothing; a dry run names the copy.
func TestAdminKubeconfig(t *testing.T) {
	const admin = "apiVersion: v1\nkind: Config\n# admin credentials\n"
	for _, tc := range []struct{ name, yaml string }{
		{"master", masterConfig + "    adminKubeconfig: /root/.kube/config\n"},
		{"masterFollower", strings.Replace(followerConfig, "  credentials:\n", "    adminKubeconfig: /root/.kube/config\n  credentials:\n", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, o := newFixture(t, tc.yaml)
			bakeControlPlane(t, f.root)
			f.kubeadm = func(out io.Writer, args string, n int) error {
				return writeFile(f.root, "/etc/kubernetes/admin.conf", 0o600, []byte(admin))
			}
			if err := Run(context.Background(), o); err != nil {
				t.Fatalf("%v\n%s", err, f.steps.String())
			}
			p := filepath.Join(f.root, "root/.kube/config")
			b, err := os.ReadFile(p)
			if err != nil || string(b) != admin {
				t.Fatalf("admin kubeconfig = %q, %v", b, err)
			}
			if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
			if l := stepLines(f, "admin-kubeconfig"); len(l) != 1 || !strings.Contains(l[0], "status=ok") || !strings.Contains(l[0], "path=/root/.kube/config") {
				t.Errorf("admin-kubeconfig lines = %q", l)
			}
			if got := f.lines(); slices.Index(got, "admin-kubeconfig=ok") != slices.Index(got, "kubeadm=ok")+1 {
				t.Errorf("steps = %q, want admin-kubeconfig right after kubeadm", got)
			}
		})
	}

	// Without the field: no copy, no line.
	f, o := newFixture(t, masterConfig)
	bakeControlPlane(t, f.root)
	f.kubeadm = func(out io.Writer, args string, n int) error {
		return writeFile(f.root, "/etc/kubernetes/admin.conf", 0o600, []byte(admin))
	}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if l := stepLines(f, "admin-kubeconfig"); len(l) != 0 {
		t.Errorf("admin-kubeconfig lines without the field: %q", l)
	}

	// kubeadm failed: nothing copied. kubeadm succeeded without admin.conf: the step fails.
	f, o = newFixture(t, masterConfig+"    adminKubeconfig: /root/.kube/config\n")
	bakeControlPlane(t, f.root)
	f.kubeadm = func(out io.Writer, args string, n int) error { return errors.New("exit status 1") }
	if err := Run(context.Background(), o); err == nil {
		t.Fatal("Run succeeded")
	}
	if _, err := os.Stat(filepath.Join(f.root, "root/.kube/config")); err == nil {
		t.Error("copied after a failed kubeadm")
	}
	f, o = newFixture(t, masterConfig+"    adminKubeconfig: /root/.kube/config\n")
	bakeControlPlane(t, f.root)
	f.kubeadm = func(out io.Writer, args string, n int) error { return nil }
	if err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "/etc/kubernetes/admin.conf") {
		t.Errorf("Run without admin.conf = %v", err)
	}

	// A dry run says what it would copy.
	f, o = newFixture(t, masterConfig+"    adminKubeconfig: /root/.kube/config\n")
	bakeControlPlane(t, f.root)
	o.DryRun = true
	failingFixture(t, &o)
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if l := stepLines(f, "admin-kubeconfig"); len(l) != 1 || !strings.Contains(l[0], "status=skip") || !strings.Contains(l[0], "path=/root/.kube/config") {
		t.Errorf("dry-run admin-kubeconfig lines = %q", l)
	}
}

// TestMasterWithTokenAndCertificateKey: a master whose NodeConfig carries the token and
// certificate key the other machines join with runs kubeadm init --upload-certs, and neither
// reaches the console.
func TestMasterWithTokenAndCertificateKey(t *testing.T) {
	f, o := newFixture(t, masterConfig+"  credentials:\n    bootstrapToken: abcdef.0123456789abcdef\n    certificateKey: "+testCertKey+"\n")
	bakeControlPlane(t, f.root)
	f.kubeadm = func(out io.Writer, args string, n int) error {
		fmt.Fprintf(out, "[bootstrap-token] Using token: abcdef.0123456789abcdef\n[upload-certs] Using certificate key:\n%s\n", testCertKey)
		return nil
	}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if want := "kubeadm init --config " + render.KubeadmConfigPath + " --upload-certs"; !slices.Contains(f.commands, want) {
		t.Errorf("commands = %q, want %q", f.commands, want)
	}
	noSecrets(t, "the output", f.output.String())
	if !strings.Contains(f.output.String(), "Using token: REDACTED\n") {
		t.Errorf("output:\n%s", f.output.String())
	}
}

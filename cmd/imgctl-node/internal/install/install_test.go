package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/imageinfo"
)

// fixture is a fake node root on which every step succeeds, with recording fakes for the
// command runner and swapoff.
type fixture struct {
	t        *testing.T
	root     string
	out      bytes.Buffer
	runs     [][]string
	runErr   error
	swapoffs []string
	swapErr  error
	bins     map[string]string // node path → content
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, root: t.TempDir(), bins: map[string]string{
		"/usr/bin/kubelet":           "kubelet binary",
		"/usr/bin/kubeadm":           "kubeadm binary",
		"/usr/local/bin/imgctl-node": "imgctl-node binary",
	}}
	for p, content := range f.bins {
		f.write(p, content, 0o755)
	}
	f.writeManifest(f.manifest())
	for k := range DefaultSysctls() {
		rel, err := sysctlPath(k)
		if err != nil {
			t.Fatal(err)
		}
		f.write(filepath.Join("/proc/sys", rel), "0\n", 0o644)
	}
	f.write("/proc/modules", "", 0o444)
	f.write("/proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n", 0o444)
	return f
}

// write creates the file at node path p under the root.
func (f *fixture) write(p, content string, mode fs.FileMode) {
	f.t.Helper()
	full := filepath.Join(f.root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), mode); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) read(p string) string {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root, p))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

func digest(content string) string {
	sum := sha256.Sum256([]byte(content))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// manifest is an image.json describing f.bins as they are on disk.
func (f *fixture) manifest() *imageinfo.Info {
	info := &imageinfo.Info{SchemaVersion: imageinfo.SchemaVersion, Name: "test", Kubernetes: "1.21.13",
		Binaries: map[string]string{}}
	for p, content := range f.bins {
		info.Binaries[p] = digest(content)
	}
	return info
}

func (f *fixture) writeManifest(info *imageinfo.Info) {
	f.t.Helper()
	b, err := info.Marshal()
	if err != nil {
		f.t.Fatal(err)
	}
	f.write(imageinfo.Path, string(b), 0o644)
}

func (f *fixture) options() Options {
	return Options{
		Root:  f.root,
		Steps: steplog.New(&f.out),
		Run: func(_ context.Context, name string, args ...string) error {
			f.runs = append(f.runs, append([]string{name}, args...))
			return f.runErr
		},
		Swapoff: func(path string) error {
			f.swapoffs = append(f.swapoffs, path)
			return f.swapErr
		},
		Parallel: 2,
	}
}

// run runs Run with f.options() changed by edit, and returns its step lines and error.
func (f *fixture) run(edit func(*Options)) ([]stepLine, error) {
	f.t.Helper()
	o := f.options()
	if edit != nil {
		edit(&o)
	}
	f.out.Reset()
	err := Run(context.Background(), o)
	return parseLines(f.t, f.out.String()), err
}

// stepLine is one parsed console line.
type stepLine struct {
	step, status string
	kv           map[string]string
}

// parseLines parses step lines: `imgctl-node step=NAME status=S latency=Nms k=v k="quoted"…`.
func parseLines(t *testing.T, out string) []stepLine {
	t.Helper()
	var lines []stepLine
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if l == "" {
			continue
		}
		rest, ok := strings.CutPrefix(l, "imgctl-node ")
		if !ok {
			t.Fatalf("not a step line: %q", l)
		}
		kv := map[string]string{}
		for rest != "" {
			k, v, ok := strings.Cut(rest, "=")
			if !ok || k == "" || strings.Contains(k, " ") {
				t.Fatalf("bad key in %q", l)
			}
			if strings.HasPrefix(v, `"`) {
				q, err := strconv.QuotedPrefix(v)
				if err != nil {
					t.Fatalf("bad quoting in %q: %v", l, err)
				}
				rest = strings.TrimPrefix(v[len(q):], " ")
				if v, err = strconv.Unquote(q); err != nil {
					t.Fatal(err)
				}
				kv[k] = v
				continue
			}
			v, rest, _ = strings.Cut(v, " ")
			kv[k] = v
		}
		lat := kv["latency"]
		if n, err := strconv.Atoi(strings.TrimSuffix(lat, "ms")); !strings.HasSuffix(lat, "ms") || err != nil || n < 0 {
			t.Errorf("bad latency in %q", l)
		}
		lines = append(lines, stepLine{step: kv["step"], status: kv["status"], kv: kv})
	}
	return lines
}

func TestRunAllSteps(t *testing.T) {
	f := newFixture(t)
	f.write("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/dev/vda3 partition 1048572 0 -2\n", 0o444)
	lines, err := f.run(nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []struct{ step, status string }{
		{StepVerifyBinaries, steplog.OK}, {StepModules, steplog.OK}, {StepSysctl, steplog.OK},
		{StepDirectories, steplog.OK}, {StepSwapOff, steplog.OK},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), f.out.String())
	}
	for i, w := range want {
		if lines[i].step != w.step || lines[i].status != w.status {
			t.Errorf("line %d: step=%s status=%s, want step=%s status=%s", i, lines[i].step, lines[i].status, w.step, w.status)
		}
	}
	var size int
	for _, c := range f.bins {
		size += len(c)
	}
	checkKV(t, lines[0], map[string]string{"files": "3", "bytes": strconv.Itoa(size)})
	checkKV(t, lines[1], map[string]string{"loaded": "overlay,br_netfilter"})
	checkKV(t, lines[2], map[string]string{"keys": "9", "file": SysctlFile})
	checkKV(t, lines[3], map[string]string{"created": strconv.Itoa(len(directories)), "existing": "0"})
	checkKV(t, lines[4], map[string]string{"swaps": "1"})
	if len(f.swapoffs) != 1 || f.swapoffs[0] != "/dev/vda3" {
		t.Errorf("swapoff calls %q", f.swapoffs)
	}
}

func checkKV(t *testing.T, l stepLine, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if l.kv[k] != v {
			t.Errorf("step=%s: %s=%q, want %q (line %v)", l.step, k, l.kv[k], v, l.kv)
		}
	}
}

func TestRunCanceled(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Run(ctx, f.options())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
	lines := parseLines(t, f.out.String())
	if len(lines) != 1 || lines[0].step != StepVerifyBinaries || lines[0].status != steplog.Fail {
		t.Fatalf("lines:\n%s", f.out.String())
	}
	if len(f.runs) != 0 {
		t.Errorf("ran %q after cancellation", f.runs)
	}
}

func TestVerifyBinaries(t *testing.T) {
	const (
		kubelet = "/usr/bin/kubelet"
		kubeadm = "/usr/bin/kubeadm"
		agent   = "/usr/local/bin/imgctl-node"
	)
	tests := []struct {
		name   string
		setup  func(f *fixture)
		status string
		kv     map[string]string
		want   []string // substrings of the error
		is     error
	}{
		{
			name:   "ok",
			status: steplog.OK,
			kv:     map[string]string{"files": "3", "bytes": "46"},
		},
		{
			name:   "tampered",
			setup:  func(f *fixture) { f.write(kubelet, "evil kubelet", 0o755) },
			status: steplog.Fail,
			kv:     map[string]string{"bad": "1"},
			want: []string{"1 of 3 binaries fail verification against the image manifest /etc/imgctl/image.json",
				kubelet + ": sha256 mismatch: image manifest has " + digest("kubelet binary") + ", file has " + digest("evil kubelet")},
			is: ErrMismatch,
		},
		{
			name: "several bad files all listed",
			setup: func(f *fixture) {
				f.write(kubelet, "evil kubelet", 0o755)
				f.write(kubeadm, "evil kubeadm", 0o755)
				if err := os.Remove(filepath.Join(f.root, agent)); err != nil {
					t.Fatal(err)
				}
			},
			status: steplog.Fail,
			kv:     map[string]string{"bad": "3"},
			want: []string{"3 of 3 binaries",
				kubelet + ": sha256 mismatch: image manifest has " + digest("kubelet binary") + ", file has " + digest("evil kubelet"),
				kubeadm + ": sha256 mismatch: image manifest has " + digest("kubeadm binary") + ", file has " + digest("evil kubeadm"),
				agent + ": missing"},
			is: ErrMismatch,
		},
		{
			name: "missing file",
			setup: func(f *fixture) {
				if err := os.Remove(filepath.Join(f.root, kubeadm)); err != nil {
					t.Fatal(err)
				}
			},
			status: steplog.Fail,
			want:   []string{kubeadm + ": missing: no such file or directory"},
			is:     fs.ErrNotExist,
		},
		{
			name: "directory instead of a binary",
			setup: func(f *fixture) {
				p := filepath.Join(f.root, kubelet)
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			status: steplog.Fail,
			want:   []string{kubelet + ": not a regular file (a directory)"},
		},
		{
			name: "no image.json",
			setup: func(f *fixture) {
				if err := os.Remove(filepath.Join(f.root, imageinfo.Path)); err != nil {
					t.Fatal(err)
				}
			},
			status: steplog.Fail,
			want:   []string{"image manifest: open ", "/etc/imgctl/image.json: no such file or directory"},
			is:     fs.ErrNotExist,
		},
		{
			name:   "malformed image.json",
			setup:  func(f *fixture) { f.write(imageinfo.Path, `{"schemaVersion": 1, "kubernetes": `, 0o644) },
			status: steplog.Fail,
			want:   []string{"image manifest: ", "/etc/imgctl/image.json: unexpected EOF"},
		},
		{
			name: "bad digest in image.json",
			setup: func(f *fixture) {
				f.write(imageinfo.Path, `{"schemaVersion":1,"kubernetes":"1.21.13","sourceDateEpoch":0,"binaries":{"/usr/bin/kubelet":"md5:00"}}`, 0o644)
			},
			status: steplog.Fail,
			want:   []string{"/etc/imgctl/image.json: binaries[/usr/bin/kubelet]"},
		},
		{
			name: "no binaries listed",
			setup: func(f *fixture) {
				f.writeManifest(&imageinfo.Info{SchemaVersion: imageinfo.SchemaVersion, Kubernetes: "1.21.13"})
			},
			status: steplog.Skip,
			kv:     map[string]string{"files": "0"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			lines, err := f.run(nil)
			if len(lines) == 0 || lines[0].step != StepVerifyBinaries || lines[0].status != tc.status {
				t.Fatalf("want step=%s status=%s first; got\n%s", StepVerifyBinaries, tc.status, f.out.String())
			}
			checkKV(t, lines[0], tc.kv)
			if tc.status != steplog.Fail {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Run succeeded")
			}
			if len(lines) != 1 || len(f.runs) != 0 {
				t.Errorf("Run went on after the failure:\n%s", f.out.String())
			}
			if !strings.HasPrefix(err.Error(), StepVerifyBinaries+": ") {
				t.Errorf("error %q does not name the step", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
				if !strings.Contains(lines[0].kv["err"], w) {
					t.Errorf("step line's err lacks %q: %s", w, lines[0].kv["err"])
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error does not match %v: %v", tc.is, err)
			}
		})
	}
}

// TestVerifyBinariesParallelism hashes more files than workers, with every other one bad.
func TestVerifyBinariesParallelism(t *testing.T) {
	f := newFixture(t)
	f.bins = map[string]string{}
	for i := range 40 {
		p := fmt.Sprintf("/opt/bin/b%02d", i)
		f.bins[p] = strings.Repeat(strconv.Itoa(i), 100_000+i)
		f.write(p, f.bins[p], 0o755)
	}
	f.writeManifest(f.manifest())
	for i := 0; i < 40; i += 2 {
		f.write(fmt.Sprintf("/opt/bin/b%02d", i), "changed", 0o755)
	}
	for _, par := range []int{1, 3, 64} {
		_, err := f.run(func(o *Options) { o.Parallel = par })
		if err == nil {
			t.Fatalf("parallel=%d: no error", par)
		}
		for i := range 40 {
			name := fmt.Sprintf("/opt/bin/b%02d: ", i)
			if got, want := strings.Contains(err.Error(), name), i%2 == 0; got != want {
				t.Errorf("parallel=%d: error names %s: %v, want %v", par, name, got, want)
			}
		}
	}
}

func TestModules(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fixture)
		modules []string
		runs    [][]string
		status  string
		kv      map[string]string
	}{
		{
			name:   "none loaded",
			runs:   [][]string{{"modprobe", "-a", "--", "overlay", "br_netfilter"}},
			status: steplog.OK,
			kv:     map[string]string{"loaded": "overlay,br_netfilter"},
		},
		{
			name: "one loaded",
			setup: func(f *fixture) {
				f.write("/proc/modules", "overlay 151552 0 - Live 0x0000000000000000\next4 1003520 1 - Live 0x0000000000000000\n", 0o444)
			},
			runs:   [][]string{{"modprobe", "-a", "--", "br_netfilter"}},
			status: steplog.OK,
			kv:     map[string]string{"loaded": "br_netfilter", "already": "overlay"},
		},
		{
			name: "loaded and built in",
			setup: func(f *fixture) {
				f.write("/proc/modules", "br_netfilter 32768 0 - Live 0x0000000000000000\n", 0o444)
				if err := os.MkdirAll(filepath.Join(f.root, "sys/module/overlay/parameters"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
			status: steplog.Skip,
			kv:     map[string]string{"already": "overlay,br_netfilter"},
		},
		{
			name: "dash spelling matches /proc/modules",
			setup: func(f *fixture) {
				f.write("/proc/modules", "br_netfilter 32768 0 - Live 0x0000000000000000\n", 0o444)
			},
			modules: []string{"br-netfilter", "nf_conntrack"},
			runs:    [][]string{{"modprobe", "-a", "--", "nf_conntrack"}},
			status:  steplog.OK,
			kv:      map[string]string{"loaded": "nf_conntrack", "already": "br-netfilter"},
		},
		{
			name:    "none configured",
			modules: []string{},
			status:  steplog.Skip,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			lines, err := f.run(func(o *Options) { o.Modules = tc.modules })
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			l := lines[1]
			if l.step != StepModules || l.status != tc.status {
				t.Fatalf("got step=%s status=%s, want modules %s", l.step, l.status, tc.status)
			}
			checkKV(t, l, tc.kv)
			if !slices.EqualFunc(f.runs, tc.runs, slices.Equal) {
				t.Errorf("runs %q, want %q", f.runs, tc.runs)
			}
		})
	}
}

func TestModulesBadName(t *testing.T) {
	f := newFixture(t)
	lines, err := f.run(func(o *Options) { o.Modules = []string{"overlay", "-r"} })
	if err == nil || !strings.Contains(err.Error(), `bad module name "-r"`) {
		t.Fatalf("Run: %v", err)
	}
	if len(f.runs) != 0 || lines[len(lines)-1].status != steplog.Fail {
		t.Errorf("runs %q, lines\n%s", f.runs, f.out.String())
	}
}

// fakeCommand puts an executable shell script named name first in PATH.
func fakeCommand(t *testing.T, name, script string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// TestModulesDefaultRunner runs the real exec runner against a fake modprobe.
func TestModulesDefaultRunner(t *testing.T) {
	t.Run("ok", func(t *testing.T) {
		f := newFixture(t)
		args := filepath.Join(t.TempDir(), "args")
		fakeCommand(t, "modprobe", `echo "$@" > `+args+"\n")
		_, err := f.run(func(o *Options) { o.Run = nil })
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		got, err := os.ReadFile(args)
		if err != nil || string(got) != "-a -- overlay br_netfilter\n" {
			t.Errorf("modprobe got %q (%v)", got, err)
		}
	})
	t.Run("failure", func(t *testing.T) {
		f := newFixture(t)
		fakeCommand(t, "modprobe", `echo "modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/6.1.0" >&2; exit 1`+"\n")
		lines, err := f.run(func(o *Options) { o.Run = nil })
		const stderr = "modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/6.1.0"
		if err == nil || !strings.Contains(err.Error(), stderr) || !strings.Contains(err.Error(), "exit status 1") {
			t.Fatalf("Run: %v", err)
		}
		if len(lines) != 2 || lines[1].step != StepModules || lines[1].status != steplog.Fail {
			t.Fatalf("lines:\n%s", f.out.String())
		}
		if !strings.Contains(lines[1].kv["err"], stderr) {
			t.Errorf("step line lacks modprobe's stderr: %v", lines[1].kv)
		}
	})
}

func TestSysctl(t *testing.T) {
	f := newFixture(t)
	lines, err := f.run(nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for k, v := range DefaultSysctls() {
		rel, _ := sysctlPath(k)
		if got := f.read(filepath.Join("/proc/sys", rel)); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	want := `# Written by imgctl-node (kube-node-installation.service) at every boot: the kernel
# settings kubeadm and the kubelet need. Local changes belong in a later file.
kernel.keys.root_maxbytes = 25000000
kernel.keys.root_maxkeys = 1000000
kernel.panic = 10
kernel.panic_on_oops = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.bridge.bridge-nf-call-iptables = 1
net.ipv4.ip_forward = 1
vm.overcommit_memory = 1
vm.panic_on_oom = 0
`
	if got := f.read(SysctlFile); got != want {
		t.Errorf("%s:\n%s\nwant\n%s", SysctlFile, got, want)
	}
	fi, err := os.Stat(filepath.Join(f.root, SysctlFile))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("%s: %v %v", SysctlFile, fi.Mode(), err)
	}
	if _, ok := lines[2].kv["persisted"]; ok {
		t.Errorf("first run: %v", lines[2].kv)
	}
	// A second run finds the same content and leaves the file alone.
	if lines, err = f.run(nil); err != nil || lines[2].kv["persisted"] != "unchanged" {
		t.Errorf("second run: %v %v", err, lines[2].kv)
	}
	entries, _ := os.ReadDir(filepath.Join(f.root, "etc/sysctl.d"))
	if len(entries) != 1 {
		t.Errorf("etc/sysctl.d holds %d entries, want 1 (no temp files left)", len(entries))
	}
}

func TestSysctlCustomAndSlashes(t *testing.T) {
	f := newFixture(t)
	f.write("/proc/sys/net/ipv4/conf/eth0.1/forwarding", "0", 0o644)
	f.write("/proc/sys/fs/inotify/max_user_watches", "0", 0o644)
	sysctls := map[string]string{
		"net.ipv4.conf.eth0/1.forwarding": "1",
		"fs/inotify/max_user_watches":     "524288",
	}
	if _, err := f.run(func(o *Options) { o.Sysctls = sysctls }); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := f.read("/proc/sys/net/ipv4/conf/eth0.1/forwarding"); got != "1" {
		t.Errorf("eth0.1 forwarding %q", got)
	}
	if got := f.read("/proc/sys/fs/inotify/max_user_watches"); got != "524288" {
		t.Errorf("max_user_watches %q", got)
	}
	if got := f.read(SysctlFile); !strings.HasSuffix(got, "fs/inotify/max_user_watches = 524288\nnet.ipv4.conf.eth0/1.forwarding = 1\n") {
		t.Errorf("persisted:\n%s", got)
	}
}

func TestSysctlErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fixture)
		sysctls map[string]string
		want    []string
	}{
		{
			name: "unknown key",
			setup: func(f *fixture) {
				if err := os.Remove(filepath.Join(f.root, "proc/sys/vm/panic_on_oom")); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"sysctl vm.panic_on_oom: open ", "/proc/sys/vm/panic_on_oom: no such file or directory (unknown key, or its module is not loaded)"},
		},
		{
			name: "unwritable key",
			setup: func(f *fixture) {
				p := filepath.Join(f.root, "proc/sys/net/ipv4/ip_forward")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"sysctl net.ipv4.ip_forward: open ", "/proc/sys/net/ipv4/ip_forward: is a directory"},
		},
		{
			name:    "bad name",
			sysctls: map[string]string{"net..ipv4": "1"},
			want:    []string{`sysctl "net..ipv4": bad name`},
		},
		{
			name:    "escaping name",
			sysctls: map[string]string{"../../etc/passwd": "1"},
			want:    []string{`sysctl "../../etc/passwd": bad name`},
		},
		{
			name:    "multi-line value",
			sysctls: map[string]string{"net.ipv4.ip_forward": "1\nkernel.panic = 0"},
			want:    []string{"sysctl net.ipv4.ip_forward: value", "spans lines"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			lines, err := f.run(func(o *Options) { o.Sysctls = tc.sysctls })
			if err == nil {
				t.Fatal("Run succeeded")
			}
			last := lines[len(lines)-1]
			if last.step != StepSysctl || last.status != steplog.Fail {
				t.Fatalf("lines:\n%s", f.out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if _, err := os.Stat(filepath.Join(f.root, SysctlFile)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s written despite the failure (%v)", SysctlFile, err)
			}
		})
	}
}

func TestSysctlPath(t *testing.T) {
	for key, want := range map[string]string{
		"net.ipv4.ip_forward":             "net/ipv4/ip_forward",
		"net/ipv4/ip_forward":             "net/ipv4/ip_forward",
		"net.ipv4.conf.eth0/1.forwarding": "net/ipv4/conf/eth0.1/forwarding",
		"net/ipv4/conf/eth0.1/forwarding": "net/ipv4/conf/eth0.1/forwarding",
		"kernel":                          "kernel",
		"":                                "",
		"net.ipv4.":                       "",
		"/net/ipv4":                       "",
		"net.ipv4 .x":                     "",
		"net/../../x":                     "",
	} {
		got, err := sysctlPath(key)
		if want == "" {
			if err == nil {
				t.Errorf("%q: got %q, want an error", key, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: got %q, %v; want %q", key, got, err, want)
		}
	}
}

func TestDirectories(t *testing.T) {
	// A strict umask must not change the modes (the tests in this package do not run in parallel).
	defer syscall.Umask(syscall.Umask(0o077))
	f := newFixture(t)
	// One exists already with another mode: it is left alone.
	if err := os.Mkdir(filepath.Join(f.root, "etc/containerd"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(f.root, "etc/containerd"), 0o750); err != nil {
		t.Fatal(err)
	}
	lines, err := f.run(nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkKV(t, lines[3], map[string]string{"created": strconv.Itoa(len(directories) - 1), "existing": "1"})
	for _, d := range directories {
		fi, err := os.Stat(filepath.Join(f.root, d.path))
		if err != nil {
			t.Fatal(err)
		}
		want := d.mode
		if d.path == "/etc/containerd" {
			want = 0o750
		}
		if !fi.IsDir() || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, want a directory with mode %v", d.path, fi.Mode(), want)
		}
	}
	// Unlisted parents get 0755.
	for _, p := range []string{"/opt", "/opt/cni", "/var/lib", "/var/log"} {
		if fi, err := os.Stat(filepath.Join(f.root, p)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", p, fi.Mode(), err)
		}
	}
	if lines, err = f.run(nil); err != nil {
		t.Fatalf("second Run: %v", err)
	}
	checkKV(t, lines[3], map[string]string{"created": "0", "existing": strconv.Itoa(len(directories))})
}

func TestDirectoriesKubeletExpects(t *testing.T) {
	var paths []string
	for _, d := range directories {
		paths = append(paths, d.path)
	}
	for _, p := range []string{"/etc/kubernetes/manifests", "/etc/kubernetes/pki", "/var/lib/kubelet/pki",
		"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/containerd", "/var/log/pods", "/var/log/containers",
		"/etc/containerd", "/var/lib/imgctl"} {
		if !slices.Contains(paths, p) {
			t.Errorf("%s is not created", p)
		}
	}
	for i, d := range directories {
		if d.mode&0o022 != 0 || d.mode&^fs.ModePerm != 0 {
			t.Errorf("%s: mode %v is writable by others or not a permission", d.path, d.mode)
		}
		if i > 0 && strings.HasPrefix(directories[i-1].path, d.path+"/") {
			t.Errorf("%s comes after its child %s", d.path, directories[i-1].path)
		}
	}
}

func TestDirectoriesBlocked(t *testing.T) {
	f := newFixture(t)
	f.write("/etc/cni", "not a directory", 0o644)
	lines, err := f.run(nil)
	if err == nil || !strings.Contains(err.Error(), "directory /etc/cni: exists and is not a directory") {
		t.Fatalf("Run: %v", err)
	}
	last := lines[len(lines)-1]
	if last.step != StepDirectories || last.status != steplog.Fail {
		t.Fatalf("lines:\n%s", f.out.String())
	}
}

func TestSwapOff(t *testing.T) {
	const header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
	tests := []struct {
		name     string
		swaps    string // "" : no /proc/swaps at all
		swapErr  error
		runErr   error
		status   string
		swapoffs []string
		runs     [][]string
		wantErr  []string
	}{
		{
			name:     "two active",
			swaps:    header + "/dev/vda3                               partition\t1048572\t\t0\t\t-2\n/var/swap\\040file                       file\t\t524284\t\t0\t\t-3\n",
			status:   steplog.OK,
			swapoffs: []string{"/dev/vda3", "/var/swap file"},
		},
		{
			name:   "none active",
			swaps:  header,
			status: steplog.Skip,
		},
		{
			name:   "no /proc/swaps",
			status: steplog.Skip,
		},
		{
			name:     "syscall fails, swapoff(8) works",
			swaps:    header + "/dev/vda3 partition 1048572 0 -2\n",
			swapErr:  errors.New("swapoff: cannot allocate memory"),
			status:   steplog.OK,
			swapoffs: []string{"/dev/vda3"},
			runs:     [][]string{{"swapoff", "--", "/dev/vda3"}},
		},
		{
			name:     "both fail",
			swaps:    header + "/dev/vda3 partition 1048572 0 -2\n/dev/vda4 partition 1048572 0 -3\n",
			swapErr:  errors.New("swapoff: cannot allocate memory"),
			runErr:   errors.New("swapoff /dev/vdaN: exit status 255: swapoff failed"),
			status:   steplog.Fail,
			swapoffs: []string{"/dev/vda3", "/dev/vda4"},
			runs:     [][]string{{"swapoff", "--", "/dev/vda3"}, {"swapoff", "--", "/dev/vda4"}},
			wantErr: []string{"swapoff /dev/vda3: swapoff: cannot allocate memory (then swapoff /dev/vdaN: exit status 255",
				"swapoff /dev/vda4: "},
		},
		{
			name:    "bad escape",
			swaps:   header + "/dev/vda\\04 partition 1 0 -2\n",
			status:  steplog.Fail,
			wantErr: []string{"/proc/swaps: bad escape"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.swaps == "" {
				if err := os.Remove(filepath.Join(f.root, "proc/swaps")); err != nil {
					t.Fatal(err)
				}
			} else {
				f.write("/proc/swaps", tc.swaps, 0o444)
			}
			f.swapErr, f.runErr = tc.swapErr, tc.runErr
			lines, err := f.run(func(o *Options) { o.Modules = []string{} })
			last := lines[len(lines)-1]
			if len(lines) != 5 || last.step != StepSwapOff || last.status != tc.status {
				t.Fatalf("lines:\n%s", f.out.String())
			}
			if !slices.Equal(f.swapoffs, tc.swapoffs) {
				t.Errorf("swapoff calls %q, want %q", f.swapoffs, tc.swapoffs)
			}
			if !slices.EqualFunc(f.runs, tc.runs, slices.Equal) {
				t.Errorf("runs %q, want %q", f.runs, tc.runs)
			}
			if (tc.status == steplog.Fail) != (err != nil) {
				t.Fatalf("Run: %v", err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if tc.swapErr != nil && err != nil && !errors.Is(err, tc.swapErr) {
				t.Errorf("error does not wrap the syscall's: %v", err)
			}
		})
	}
}

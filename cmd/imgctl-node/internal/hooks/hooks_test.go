package hooks

import (
	"bytes"
	"context"
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
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// env is a test root with a phase directory and a log file hooks append to.
type env struct {
	t         *testing.T
	root, dir string
	log       string // hooks append their name here
	steps     bytes.Buffer
	output    bytes.Buffer
}

func newEnv(t *testing.T, phase string) *env {
	t.Helper()
	e := &env{t: t, root: t.TempDir()}
	e.dir = filepath.Join(e.root, Dir, phase+".d")
	if err := os.MkdirAll(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.log = filepath.Join(t.TempDir(), "ran")
	return e
}

// hook writes a shell script named name into the phase directory.
func (e *env) hook(name, body string, mode fs.FileMode) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	script := "#!/bin/sh\necho " + name + " >> " + e.log + "\n" + body
	if err := os.WriteFile(p, []byte(script), mode); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// ran lists the hooks that ran, in order.
func (e *env) ran() []string {
	e.t.Helper()
	b, err := os.ReadFile(e.log)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Fields(string(b))
}

func (e *env) options(phase string) Options {
	return Options{Root: e.root, Phase: phase, Steps: steplog.New(&e.steps), Output: &e.output}
}

// lines parses the step lines into their fields (values unquoted).
func (e *env) lines() []map[string]string {
	e.t.Helper()
	var out []map[string]string
	for _, l := range strings.Split(strings.TrimSuffix(e.steps.String(), "\n"), "\n") {
		if l == "" {
			continue
		}
		rest, ok := strings.CutPrefix(l, "imgctl-node ")
		if !ok {
			e.t.Fatalf("not a step line: %q", l)
		}
		kv := map[string]string{}
		for rest != "" {
			k, v, ok := strings.Cut(rest, "=")
			if !ok {
				e.t.Fatalf("bad field in %q", l)
			}
			if strings.HasPrefix(v, `"`) {
				q, err := strconv.QuotedPrefix(v)
				if err != nil {
					e.t.Fatalf("bad quoting in %q", l)
				}
				rest = strings.TrimPrefix(v[len(q):], " ")
				kv[k], _ = strconv.Unquote(q)
				continue
			}
			kv[k], rest, _ = strings.Cut(v, " ")
		}
		if kv["step"] != StepName || !strings.HasSuffix(kv["latency"], "ms") {
			e.t.Errorf("bad line %q", l)
		}
		out = append(out, kv)
	}
	return out
}

func TestOrderEnvAndOutput(t *testing.T) {
	e := newEnv(t, PreInstall)
	e.hook("20-b", `echo "b says role=$IMGCTL_ROLE node=$IMGCTL_NODE_NAME phase=$IMGCTL_HOOK_PHASE"`+"\n", 0o755)
	e.hook("10-a", "echo a to stderr >&2\n", 0o700)
	e.hook("30-c", "", 0o755)
	e.hook("05-z", "", 0o755)
	o := e.options(PreInstall)
	o.Env = []string{"IMGCTL_ROLE=node", "IMGCTL_NODE_NAME=n1"}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := strings.Join(e.ran(), " "), "05-z 10-a 20-b 30-c"; got != want {
		t.Errorf("ran %q, want %q", got, want)
	}
	if got, want := e.output.String(), "a to stderr\nb says role=node node=n1 phase=pre-install\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	lines := e.lines()
	if len(lines) != 4 {
		t.Fatalf("lines:\n%s", e.steps.String())
	}
	for i, name := range []string{"05-z", "10-a", "20-b", "30-c"} {
		if l := lines[i]; l["status"] != steplog.OK || l["phase"] != PreInstall || l["hook"] != name {
			t.Errorf("line %d: %v, want status=ok phase=pre-install hook=%s", i, l, name)
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	e := newEnv(t, PostInstall)
	e.hook("10-env", `echo "$IMGCTL_ROLE $HOME"`+"\n", 0o755)
	t.Setenv("IMGCTL_ROLE", "from-parent")
	o := e.options(PostInstall)
	o.Env = []string{"IMGCTL_ROLE=master", "HOME=/nonexistent"}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := e.output.String(); got != "master /nonexistent\n" {
		t.Errorf("output %q: Options.Env must win over the inherited environment", got)
	}
}

func TestSkipRules(t *testing.T) {
	e := newEnv(t, PreConfigure)
	e.hook("10-run", "", 0o755)
	e.hook("20-readme", "", 0o644)
	e.hook("30-x~", "", 0o755)
	e.hook("40-y.dpkg-old", "", 0o755)
	e.hook("41-y.dpkg-dist", "", 0o755)
	e.hook("50-z.disabled", "", 0o755)
	e.hook(".60-hidden", "", 0o755)
	e.hook("90-last", "", 0o755)
	if err := os.Mkdir(filepath.Join(e.dir, "70-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("10-run", filepath.Join(e.dir, "80-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("missing", filepath.Join(e.dir, "85-dangling")); err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), e.options(PreConfigure)); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := strings.Join(e.ran(), " "), "10-run 10-run 90-last"; got != want {
		t.Errorf("ran %q, want %q (80-link runs 10-run's script)", got, want)
	}
	want := []struct{ hook, status, reason string }{
		{".60-hidden", steplog.Skip, "hidden"},
		{"10-run", steplog.OK, ""},
		{"20-readme", steplog.Skip, "not executable"},
		{"30-x~", steplog.Skip, "backup file"},
		{"40-y.dpkg-old", steplog.Skip, "dpkg leftover"},
		{"41-y.dpkg-dist", steplog.Skip, "dpkg leftover"},
		{"50-z.disabled", steplog.Skip, "disabled"},
		{"70-dir", steplog.Skip, "directory"},
		{"80-link", steplog.OK, ""},
		{"85-dangling", steplog.Skip, "unreadable: "},
		{"90-last", steplog.OK, ""},
	}
	lines := e.lines()
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), e.steps.String())
	}
	for i, w := range want {
		l := lines[i]
		if l["hook"] != w.hook || l["status"] != w.status || !strings.HasPrefix(l["reason"], w.reason) || (w.reason == "") != (l["reason"] == "") {
			t.Errorf("line %d: %v, want hook=%s status=%s reason=%s…", i, l, w.hook, w.status, w.reason)
		}
	}
}

func TestNoPhaseDirectory(t *testing.T) {
	e := newEnv(t, PreInstall)
	if err := Run(context.Background(), e.options(PostConfigure)); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if e.steps.Len() != 0 {
		t.Errorf("lines for a missing directory:\n%s", e.steps.String())
	}
	// No hooks.d at all, and no Steps or Output: fine too.
	if err := Run(context.Background(), Options{Root: t.TempDir(), Phase: PreInstall}); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestBadPhase(t *testing.T) {
	for _, phase := range []string{"", "../etc", "pre install", "a/b"} {
		e := newEnv(t, "x")
		err := Run(context.Background(), e.options(phase))
		if err == nil {
			t.Errorf("phase %q accepted", phase)
			continue
		}
		if l := e.lines(); len(l) != 1 || l[0]["status"] != steplog.Fail {
			t.Errorf("phase %q: lines\n%s", phase, e.steps.String())
		}
	}
}

func TestPhaseNotADirectory(t *testing.T) {
	e := newEnv(t, "x")
	if err := os.WriteFile(filepath.Join(e.root, Dir, PreInstall+".d"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), e.options(PreInstall))
	if err == nil || !strings.Contains(err.Error(), "listing hooks") || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Run: %v", err)
	}
}

func TestFailureStopsThePhase(t *testing.T) {
	e := newEnv(t, PostConfigure)
	e.hook("10-ok", "", 0o755)
	var body strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&body, "echo output line %d\n", i)
	}
	body.WriteString("echo kubeadm said no >&2\nexit 3\n")
	failing := e.hook("20-fail", body.String(), 0o755)
	e.hook("30-after", "", 0o755)

	err := Run(context.Background(), e.options(PostConfigure))
	if err == nil {
		t.Fatal("Run succeeded")
	}
	if got, want := strings.Join(e.ran(), " "), "10-ok 20-fail"; got != want {
		t.Errorf("ran %q, want %q", got, want)
	}
	msg := err.Error()
	for _, w := range []string{"hook " + failing + ": exit status 3", "last output:\n", "output line 30\nkubeadm said no"} {
		if !strings.Contains(msg, w) {
			t.Errorf("error lacks %q:\n%s", w, msg)
		}
	}
	if !strings.Contains(msg, "output line 12\n") || strings.Contains(msg, "output line 11\n") {
		t.Errorf("error should end with the last 20 lines of output:\n%s", msg)
	}
	var exit interface{ ExitCode() int }
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Errorf("error does not wrap the exit status: %v", err)
	}
	lines := e.lines()
	if len(lines) != 2 || lines[1]["status"] != steplog.Fail || lines[1]["hook"] != "20-fail" || !strings.Contains(lines[1]["err"], "exit status 3") {
		t.Errorf("lines:\n%s", e.steps.String())
	}
}

func TestNotExecutableFormat(t *testing.T) {
	e := newEnv(t, PreInstall)
	p := filepath.Join(e.dir, "10-noshebang")
	if err := os.WriteFile(p, []byte{0x7f, 'E', 'L', 'F', 0, 0}, 0o755); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), e.options(PreInstall))
	if err == nil || !strings.Contains(err.Error(), "hook "+p+": ") {
		t.Fatalf("Run: %v", err)
	}
}

// pidAlive reports whether the process in pidfile still runs (zombies count as gone).
func pidAlive(t *testing.T, pidfile string) bool {
	t.Helper()
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("no pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z") && syscall.Kill(pid, 0) == nil
}

func TestTimeout(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		grace      time.Duration
	}{
		// sleep is in the hook's process group: SIGTERM to the group ends both.
		{"sleeping", "sleep 30 &\necho $! > PIDFILE\nwait\n", killGrace},
		// SIGTERM ignored (and inherited by sleep): SIGKILL after the grace.
		{"ignoring SIGTERM", "trap '' TERM\nsleep 30 &\necho $! > PIDFILE\nwait\nwait\n", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(g time.Duration) { killGrace = g }(killGrace)
			killGrace = tc.grace
			e := newEnv(t, PreInstall)
			pidfile := filepath.Join(t.TempDir(), "pid")
			p := e.hook("10-sleep", strings.ReplaceAll(tc.body, "PIDFILE", pidfile), 0o755)
			e.hook("20-after", "", 0o755)
			o := e.options(PreInstall)
			o.Timeout = 300 * time.Millisecond
			start := time.Now()
			err := Run(context.Background(), o)
			took := time.Since(start)
			if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "hook "+p+": timed out after 300ms") {
				t.Fatalf("Run: %v", err)
			}
			if bound := o.Timeout + tc.grace + time.Second; took > bound {
				t.Errorf("took %s, bound %s", took, bound)
			}
			if got := strings.Join(e.ran(), " "); got != "10-sleep" {
				t.Errorf("ran %q", got)
			}
			deadline := time.Now().Add(time.Second)
			for pidAlive(t, pidfile) {
				if time.Now().After(deadline) {
					t.Fatal("the hook's background sleep survived")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

func TestCanceled(t *testing.T) {
	e := newEnv(t, PreInstall)
	e.hook("10-sleep", "exec sleep 30\n", 0o755)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := Run(ctx, e.options(PreInstall))
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %s", took)
	}
}

// TestBackgroundChildKeepsOutput: a hook that exits 0 but leaves a child holding its output
// succeeds once the grace has passed, instead of hanging.
func TestBackgroundChildKeepsOutput(t *testing.T) {
	defer func(g time.Duration) { killGrace = g }(killGrace)
	killGrace = 200 * time.Millisecond
	e := newEnv(t, PreInstall)
	pidfile := filepath.Join(t.TempDir(), "pid")
	e.hook("10-daemon", "sleep 3 &\necho $! > "+pidfile+"\nexit 0\n", 0o755)
	start := time.Now()
	if err := Run(context.Background(), e.options(PreInstall)); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %s", took)
	}
	if !pidAlive(t, pidfile) {
		t.Error("a successful hook's background child was killed")
	}
	if b, err := os.ReadFile(pidfile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL) // the sleep this test started
		}
	}
}

// TestDryRun: a dry run runs no hook; each that would run, and each skipped for its own
// reason, gets its skip line.
func TestDryRun(t *testing.T) {
	e := newEnv(t, PreConfigure)
	e.hook("10-a", "", 0o755)
	e.hook("20-fail", "exit 1\n", 0o755)
	e.hook("30-off", "", 0o644)
	o := e.options(PreConfigure)
	o.DryRun = true
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if got := e.ran(); len(got) != 0 {
		t.Errorf("ran %q in a dry run", got)
	}
	var got []string
	for _, l := range e.lines() {
		got = append(got, l["hook"]+":"+l["status"]+":"+l["reason"])
	}
	want := []string{"10-a:skip:dry run", "20-fail:skip:dry run", "30-off:skip:not executable"}
	if !slices.Equal(got, want) {
		t.Errorf("lines = %q, want %q\n%s", got, want, e.steps.String())
	}
}

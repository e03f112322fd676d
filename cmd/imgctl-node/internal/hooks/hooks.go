// Package hooks runs a site's drop-in scripts around the bootstrap units' phases: the
// executables in /etc/imgctl/hooks.d/PHASE.d/, in lexical order, one console step line each
// (step=hook phase=PHASE hook=NAME). The first failing hook stops the phase.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// Dir holds one PHASE.d directory per phase.
const Dir = "/etc/imgctl/hooks.d"

// Phases the bootstrap units run.
const (
	PreInstall    = "pre-install"    // before kube-node-installation's steps
	PostInstall   = "post-install"   // after them
	PreConfigure  = "pre-configure"  // NodeConfig read, nothing written yet (kube-node-configuration)
	PostConfigure = "post-configure" // after it
)

// StepName is the step= of every hook line.
const StepName = "hook"

// DefaultTimeout bounds one hook: long enough for a script that waits on a slow device or
// network, short enough that a stuck one fails the unit visibly instead of hanging the boot.
const DefaultTimeout = 5 * time.Minute

// PhaseEnv names the phase in every hook's environment.
const PhaseEnv = "IMGCTL_HOOK_PHASE"

// killGrace is how long a hook has between SIGTERM (timeout or cancellation) and SIGKILL; also
// how long its output is awaited after it exits, should a background child keep it open.
var killGrace = 5 * time.Second

// Output tail kept for a failing hook's error.
const (
	tailLines = 20
	tailBytes = 4 << 10
)

// ErrTimeout is matched (errors.Is) by the error of a hook killed for running past its timeout.
var ErrTimeout = errors.New("timed out")

// Options configure Run.
type Options struct {
	// Root is the node's root directory: "/" on a node (also when empty), a temporary directory
	// in tests. Hooks are looked up under it.
	Root string
	// Phase selects Root/etc/imgctl/hooks.d/PHASE.d; letters, digits, '-' and '_' only.
	Phase string
	// Env is added to the hooks' environment (after this process's and PhaseEnv), e.g.
	// IMGCTL_ROLE=node, IMGCTL_NODE_NAME=n1.
	Env []string
	// Timeout bounds each hook (DefaultTimeout when zero or negative).
	Timeout time.Duration
	// Steps receives one line per hook, run or skipped (nil: discarded).
	Steps *steplog.Logger
	// Output receives the hooks' stdout and stderr (nil: discarded).
	Output io.Writer
	// DryRun runs no hook: each that would run gets a status=skip line with reason "dry run".
	DryRun bool
}

// Run runs the phase's hooks in lexical order and stops at the first that fails, returning an
// error that names its path, its exit status and the last lines of its output. Skipped, with a
// status=skip line: directories, non-executable files, hidden files and names ending in "~",
// ".disabled" or containing ".dpkg-" (dpkg's leftovers: .dpkg-old, .dpkg-dist, .dpkg-new…).
// A missing PHASE.d directory means no hooks: nil, and no line.
func Run(ctx context.Context, o Options) error {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Steps == nil {
		o.Steps = steplog.New(io.Discard)
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
	if err := checkPhase(o.Phase); err != nil {
		return o.Steps.Start(StepName).Fail(err, "phase", o.Phase)
	}
	dir := filepath.Join(o.Root, Dir, o.Phase+".d")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return o.Steps.Start(StepName).Fail(fmt.Errorf("listing hooks: %w", err), "phase", o.Phase)
	}
	for _, e := range entries { // ReadDir sorts by name
		if err := ctx.Err(); err != nil {
			return o.Steps.Start(StepName).Fail(err, "phase", o.Phase, "hook", e.Name())
		}
		st := o.Steps.Start(StepName)
		p := filepath.Join(dir, e.Name())
		if reason := skipReason(p, e.Name()); reason != "" {
			st.Skip("phase", o.Phase, "hook", e.Name(), "reason", reason)
			continue
		}
		if o.DryRun {
			st.Skip("phase", o.Phase, "hook", e.Name(), "reason", "dry run")
			continue
		}
		if err := runHook(ctx, o, p); err != nil {
			return st.Fail(err, "phase", o.Phase, "hook", e.Name())
		}
		st.Done("phase", o.Phase, "hook", e.Name())
	}
	return nil
}

// checkPhase accepts names like pre-install: the phase becomes a directory name.
func checkPhase(phase string) error {
	if phase == "" {
		return errors.New("hooks: no phase given")
	}
	for _, r := range phase {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("hooks: bad phase %q: letters, digits, '-' and '_' only", phase)
		}
	}
	return nil
}

// skipReason says why the entry at p (named name) is not run, or "" to run it. Symlinks are
// followed: a link to an executable is a hook.
func skipReason(p, name string) string {
	switch {
	case strings.HasPrefix(name, "."):
		return "hidden"
	case strings.HasSuffix(name, "~"):
		return "backup file"
	case strings.Contains(name, ".dpkg-"):
		return "dpkg leftover"
	case strings.HasSuffix(name, ".disabled"):
		return "disabled"
	}
	fi, err := os.Stat(p)
	switch {
	case err != nil:
		return "unreadable: " + err.Error()
	case fi.IsDir():
		return "directory"
	case !fi.Mode().IsRegular():
		return "not a regular file"
	case fi.Mode().Perm()&0o111 == 0:
		return "not executable"
	}
	return ""
}

// runHook runs one hook in its own process group, so a timeout kills whatever it started.
func runHook(ctx context.Context, o Options, p string) error {
	hctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	cmd := exec.CommandContext(hctx, p)
	cmd.Env = append(append(os.Environ(), PhaseEnv+"="+o.Phase), o.Env...) // later entries win
	out := &hookOutput{w: o.Output}
	cmd.Stdout = out // the same writer for both: one pipe, writes in order
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		if err == syscall.ESRCH {
			return os.ErrProcessDone // already gone: Wait reports how it ended
		}
		return err // nil: even an exit 0 after SIGTERM is a failure (Wait returns the context's error)
	}
	cmd.WaitDelay = killGrace

	err := cmd.Run()
	if err == nil {
		return nil
	}
	if hctx.Err() == nil && errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		// The hook exited 0, but a background child kept its output open past killGrace.
		return nil
	}
	if cmd.Process != nil && hctx.Err() != nil {
		// Whatever survived SIGTERM (the group's other members included) ends now.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	case hctx.Err() != nil:
		err = fmt.Errorf("%w after %s (%w)", ErrTimeout, o.Timeout, err)
	}
	if tail := out.tail(); tail != "" {
		return fmt.Errorf("hook %s: %w; last output:\n%s", p, err, tail)
	}
	return fmt.Errorf("hook %s: %w", p, err)
}

// hookOutput forwards a hook's output to w and keeps its tail for the error. A failing w does
// not stop the hook (a blocked pipe would): its error is dropped.
type hookOutput struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func (h *hookOutput) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, _ = h.w.Write(p)
	h.buf = append(h.buf, p...)
	if len(h.buf) > 2*tailBytes {
		h.buf = append(h.buf[:0], h.buf[len(h.buf)-tailBytes:]...)
	}
	return len(p), nil
}

// tail returns the last tailLines lines (at most tailBytes bytes) written.
func (h *hookOutput) tail() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := h.buf
	if len(b) > tailBytes {
		b = b[len(b)-tailBytes:]
	}
	b = bytes.TrimRight(b, "\n")
	lines := strings.Split(string(b), "\n")
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return strings.Join(lines, "\n")
}

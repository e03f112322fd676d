package source

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/progress"
)

// RunError reports an external tool that failed, with the tail of its output.
type RunError struct {
	Cmd    string
	Output string
	Err    error
}

func (e *RunError) Error() string {
	return fmt.Sprintf("%s: %v\n%s", e.Cmd, e.Err, e.Output)
}

func (e *RunError) Unwrap() error { return e.Err }

// mmdebstrap builds a Debian base tar with mmdebstrap (reproducible under SOURCE_DATE_EPOCH)
// and adds it to the cache. With want set, a different result is an error: the mirror has
// moved on since the lock was written.
func (e *Env) mmdebstrap(ctx context.Context, u URI, want digest.Digest) (digest.Digest, error) {
	// Parse checks these too; a URI value built some other way must not reach the command line.
	if err := u.checkMmdebstrap(); err != nil {
		return "", err
	}
	key := mmdebstrapKey(u, e.MTime.Unix())
	if d, err := e.Cache.Ref("mmdebstrap", key); err == nil && e.Cache.Has(d) && (want == "" || d == want) {
		return d, nil
	}
	if e.Fetch != nil && e.Fetch.Offline {
		return "", fmt.Errorf("the Debian base is not in the cache and --offline forbids running mmdebstrap")
	}
	unlock, err := e.Cache.Lock(ctx, "mmdebstrap\n"+key)
	if err != nil {
		return "", err
	}
	defer func() { _ = unlock() }()
	if d, err := e.Cache.Ref("mmdebstrap", key); err == nil && e.Cache.Has(d) && (want == "" || d == want) {
		return d, nil
	}
	bin, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return "", fmt.Errorf("the base layer needs mmdebstrap (apt-get install mmdebstrap), or point --source base=URI at a prebuilt rootfs: %w", err)
	}
	name := "mmdebstrap " + u.Suite + " (" + u.Variant
	if len(u.Packages) > 0 {
		name += fmt.Sprintf(" +%d packages", len(u.Packages))
	}
	step := progress.Start(ctx, name+")")
	d, err := e.runMmdebstrap(ctx, u, bin, key, step)
	step.Done(err)
	if err != nil {
		return "", err
	}
	if want != "" && d != want {
		return "", fmt.Errorf("mmdebstrap produced %s but the lock pins %s: the mirror changed since the lock was written; pin a snapshot mirror (https://snapshot.debian.org/archive/debian/TIMESTAMP) or refresh the lock with --update-lock", d, want)
	}
	return d, nil
}

// runMmdebstrap runs mmdebstrap and adds its tar to the cache under key; step counts the tar's
// bytes as mmdebstrap writes it.
func (e *Env) runMmdebstrap(ctx context.Context, u URI, bin, key string, step *progress.Step) (digest.Digest, error) {
	tmp, err := os.MkdirTemp(filepath.Join(e.Cache.Dir(), "tmp"), "mmdebstrap-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "rootfs.tar")
	mirror := e.Fetch.Rewrite(u.Location)
	if err := checkMirror(mirror); err != nil {
		return "", fmt.Errorf("%s rewritten by --mirror: %w", u.Location, err)
	}
	args := []string{"--variant=" + u.Variant, "--format=tar", "--quiet"}
	if len(u.Packages) > 0 {
		args = append(args, "--include="+strings.Join(u.Packages, ","))
	}
	// "--": mmdebstrap reads options after positionals too; nothing past here is one.
	args = append(args, "--", u.Suite, out, mirror)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(e.MTime.Unix(), 10))
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	// Cancelling ends mmdebstrap and everything it started (apt, dpkg, hooks): they share its
	// process group. SIGTERM first, so mmdebstrap removes its temporary chroot; whatever is
	// left after WaitDelay is killed, and a child holding the output open cannot keep us waiting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	e.logger().Info("running mmdebstrap", "suite", u.Suite, "mirror", mirror, "packages", len(u.Packages))
	stopWatch := watchSize(out, step)
	err = cmd.Run()
	stopWatch()
	if err != nil {
		if ctx.Err() != nil {
			if cmd.Process != nil {
				_ = killGroup(cmd.Process.Pid, syscall.SIGKILL)
			}
			return "", fmt.Errorf("mmdebstrap: %w", ctx.Err())
		}
		return "", &RunError{Cmd: "mmdebstrap " + strings.Join(args, " "), Output: tail(output.String(), 4000), Err: err}
	}
	f, err := os.Open(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w, err := e.Cache.NewWriter(ctx)
	if err != nil {
		return "", err
	}
	defer func() { _ = w.Abort() }()
	if _, err := io.Copy(w, &ctxReader{ctx: ctx, r: f}); err != nil {
		return "", err
	}
	d, _, err := w.Commit("", -1)
	if err != nil {
		return "", err
	}
	if err := e.Cache.SetRef("mmdebstrap", key, d); err != nil {
		return "", err
	}
	return d, nil
}

// watchSize reports the size of the file at p to step twice a second until stop is called,
// and once more then.
func watchSize(p string, step *progress.Step) (stop func()) {
	if step == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	report := func() {
		if fi, err := os.Stat(p); err == nil {
			step.Set(fi.Size(), 0)
		}
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				report()
				return
			case <-t.C:
				report()
			}
		}
	}()
	return func() { close(done); <-finished }
}

// killGroup signals the process group led by pid; a group already gone is no error.
func killGroup(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pid, sig); err != nil && err != syscall.ESRCH {
		return err
	}
	return nil
}

func mmdebstrapKey(u URI, epoch int64) string {
	return strings.Join([]string{u.Suite, u.Location, u.Variant, strings.Join(u.Packages, ","), strconv.FormatInt(epoch, 10)}, "\n")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

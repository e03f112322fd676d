package health

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSystemctlRestartWith(t *testing.T) {
	var got [][]string
	ok := func(ctx context.Context, name string, args ...string) ([]byte, error) {
		got = append(got, append([]string{name}, args...))
		return []byte("ignored on success"), nil
	}
	if err := SystemctlRestartWith(ok, "kubelet.service")(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || strings.Join(got[0], " ") != "systemctl restart kubelet.service" {
		t.Errorf("ran %q; want systemctl restart kubelet.service", got)
	}

	exit1 := errors.New("exit status 1")
	fail := func(ctx context.Context, name string, args ...string) ([]byte, error) {
		return []byte("Job for containerd.service failed.\nSee \"journalctl -xeu containerd.service\".\n"), exit1
	}
	err := SystemctlRestartWith(fail, "containerd.service")(context.Background())
	if !errors.Is(err, exit1) || !strings.Contains(err.Error(), "systemctl restart containerd.service: exit status 1: Job for containerd.service failed.") {
		t.Errorf("err = %v; want the exit status and systemctl's message", err)
	}

	got = nil
	for _, unit := range []string{"", "--all", "-H"} {
		if err := SystemctlRestartWith(ok, unit)(context.Background()); err == nil {
			t.Errorf("unit %q: no error", unit)
		}
	}
	if len(got) != 0 {
		t.Errorf("ran %q for invalid units", got)
	}
}

// TestSystemctlRestartExec runs SystemctlRestart with a fake systemctl first in PATH.
func TestSystemctlRestartExec(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$@\" > " + argsFile + "\nif [ \"$2\" = broken.service ]; then echo 'Unit broken.service not found.' >&2; exit 5; fi\n"
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))

	if err := SystemctlRestart("kubelet.service")(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(argsFile); err != nil || string(b) != "restart kubelet.service\n" {
		t.Errorf("fake systemctl got %q, %v", b, err)
	}
	err := SystemctlRestart("broken.service")(context.Background())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(err.Error(), "Unit broken.service not found.") {
		t.Errorf("err = %v; want exit status 5 with systemctl's message", err)
	}
}

func TestExecRunnerHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	out, err := ExecRunner(ctx, "sh", "-c", "echo started; exec sleep 10")
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("ExecRunner = %q, %v after %v; want it killed after 100ms", out, err, time.Since(start))
	}
	err = SystemctlRestartWith(func(ctx context.Context, _ string, _ ...string) ([]byte, error) {
		return ExecRunner(ctx, "sleep", "10")
	}, "kubelet.service")(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("restart with an expired ctx: err = %v; want DeadlineExceeded", err)
	}
}

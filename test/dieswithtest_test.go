package test

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestChildDiesWithTest: a process started with diesWithTest (every qemu guest) ends when the
// test binary that started it dies without cleanups, as on a test timeout's panic.
func TestChildDiesWithTest(t *testing.T) {
	if os.Getenv("IMGCTL_DIES_WITH_TEST_HELPER") == "1" {
		child := exec.Command("sleep", "120")
		child.SysProcAttr = diesWithTest()
		if err := child.Start(); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("child=" + strconv.Itoa(child.Process.Pid) + "\n")
		os.Exit(2) // no cleanup, like a panic
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestChildDiesWithTest$")
	helper.Env = append(os.Environ(), "IMGCTL_DIES_WITH_TEST_HELPER=1")
	out, _ := helper.Output()
	pid, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(string(out)), "child="))
	if err != nil {
		t.Fatalf("helper printed %q", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Gone, or a zombie waiting for init to reap it: either way it no longer runs.
		err := syscall.Kill(pid, 0)
		if errors.Is(err, syscall.ESRCH) {
			return
		}
		if st, rerr := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); rerr == nil {
			if f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:])); len(f) > 0 && f[0] == "Z" {
				return
			}
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the child %d outlived the test binary that started it by 10 s (kill: %v)", pid, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

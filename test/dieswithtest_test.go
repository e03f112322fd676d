package test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/test/bootenv"
)

// TestChildDiesWithTest: a process started with diesWithTest (every qemu guest) ends when the
// test binary that started it dies without cleanups, as on a test timeout's panic.
func TestChildDiesWithTest(t *testing.T) {
	if os.Getenv(diesWithTestHelperEnv) == "1" {
		child := exec.Command("sleep", "120")
		child.SysProcAttr = diesWithTest()
		if err := child.Start(); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("child=" + strconv.Itoa(child.Process.Pid) + "\n")
		os.Exit(2) // no cleanup, like a panic
	}
	before := e2eDirs(t)
	helper := exec.Command(os.Args[0], "-test.run=^TestChildDiesWithTest$")
	helper.Env = append(os.Environ(), diesWithTestHelperEnv+"=1")
	out, _ := helper.Output()
	// The helper dies without cleanups: TestMain must not have made it a directory to leak.
	if after := e2eDirs(t); len(after) > len(before) {
		t.Errorf("the helper left %d more imgctl-e2e-* directories in %s (%d before)", len(after)-len(before), os.TempDir(), len(before))
	}
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

// e2eDirs lists TestMain's directories (see e2eDirPattern) in the temporary directory.
func e2eDirs(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(os.TempDir(), e2eDirPattern+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestVMPowerCycles checks the vm supervisor with a stand-in for qemu: a guest reset (the
// kernel's reboot line, then qemu's exit under -no-reboot) starts qemu again on the same
// console; a power off ends the vm; a kill is a power cut, never followed by a restart.
func TestVMPowerCycles(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "runs")
	// Runs 1 and 2 reboot (a reboot, then a panic's reboot), run 3 powers off.
	fake := filepath.Join(dir, "qemu")
	script := `#!/bin/sh
n=$(($(cat "$1" 2>/dev/null || echo 0) + 1))
echo "$n" > "$1"
echo "boot $n"
case $n in
1) echo "[   71.85] reboot: Restarting system" ;;
2) echo "Kernel panic - not syncing: test"; echo "Rebooting in 10 seconds.." ;;
*) echo "[   12.00] reboot: Power down" ;;
esac
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c := &bootenv.Console{}
	v := runVM(ctx, t, fake, []string{count}, c, c, true)
	if err := <-v.done; err != nil {
		t.Fatalf("vm ended with %v", err)
	}
	log := c.String()
	for _, want := range []string{"boot 1", "(power cycle 1)", "boot 2", "(power cycle 2)", "boot 3", "reboot: Power down"} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "power cycle 3") || !v.hasExited() {
		t.Errorf("the vm did not end after the power off:\n%s", log)
	}

	// Without allowReboot a reset ends the vm.
	os.Remove(count)
	c = &bootenv.Console{}
	v = runVM(ctx, t, fake, []string{count}, c, c, false)
	<-v.done
	if log := c.String(); strings.Contains(log, "boot 2") {
		t.Errorf("a reset started qemu again without allowReboot:\n%s", log)
	}

	// A kill right after a reset line: no restart.
	hang := filepath.Join(dir, "hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\necho 'reboot: Restarting system'\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c = &bootenv.Console{}
	v = runVM(ctx, t, hang, nil, c, c, true)
	if err := v.waitFor(ctx, "reboot: Restarting system"); err != nil {
		t.Fatal(err)
	}
	v.stop()
	if log := c.String(); strings.Contains(log, "power cycle") {
		t.Errorf("a killed vm was started again:\n%s", log)
	}
}

package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary the pause program (TestMain): it first starts that many
// children that exit at once — it does not wait for them, as a pod's other processes are not
// its children until they are orphaned — prints their PIDs, then runs main's loop.
const helperEnv = "IMGCTL_PAUSE_TEST_CHILDREN"

func TestMain(m *testing.M) {
	if n := os.Getenv(helperEnv); n != "" {
		count, _ := strconv.Atoi(n)
		var pids []string
		for range count {
			pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 3"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}})
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(99)
			}
			pids = append(pids, strconv.Itoa(pid))
		}
		fmt.Println(strings.Join(pids, " "))
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// start runs the pause helper with children children and returns it and their PIDs.
func start(t *testing.T, children int) (*exec.Cmd, []int) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+strconv.Itoa(children))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	buf := make([]byte, 4096)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(buf[:n])) {
		p, _ := strconv.Atoi(f)
		pids = append(pids, p)
	}
	if len(pids) != children {
		t.Fatalf("helper printed %q, want %d PIDs", buf[:n], children)
	}
	return cmd, pids
}

// state is the process state letter of pid ("" once it is gone).
func state(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

// cpuTicks is the user+system CPU time of pid in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.Atoi(f[11]) // fields 14 and 15 of stat
	k, _ := strconv.Atoi(f[12])
	return u + k
}

// TestReapsChildren: exited children do not stay zombies.
func TestReapsChildren(t *testing.T) {
	_, pids := start(t, 5)
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for state(pid) != "" {
			if time.Now().After(deadline) {
				t.Fatalf("child %d is still there in state %q: not reaped", pid, state(pid))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestExitsZeroOnSignal: SIGTERM and SIGINT end it with status 0; until then it sleeps (less
// than 5 ticks of CPU in a second: no busy loop).
func TestExitsZeroOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, _ := start(t, 0)
			before := cpuTicks(t, cmd.Process.Pid)
			time.Sleep(time.Second)
			if used := cpuTicks(t, cmd.Process.Pid) - before; used > 5 {
				t.Errorf("used %d CPU ticks in a second while idle", used)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("after %v: %v, want exit status 0", sig, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("still running 10 s after %v", sig)
			}
		})
	}
}

func TestVersionAndUsage(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"-v"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "imgctl-pause") {
		t.Errorf("-v: %d %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown argument "--bogus"`) {
		t.Errorf("--bogus: %d %q", code, errb.String())
	}
}

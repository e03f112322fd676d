package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestInitRefusesWhenNotPID1 runs `imgctl-node init` on the test machine: it must refuse
// before mounting, deleting or rebooting anything.
func TestInitRefusesWhenNotPID1(t *testing.T) {
	if os.Getenv("IMGCTL_NODE_TEST_MAIN") == "1" {
		os.Args = []string{"imgctl-node", "init"}
		main()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitRefusesWhenNotPID1$")
	cmd.Env = append(os.Environ(), "IMGCTL_NODE_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2\n%s", err, out)
	}
	if !strings.Contains(string(out), "step=preflight status=fail") || !strings.Contains(string(out), "PID 1") {
		t.Errorf("output:\n%s", out)
	}
}

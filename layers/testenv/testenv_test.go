package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMissingFailsUnderCI runs a child test that lacks a tool, once with CI=true (it must
// fail) and once without (it must skip).
func TestMissingFailsUnderCI(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		Tools(t, "imgctl-no-such-tool")
		t.Log("reached past a missing tool")
		return
	}
	for _, tc := range []struct {
		ci       string
		wantFail bool
		want     string
	}{
		{"true", true, "--- FAIL"},
		{"", false, "--- SKIP"},
		{"false", false, "--- SKIP"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingFailsUnderCI$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", "CI="+tc.ci)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.wantFail {
			t.Errorf("CI=%q: exit error %v, want failure %v\n%s", tc.ci, err, tc.wantFail, out)
		}
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "imgctl-no-such-tool not installed") {
			t.Errorf("CI=%q: output lacks %q and the tool's name:\n%s", tc.ci, tc.want, out)
		}
		if strings.Contains(string(out), "reached past") {
			t.Errorf("CI=%q: the test went on after a missing tool:\n%s", tc.ci, out)
		}
	}
}

func TestAllocated(t *testing.T) {
	var keep []byte
	n := Allocated(func() { keep = make([]byte, 8<<20) })
	if n < 8<<20 || n > 9<<20 || len(keep) != 8<<20 {
		t.Fatalf("Allocated(make 8 MiB) = %d", n)
	}
	if n := Allocated(func() {}); n > 64<<10 {
		t.Fatalf("Allocated(nothing) = %d", n)
	}
}

package deb

import (
	"errors"
	"os/exec"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// dpkgCompare checks CompareVersions against dpkg --compare-versions for
// every ordered pair of vs.
func dpkgCompare(t *testing.T, vs []string) {
	testenv.Tools(t, "dpkg")
	for _, a := range vs {
		for _, b := range vs {
			err := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Fatal(err)
			}
			dpkgLess := err == nil
			if ours := CompareVersions(a, b) < 0; ours != dpkgLess {
				t.Errorf("%q < %q: dpkg says %v, CompareVersions says %v", a, b, dpkgLess, ours)
			}
		}
	}
}

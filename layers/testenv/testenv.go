// Package testenv decides what an integration test does when its tool, input or privilege is
// missing: skip on a developer's machine, fail under CI=true (a skipped e2e test in CI is a hole
// nobody sees). Every test that needs something from outside the Go toolchain goes through it.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// CI reports whether the tests run in CI (CI=true, as .ci/run sets it): there, a missing
// prerequisite is a failure.
func CI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// Missing stops the test because a prerequisite is absent: t.Skip on a developer's machine,
// t.Fatal under CI=true. The message says what is missing and how to get it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("CI=true: %s (a missing prerequisite fails in CI; see scripts/install-deps.sh)", msg)
	}
	t.Skip(msg)
}

// Integration skips the test under -short. Under -short nothing is "missing": the run asked
// for unit tests only, so this skips even in CI.
func Integration(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("integration (%s): skipped under -short", what)
	}
}

// Tools looks each program up on PATH and calls Missing for the first one that is not there.
func Tools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Missing(t, "%s not installed (scripts/install-deps.sh)", n)
		}
	}
}

// Files calls Missing for the first path that does not exist.
func Files(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			Missing(t, "%s not found: %v (scripts/install-deps.sh)", p, err)
		}
	}
}

// Root calls Missing when the test does not run as root.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root: %s", why)
	}
}

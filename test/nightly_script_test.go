package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// TestNightlyScriptUsage checks scripts/nightly without building anything: shellcheck passes,
// --help documents every variable the script reads, and wrong usage or a missing setting fails
// at once with one line naming it, before any imgctl command runs.
func TestNightlyScriptUsage(t *testing.T) {
	script, err := filepath.Abs("../scripts/nightly")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Tools(t, "shellcheck")
	if out, err := exec.Command("shellcheck", script).CombinedOutput(); err != nil {
		t.Errorf("shellcheck scripts/nightly: %v\n%s", err, out)
	}
	help, err := exec.Command(script, "--help").Output()
	if err != nil {
		t.Fatalf("scripts/nightly --help: %v", err)
	}
	var vars []string
	for _, m := range regexp.MustCompile(`\$\{!?((?:NIGHTLY|STAGING|AMI|REGISTRY)[A-Z0-9_]*)`).FindAllStringSubmatch(string(src), -1) {
		vars = append(vars, m[1])
	}
	slices.Sort(vars)
	vars = slices.Compact(vars)
	if len(vars) < 15 {
		t.Fatalf("found only %d variables in scripts/nightly: %q", len(vars), vars)
	}
	for _, v := range vars {
		if !regexp.MustCompile(`\b` + v + `\b`).Match(help) {
			t.Errorf("scripts/nightly reads %s but --help does not document it", v)
		}
	}

	// imgctl is a program that records that it ran: none of these may get that far.
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	fake := filepath.Join(dir, "imgctl")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$@\" >> "+ran+"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "check.key")
	if err := os.WriteFile(key, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		env  []string
		args []string
		code int
		want string
	}{
		{nil, nil, 2, "usage: scripts/nightly build"},
		{nil, []string{"promote", "--to", "qa"}, 2, "usage: scripts/nightly promote --to staging|prod"},
		{nil, []string{"promote", "--force"}, 2, "unknown argument '--force'"},
		{nil, []string{"check", "prod"}, 2, "usage: scripts/nightly check nightly|staging"},
		{nil, []string{"build"}, 1, "nightly: setup failed: NIGHTLY_CHECK_KEY is not set"},
		{[]string{"NIGHTLY_CHECK_KEY=" + filepath.Join(dir, "none")}, []string{"build"}, 1, "NIGHTLY_CHECK_KEY=" + filepath.Join(dir, "none") + ": not a readable file"},
		{[]string{"NIGHTLY_CHECK_KEY=" + key, "NIGHTLY_LOCK=maybe"}, []string{"build"}, 1, "nightly: setup failed: NIGHTLY_LOCK=maybe: expected locked or update"},
		{nil, []string{"promote", "--to", "staging"}, 1, "nightly: promote-staging failed: NIGHTLY_CHECK_PUB is not set"},
		{nil, []string{"promote", "--to", "prod"}, 1, "nightly: promote-prod failed: STAGING_CHECK_PUB is not set"},
		{nil, []string{"check", "staging"}, 1, "nightly: setup failed: STAGING_CHECK_CMD is not set"},
		{[]string{"IMGCTL=" + filepath.Join(dir, "missing")}, []string{"build"}, 1, "is not an executable"},
	} {
		cmd := exec.Command(script, c.args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "IMGCTL="+fake, "NIGHTLY_CHECK_KEY=", "NIGHTLY_CHECK_PUB=", "STAGING_CHECK_PUB=", "STAGING_CHECK_CMD=", "STAGING_CHECK_KEY=", "NIGHTLY_LOCK=")
		cmd.Env = append(cmd.Env, c.env...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("scripts/nightly %q with %q: exit %d, output:\n%s\nwant exit %d and %q", c.args, c.env, code, out, c.code, c.want)
		} else if failed := regexp.MustCompile(`^nightly: .* failed`); c.code == 1 && len(slices.DeleteFunc(lines, func(l string) bool { return !failed.MatchString(l) })) != 1 {
			t.Errorf("scripts/nightly %q: not exactly one failure line:\n%s", c.args, out)
		}
	}
	if b, err := os.ReadFile(ran); err == nil {
		t.Errorf("imgctl ran: %s", b)
	}
}

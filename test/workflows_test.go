package test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// workflow is the part of a GitHub Actions workflow the checks read.
type workflow struct {
	Name string               `yaml:"name"`
	On   map[string]yaml.Node `yaml:"on"`
	Env  map[string]string    `yaml:"env"`
	Jobs map[string]struct {
		RunsOn any               `yaml:"runs-on"`
		Env    map[string]string `yaml:"env"`
		Steps  []struct {
			Name string            `yaml:"name"`
			Uses string            `yaml:"uses"`
			Run  string            `yaml:"run"`
			Env  map[string]string `yaml:"env"`
		} `yaml:"steps"`
	} `yaml:"jobs"`
}

// nightlyCall is one scripts/nightly command line of a workflow.
var nightlyCall = regexp.MustCompile(`scripts/nightly((?: [^\n;&|]*)?)`)

// TestWorkflowsRunTheNightlyScript parses the example GitHub Actions workflows and checks that
// they run scripts/nightly with subcommands it has, with the triggers the README describes, with
// actions pinned to a major version, and that every pipeline variable they set is one the script
// reads (a renamed variable would otherwise be silently ignored).
func TestWorkflowsRunTheNightlyScript(t *testing.T) {
	script, err := os.ReadFile("../scripts/nightly")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		triggers []string
		calls    []string
	}{
		"nightly.yml": {[]string{"schedule", "workflow_dispatch"}, []string{"build"}},
		"promote.yml": {[]string{"workflow_dispatch"}, []string{"check staging", `promote --to "$TO"`}},
	}
	for file, w := range want {
		b, err := os.ReadFile(filepath.Join("../.github/workflows", file))
		if err != nil {
			t.Fatal(err)
		}
		var wf workflow
		if err := yaml.Unmarshal(b, &wf); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var triggers []string
		for k := range wf.On {
			triggers = append(triggers, k)
		}
		slices.Sort(triggers)
		if !slices.Equal(triggers, w.triggers) {
			t.Errorf("%s: triggers %q, want %q", file, triggers, w.triggers)
		}
		if len(wf.Jobs) == 0 {
			t.Errorf("%s: no jobs", file)
		}
		var calls []string
		envs := []map[string]string{wf.Env}
		for name, job := range wf.Jobs {
			if job.RunsOn == nil {
				t.Errorf("%s: job %s has no runs-on", file, name)
			}
			envs = append(envs, job.Env)
			for _, s := range job.Steps {
				envs = append(envs, s.Env)
				if s.Uses != "" && !regexp.MustCompile(`^[\w.-]+/[\w.-]+@v\d+$`).MatchString(s.Uses) {
					t.Errorf("%s: job %s uses %q, want OWNER/ACTION@vN", file, name, s.Uses)
				}
				if strings.Contains(s.Run, "${{") {
					t.Errorf("%s: job %s runs %q: pass expressions through env, not into the shell text", file, name, s.Run)
				}
				for _, m := range nightlyCall.FindAllStringSubmatch(s.Run, -1) {
					calls = append(calls, strings.TrimSpace(m[1]))
				}
			}
		}
		slices.Sort(calls)
		if !slices.Equal(calls, w.calls) {
			t.Errorf("%s: scripts/nightly calls %q, want %q", file, calls, w.calls)
		}
		for _, env := range envs {
			for k := range env {
				if regexp.MustCompile(`^(NIGHTLY_|STAGING_|AMI_|REGISTRY)`).MatchString(k) && !strings.Contains(string(script), k) {
					t.Errorf("%s sets %s, which scripts/nightly does not read", file, k)
				}
			}
		}
	}
	// The subcommands the workflows call exist: each answers its usage error, not the script's.
	for _, c := range []string{"build", "check", "promote"} {
		if !regexp.MustCompile(`\n  ` + c + `\) shift; cmd_` + c + ` "\$@" ;;`).Match(script) {
			t.Errorf("scripts/nightly has no subcommand %s", c)
		}
	}
}

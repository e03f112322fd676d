package configure

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
)

const updateSection = `  update:
    server: http://10.0.2.100
    channel: prod
    interval: 90s
    window: "02:00-04:00"
`

// TestUpdateEnabled: a NodeConfig with spec.update has configure persist it (defaults applied)
// for imgctl-node update, set the timer's interval in a runtime drop-in, reload systemd and
// start the timer; the configured marker appears only once the kubelet is healthy.
func TestUpdateEnabled(t *testing.T) {
	f, o := newFixture(t, tokenConfig+updateSection)
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	u, ok, err := updatestate.ReadConfig(filepath.Join(f.root, updatestate.ConfigPath))
	if err != nil || !ok {
		t.Fatalf("update.json: ok=%v %v", ok, err)
	}
	if u.Server != "http://10.0.2.100" || u.Channel != "prod" || u.Interval != "1m30s" || u.Window != "02:00-04:00" || !u.IsEnabled() || u.Enabled == nil {
		t.Fatalf("update.json holds %+v", u)
	}
	dropIn, err := os.ReadFile(filepath.Join(f.root, UpdateTimerDropIn))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dropIn), "[Timer]\nOnUnitInactiveSec=90s\n") {
		t.Fatalf("drop-in:\n%s", dropIn)
	}
	// An empty assignment resets every trigger of the timer (systemd.timer(5)), the unit's
	// OnActiveSec= first check included: the timer would elapse and never run the update.
	for _, l := range strings.Split(string(dropIn), "\n") {
		if strings.HasPrefix(l, "On") && strings.HasSuffix(l, "=") {
			t.Errorf("drop-in resets the timer's triggers with %q (the first check would never run):\n%s", l, dropIn)
		}
	}
	want := []string{"systemctl daemon-reload", "systemctl start imgctl-update.timer"}
	if got := f.commands[:2]; !slices.Equal(got, want) {
		t.Fatalf("first commands %q, want %q", f.commands, want)
	}
	if got := f.lines(); !slices.Contains(got, "update-config=ok") {
		t.Fatalf("steps %q", got)
	}
	if !strings.Contains(f.steps.String(), `step=update-config status=ok`) || !strings.Contains(f.steps.String(), `channel=prod`) {
		t.Fatalf("update-config line:\n%s", f.steps.String())
	}
	if _, err := os.Stat(filepath.Join(f.root, MarkerPath)); err != nil {
		t.Fatalf("configured marker: %v", err)
	}
}

func TestUpdateDisabledOrAbsent(t *testing.T) {
	for name, tc := range map[string]struct {
		section  string
		wantJSON bool
		wantLine string
	}{
		"disabled": {updateSection + "    enabled: false\n", true, `reason="updates disabled (spec.update.enabled: false)"`},
		"absent":   {"", false, ""},
	} {
		t.Run(name, func(t *testing.T) {
			f, o := newFixture(t, tokenConfig+tc.section)
			// A stale file from an earlier run of this boot goes when the section does.
			_ = writeFile(f.root, updatestate.ConfigPath, 0o644, []byte("{}"))
			if err := Run(context.Background(), o); err != nil {
				t.Fatalf("%v\n%s", err, f.steps.String())
			}
			_, ok, err := updatestate.ReadConfig(filepath.Join(f.root, updatestate.ConfigPath))
			if err != nil || ok != tc.wantJSON {
				t.Fatalf("update.json present=%v (want %v), %v", ok, tc.wantJSON, err)
			}
			if _, err := os.Stat(filepath.Join(f.root, UpdateTimerDropIn)); err == nil {
				t.Fatal("timer drop-in written for a node that does not update")
			}
			for _, c := range f.commands {
				if strings.Contains(c, "imgctl-update") || strings.Contains(c, "daemon-reload") {
					t.Fatalf("ran %q", c)
				}
			}
			if tc.wantLine != "" && !strings.Contains(f.steps.String(), tc.wantLine) {
				t.Fatalf("no %s in\n%s", tc.wantLine, f.steps.String())
			}
			if tc.wantLine == "" && strings.Contains(f.steps.String(), "update-config") {
				t.Fatalf("update-config line without a section:\n%s", f.steps.String())
			}
		})
	}
}

// TestConfiguredMarker: the marker bless trusts is written only after a healthy kubelet and
// the post-configure hooks, and a run that fails removes one a previous run left.
func TestConfiguredMarker(t *testing.T) {
	for name, tc := range map[string]struct {
		setup  func(f *fixture, o *Options)
		want   bool // the marker
		wantOK bool // Run's result
	}{
		"healthy":           {nil, true, true},
		"kubelet unhealthy": {func(f *fixture, o *Options) { f.healthy = false }, false, false},
		"failing post hook": {func(f *fixture, o *Options) {
			p := filepath.Join(f.root, "etc/imgctl/hooks.d/post-configure.d/10-fail")
			_ = os.MkdirAll(filepath.Dir(p), 0o755)
			_ = os.WriteFile(p, []byte("#!/bin/sh\nexit 1\n"), 0o755)
		}, false, false},
		"start timer fails": {func(f *fixture, o *Options) {
			f.cmdErr = map[string]error{"systemctl start imgctl-update.timer": errors.New("exit status 5")}
		}, false, false},
		"dry run": {func(f *fixture, o *Options) { o.DryRun = true }, false, true},
	} {
		t.Run(name, func(t *testing.T) {
			f, o := newFixture(t, tokenConfig+updateSection)
			marker := filepath.Join(f.root, MarkerPath)
			if name != "dry run" {
				_ = writeFile(f.root, MarkerPath, 0o644, []byte("stale\n"))
			}
			if tc.setup != nil {
				tc.setup(f, &o)
			}
			err := Run(context.Background(), o)
			if (err == nil) != tc.wantOK {
				t.Fatalf("Run: %v\n%s", err, f.steps.String())
			}
			_, serr := os.Stat(marker)
			if got := serr == nil; got != tc.want {
				t.Fatalf("marker present=%v, want %v\n%s", got, tc.want, f.steps.String())
			}
		})
	}
}

func TestUpdateDryRun(t *testing.T) {
	f, o := newFixture(t, tokenConfig+updateSection)
	o.DryRun = true
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if len(f.commands) != 0 {
		t.Fatalf("dry run ran %q", f.commands)
	}
	for _, p := range []string{updatestate.ConfigPath, UpdateTimerDropIn} {
		if _, err := os.Stat(filepath.Join(f.root, p)); err != nil {
			t.Errorf("dry run did not write %s: %v", p, err)
		}
	}
	if !strings.Contains(f.steps.String(), `systemctl="skipped (dry run): systemctl daemon-reload; systemctl start imgctl-update.timer"`) {
		t.Fatalf("update-config line:\n%s", f.steps.String())
	}
}

// TestUpdateTimerTriggers merges the drop-in configure writes over the shipped
// imgctl-update.timer as systemd does (an empty assignment to any On…= trigger clears every
// trigger the unit had, systemd.timer(5)) and checks the result: the unit's first check after
// the timer starts (OnActiveSec) and the NodeConfig's interval after each run, nothing else.
// A drop-in that only reset OnUnitInactiveSec= left the timer with no first check: it went
// "active (elapsed)" and never started the update service (seen in the qemu e2e).
func TestUpdateTimerTriggers(t *testing.T) {
	unit, err := os.ReadFile("../../../../scripts/bootstrap/root/usr/lib/systemd/system/" + UpdateTimerUnit)
	if err != nil {
		t.Fatal(err)
	}
	f, o := newFixture(t, tokenConfig+updateSection)
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	dropIn, err := os.ReadFile(filepath.Join(f.root, UpdateTimerDropIn))
	if err != nil {
		t.Fatal(err)
	}
	var triggers []string
	unitFirst := ""
	for i, file := range []string{string(unit), string(dropIn)} {
		section := ""
		for _, l := range strings.Split(file, "\n") {
			l = strings.TrimSpace(l)
			if strings.HasPrefix(l, "[") {
				section = l
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			if section != "[Timer]" || !ok || !strings.HasPrefix(k, "On") {
				continue
			}
			if i == 0 && k == "OnActiveSec" {
				unitFirst = l
			}
			if v == "" {
				triggers = nil
				continue
			}
			triggers = append(triggers, l)
		}
	}
	if unitFirst == "" {
		t.Fatalf("%s has no OnActiveSec=:\n%s", UpdateTimerUnit, unit)
	}
	if want := []string{unitFirst, "OnUnitInactiveSec=90s"}; !slices.Equal(triggers, want) {
		t.Errorf("the timer's triggers with the drop-in are %q, want %q\ndrop-in:\n%s", triggers, want, dropIn)
	}
}

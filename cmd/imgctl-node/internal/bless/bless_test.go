package bless

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/esp"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/nodeapi"
)

const (
	imgV1  = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	rootV1 = "sha256:aaaa111111111111111111111111111111111111111111111111111111111111"
	imgV2  = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	rootV2 = "sha256:aaaa222222222222222222222222222222222222222222222222222222222222"
	imgV3  = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	rootV3 = "sha256:aaaa333333333333333333333333333333333333333333333333333333333333"
)

var now = time.Date(2026, 12, 5, 9, 30, 0, 0, time.UTC)

type fixture struct {
	esp     *esp.ESP
	state   string
	steps   bytes.Buffer
	reboots int
	reports []nodeapi.Report
}

// newFixture lays out an ESP with the given entries (file name → version); slots with a sidecar
// get image.json.
func newFixture(t *testing.T, entries map[string]int64, sidecars map[string]esp.SlotImage) *fixture {
	t.Helper()
	f := &fixture{esp: esp.New(t.TempDir()), state: filepath.Join(t.TempDir(), "update", "state.json")}
	ctx := context.Background()
	for name, v := range entries {
		n, ok := boot.ParseEntryFile(name)
		if !ok {
			t.Fatalf("bad entry %s", name)
		}
		data := boot.Entry{Slot: n.Slot, Version: v, Cmdline: []string{"console=ttyS0", "imgctl.root-digest=" + map[string]string{"a": rootV1, "b": rootV3}[n.Slot]}}.Marshal()
		if err := f.esp.WriteFile(ctx, boot.EntriesDir+"/"+name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	for slot, s := range sidecars {
		if err := f.esp.WriteSlotImage(ctx, slot, s); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) options(slot string, configured bool) Options {
	return Options{
		ESP: f.esp, Slot: slot, Configured: configured, RootDigest: rootV1,
		StatePath: f.state, Steps: steplog.New(&f.steps), Logger: slog.New(slog.DiscardHandler),
		Reboot: func(context.Context) error { f.reboots++; return nil },
		Report: func(_ context.Context, r nodeapi.Report) { f.reports = append(f.reports, r) },
		Now:    func() time.Time { return now },
	}
}

func (f *fixture) entries(t *testing.T) []string {
	t.Helper()
	ents, err := f.esp.Entries()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.File)
	}
	return out
}

// TestDecisions: the running slot's entry (counting or blessed) × configure ok or failed × the
// other slot's entry (none, blessed, used up +0-3): what bless renames, removes, records,
// reports and whether it reboots.
func TestDecisions(t *testing.T) {
	side := map[string]esp.SlotImage{
		"b": {Image: imgV2, Root: rootV2, Version: "v2"},
	}
	failedSide := map[string]esp.SlotImage{
		"b": {Image: imgV3, Root: rootV3, Version: "v3"},
	}
	tests := []struct {
		name       string
		entries    map[string]int64
		sidecars   map[string]esp.SlotImage
		slot       string
		configured bool
		staged     *updatestate.Staged

		wantErr     string
		wantEntries []string
		wantReboots int
		wantReports []string // phase/ok/image
		wantFailed  []string // images in state.failed
		wantStaged  bool
		wantLines   []string
	}{
		{
			name:    "new slot healthy: blessed and reported",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+2-1.conf": 2}, sidecars: side, slot: "b", configured: true,
			staged:      &updatestate.Staged{Slot: "b", Image: imgV2, Root: rootV2, Version: "v2"},
			wantEntries: []string{"imgctl-a.conf", "imgctl-b.conf"},
			wantReports: []string{"update/true/" + imgV2},
			wantLines:   []string{"step=update-bless status=ok", "slot=b", "image=" + imgV2, "version=v2", "entry=imgctl-b.conf"},
		},
		{
			name:    "fresh disk's first boot: blessed, no update to report",
			entries: map[string]int64{"imgctl-a+2-1.conf": 1}, slot: "a", configured: true,
			wantEntries: []string{"imgctl-a.conf"},
			wantLines:   []string{"step=update-bless status=ok", "slot=a", "root=" + rootV1},
		},
		{
			name:    "new slot's configure failed, tries left: reboot without blessing",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+1-2.conf": 2}, sidecars: side, slot: "b", configured: false,
			wantErr:     "configuration did not succeed",
			wantEntries: []string{"imgctl-a.conf", "imgctl-b+1-2.conf"}, wantReboots: 1,
			wantReports: []string{"update/false/" + imgV2}, wantStaged: false,
			wantLines: []string{"step=update-bless status=fail", "slot=b", "tries-left=1", "step=update-reboot status=ok"},
		},
		{
			name:    "third failed boot (+0-3) with the old slot good: reboot so that systemd-boot falls back",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+0-3.conf": 2}, sidecars: side, slot: "b", configured: false,
			wantErr:     "configuration did not succeed",
			wantEntries: []string{"imgctl-a.conf", "imgctl-b+0-3.conf"}, wantReboots: 1,
			wantReports: []string{"update/false/" + imgV2},
			wantLines:   []string{"step=update-bless status=fail", "tries-left=0", "step=update-reboot status=ok"},
		},
		{
			name:    "last resort: no tries left and nothing else to boot: no reboot loop",
			entries: map[string]int64{"imgctl-a+0-3.conf": 1}, slot: "a", configured: false,
			wantErr:     "configuration did not succeed",
			wantEntries: []string{"imgctl-a+0-3.conf"},
			wantLines:   []string{"step=update-bless status=fail", "step=update-reboot status=skip", `reason="no other slot to fall back to"`},
		},
		{
			name:    "fresh disk, configure failed: no reboot, there is no other slot to fall back to",
			entries: map[string]int64{"imgctl-a+2-1.conf": 1}, slot: "a", configured: false,
			wantErr:     "configuration did not succeed",
			wantEntries: []string{"imgctl-a+2-1.conf"},
			wantLines:   []string{"step=update-bless status=fail", "tries-left=2", "step=update-reboot status=skip", `reason="no other slot to fall back to"`},
		},
		{
			name:    "other slot used up too: no reboot",
			entries: map[string]int64{"imgctl-a+0-3.conf": 1, "imgctl-b+1-2.conf": 2}, sidecars: side, slot: "b", configured: false,
			wantErr:     "configuration did not succeed",
			wantEntries: []string{"imgctl-b+1-2.conf"},
			wantReports: []string{"update/false/", "update/false/" + imgV2},
			wantLines:   []string{"step=update-rollback status=fail", "step=update-reboot status=skip"},
		},
		{
			name:    "blessed slot, configure failed: never reboot",
			entries: map[string]int64{"imgctl-a.conf": 1}, slot: "a", configured: false,
			wantEntries: []string{"imgctl-a.conf"},
			wantLines:   []string{"step=update-bless status=skip", `reason="slot a is already blessed"`},
		},
		{
			name:    "blessed slot, configure ok: nothing to do",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b.conf": 2}, slot: "a", configured: true,
			wantEntries: []string{"imgctl-a.conf", "imgctl-b.conf"},
			wantLines:   []string{"step=update-bless status=skip"},
		},
		{
			name:    "fell back from a used-up slot: record, report, free the slot",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+0-3.conf": 2}, sidecars: failedSide, slot: "a", configured: true,
			staged:      &updatestate.Staged{Slot: "b", Image: imgV3, Root: rootV3, Version: "v3"},
			wantEntries: []string{"imgctl-a.conf"},
			wantReports: []string{"update/false/" + imgV3},
			wantFailed:  []string{imgV3},
			wantLines:   []string{"step=update-rollback status=fail", "slot=b", "image=" + imgV3, "version=v3", "tries=3", "step=update-bless status=skip"},
		},
		{
			name:    "fell back while the old slot was still counting: record the failure and bless the old slot",
			entries: map[string]int64{"imgctl-a+2-1.conf": 1, "imgctl-b+0-3.conf": 2}, sidecars: failedSide, slot: "a", configured: true,
			wantEntries: []string{"imgctl-a.conf"},
			wantReports: []string{"update/false/" + imgV3},
			wantFailed:  []string{imgV3},
			wantLines:   []string{"step=update-rollback status=fail", "step=update-bless status=ok", "slot=a"},
		},
		{
			name:    "fell back, configure failed on the old blessed slot too: record, no reboot",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+0-3.conf": 2}, sidecars: failedSide, slot: "a", configured: false,
			wantEntries: []string{"imgctl-a.conf"},
			wantReports: []string{"update/false/" + imgV3},
			wantFailed:  []string{imgV3},
			wantLines:   []string{"step=update-rollback status=fail", "step=update-bless status=skip"},
		},
		{
			name:    "other slot still has tries (staged, never booted): left alone",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+3.conf": 2}, sidecars: side, slot: "a", configured: true,
			staged:      &updatestate.Staged{Slot: "b", Image: imgV2, Root: rootV2, Version: "v2"},
			wantEntries: []string{"imgctl-a.conf", "imgctl-b+3.conf"}, wantStaged: true,
			wantLines: []string{"step=update-bless status=skip"},
		},
		{
			name:    "used-up slot without image.json: removed, reported by its root digest only",
			entries: map[string]int64{"imgctl-a.conf": 1, "imgctl-b+0-3.conf": 2}, slot: "a", configured: true,
			wantEntries: []string{"imgctl-a.conf"},
			wantReports: []string{"update/false/"},
			wantLines:   []string{"step=update-rollback status=fail", "root=" + rootV3, "image=unknown"},
		},
		{
			name:    "no entry for the running slot",
			entries: map[string]int64{"imgctl-b.conf": 1}, slot: "a", configured: true,
			wantEntries: []string{"imgctl-b.conf"},
			wantLines:   []string{"step=update-bless status=skip", `reason="no loader entry for slot a"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.entries, tt.sidecars)
			if tt.staged != nil {
				tt.staged.Time = now
				if err := updatestate.Save(f.state, updatestate.State{Staged: tt.staged}); err != nil {
					t.Fatal(err)
				}
			}
			err := Run(context.Background(), f.options(tt.slot, tt.configured))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Run: %v\n%s", err, f.steps.String())
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Run: %v, want an error containing %q", err, tt.wantErr)
			}
			if got := f.entries(t); !slices.Equal(got, tt.wantEntries) {
				t.Errorf("entries %q, want %q", got, tt.wantEntries)
			}
			if f.reboots != tt.wantReboots {
				t.Errorf("%d reboots, want %d", f.reboots, tt.wantReboots)
			}
			var reps []string
			for _, r := range f.reports {
				if err := r.Validate(); err != nil {
					t.Errorf("invalid report %+v: %v", r, err)
				}
				reps = append(reps, string(r.Phase)+"/"+map[bool]string{true: "true", false: "false"}[r.OK]+"/"+r.Image)
			}
			if !slices.Equal(reps, tt.wantReports) {
				t.Errorf("reports %q, want %q", reps, tt.wantReports)
			}
			st, err := updatestate.Load(f.state, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			var failed []string
			for _, x := range st.Failed {
				failed = append(failed, x.Image)
				if x.Reason == "" || !x.Time.Equal(now) {
					t.Errorf("failed record without reason or time: %+v", x)
				}
			}
			if !slices.Equal(failed, tt.wantFailed) {
				t.Errorf("state.failed %q, want %q", failed, tt.wantFailed)
			}
			if (st.Staged != nil) != tt.wantStaged {
				t.Errorf("state.staged = %+v, want present=%v", st.Staged, tt.wantStaged)
			}
			out := f.steps.String()
			for _, w := range tt.wantLines {
				if !strings.Contains(out, w) {
					t.Errorf("step lines lack %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestRecordsFailedOnce: a second boot after a fallback records nothing new (the entry is gone).
func TestRecordsFailedOnce(t *testing.T) {
	f := newFixture(t, map[string]int64{"imgctl-a.conf": 1, "imgctl-b+0-3.conf": 2}, map[string]esp.SlotImage{"b": {Image: imgV3, Root: rootV3, Version: "v3"}})
	for range 2 {
		if err := Run(context.Background(), f.options("a", true)); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := updatestate.Load(f.state, slog.New(slog.DiscardHandler))
	if len(st.Failed) != 1 || len(f.reports) != 1 {
		t.Fatalf("failed %+v, %d reports", st.Failed, len(f.reports))
	}
}

func TestDebugDoesNotReboot(t *testing.T) {
	f := newFixture(t, map[string]int64{"imgctl-a.conf": 1, "imgctl-b+2-1.conf": 2}, nil)
	o := f.options("b", false)
	o.Debug = true
	if err := Run(context.Background(), o); err == nil {
		t.Fatal("no error")
	}
	if f.reboots != 0 || !strings.Contains(f.steps.String(), `step=update-reboot status=skip`) || !strings.Contains(f.steps.String(), "imgctl.debug") {
		t.Fatalf("%d reboots\n%s", f.reboots, f.steps.String())
	}
}

func TestRebootFailure(t *testing.T) {
	f := newFixture(t, map[string]int64{"imgctl-a.conf": 1, "imgctl-b+2-1.conf": 2}, nil)
	o := f.options("b", false)
	o.Reboot = func(context.Context) error { return errors.New("systemctl reboot: exit status 1") }
	err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "systemctl reboot: exit status 1") {
		t.Fatalf("Run: %v", err)
	}
	if !strings.Contains(f.steps.String(), "step=update-reboot status=fail") {
		t.Fatalf("%s", f.steps.String())
	}
}

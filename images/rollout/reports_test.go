package rollout

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/nodeapi"
)

var t0 = time.Date(2026, 12, 5, 0, 10, 0, 0, time.UTC)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func openReports(t *testing.T) *Reports {
	t.Helper()
	r, err := Open(filepath.Join(t.TempDir(), "serve", "reports"), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// report is a valid report: ok, or failed at step failed.
func report(phase nodeapi.Phase, failed string, when time.Time) nodeapi.Report {
	r := nodeapi.Report{Phase: phase, OK: failed == "", Failed: failed, Time: when,
		Steps: []nodeapi.Step{{Name: "network", Status: nodeapi.StatusOK, Millis: 120}}}
	if failed != "" {
		r.Steps = append(r.Steps, nodeapi.Step{Name: failed, Status: nodeapi.StatusFail, Millis: 5, Error: "it broke"})
	}
	return r
}

func record(node string, img digest.Digest, n int) Record {
	when := t0.Add(time.Duration(n) * time.Second)
	return Record{Node: node, Channel: "nightly", Role: "node", Image: img, BootID: fmt.Sprintf("%032x", n),
		Addr: "192.0.2.10", Received: when, Report: report(nodeapi.PhaseInit, "", when)}
}

func TestSaveLatestSurvivesReopen(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	if recs, err := r.Latest(ctx); err != nil || len(recs) != 0 {
		t.Fatalf("Latest of an empty directory = %v, %v", recs, err)
	}
	img := digest.FromString("image")
	for i, rec := range []Record{record("b", img, 1), record("a", img, 2), record("b", img, 3)} {
		if err := r.Save(ctx, rec); err != nil {
			t.Fatalf("save %d: %v", i, err)
		}
	}
	again, err := Open(r.Dir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := again.Latest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Node != "a" || recs[1].Node != "b" || recs[1].BootID != record("b", img, 3).BootID {
		t.Fatalf("Latest after reopening = %+v", recs)
	}
	want := record("b", img, 3)
	got := recs[1]
	if !got.Received.Equal(want.Received) || got.Image != img || got.Addr != want.Addr || got.Report.Phase != nodeapi.PhaseInit ||
		len(got.Report.Steps) != 1 || !got.Report.Time.Equal(want.Report.Time) {
		t.Errorf("record read back = %+v, want %+v", got, want)
	}
	h, err := again.History(ctx, "b")
	if err != nil || len(h) != 2 || h[0].BootID != record("b", img, 1).BootID || h[1].BootID != want.BootID {
		t.Errorf("History(b) = %+v, %v", h, err)
	}
	// An older report arriving late (another replica) goes into the history, not over the latest.
	if err := r.Save(ctx, record("b", img, 0)); err != nil {
		t.Fatal(err)
	}
	recs, _ = r.Latest(ctx)
	if recs[1].BootID != want.BootID {
		t.Errorf("a late older report replaced the latest: %+v", recs[1])
	}
	if h, _ := r.History(ctx, "b"); len(h) != 3 || h[0].BootID != record("b", img, 0).BootID {
		t.Errorf("history not in time order: %+v", h)
	}
}

func TestSaveFillsReceived(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	rec := record("a", digest.FromString("x"), 1)
	rec.Received = time.Time{}
	before := time.Now()
	if err := r.Save(ctx, rec); err != nil {
		t.Fatal(err)
	}
	recs, err := r.Latest(ctx)
	if err != nil || len(recs) != 1 || recs[0].Received.Before(before.Add(-time.Second)) || recs[0].Received.Location() != time.UTC {
		t.Fatalf("Latest = %+v, %v: want Received set to the server's clock in UTC", recs, err)
	}
}

func TestHistoryBounded(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	img := digest.FromString("image")
	for i := range HistoryLimit + 7 {
		if err := r.Save(ctx, record("a", img, i)); err != nil {
			t.Fatal(err)
		}
	}
	h, err := r.History(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != HistoryLimit || h[0].BootID != record("a", img, 7).BootID || h[len(h)-1].BootID != record("a", img, HistoryLimit+6).BootID {
		t.Fatalf("history has %d records, %s … %s; want the last %d", len(h), h[0].BootID, h[len(h)-1].BootID, HistoryLimit)
	}
	if temps, _ := filepath.Glob(filepath.Join(r.Dir(), "*", ".tmp-*")); len(temps) != 0 {
		t.Errorf("temp files left: %v", temps)
	}
}

func TestSaveRefusesBadRecords(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	img := digest.FromString("image")
	for _, c := range []struct {
		name string
		edit func(*Record)
		want string
	}{
		{"path in node name", func(rec *Record) { rec.Node = "../../etc/passwd" }, `node name "../../etc/passwd"`},
		{"empty node name", func(rec *Record) { rec.Node = "" }, `node name ""`},
		{"dot node name", func(rec *Record) { rec.Node = ".." }, `node name ".."`},
		{"upper case node name", func(rec *Record) { rec.Node = "Node-A" }, `node name "Node-A"`},
		{"bad image digest", func(rec *Record) { rec.Image = "sha256:zz" }, `image "sha256:zz"`},
		{"no image", func(rec *Record) { rec.Image = "" }, `image "": expected sha256:HEX`},
		{"bad channel", func(rec *Record) { rec.Channel = "Night/ly" }, `channel name "Night/ly"`},
		{"invalid report", func(rec *Record) { rec.Report.Phase = "boot" }, `phase: "boot" is not a phase`},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := record("a", img, 1)
			c.edit(&rec)
			err := r.Save(ctx, rec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Save = %v, want an error containing %q", err, c.want)
			}
		})
	}
	if ents, _ := os.ReadDir(r.Dir()); len(ents) != 0 {
		names := []string{}
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("refused records left files: %v", names)
	}
}

// TestLatestReportsCorruptFiles: a record file that does not decode is named in Latest's error,
// and the other nodes' records are still returned.
func TestLatestReportsCorruptFiles(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	img := digest.FromString("image")
	for _, n := range []string{"a", "b", "c", "d"} {
		if err := r.Save(ctx, record(n, img, 1)); err != nil {
			t.Fatal(err)
		}
	}
	bad := filepath.Join(r.Dir(), "b.json")
	if err := os.WriteFile(bad, []byte(`{"schemaVersion":1,"node":"b",`), 0o644); err != nil {
		t.Fatal(err)
	}
	// A record whose node is not its file's name (a copied file) is not that node's.
	data, err := os.ReadFile(filepath.Join(r.Dir(), "c.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.Dir(), "d.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	// A killed writer's temp file is no record.
	if err := os.WriteFile(filepath.Join(r.Dir(), ".tmp-a.json-123"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := r.Latest(ctx)
	var ce *CorruptError
	if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), filepath.Join(r.Dir(), "d.json")) {
		t.Fatalf("Latest error = %v, want one naming %s and d.json", err, bad)
	}
	if len(recs) != 2 || recs[0].Node != "a" || recs[1].Node != "c" {
		t.Fatalf("Latest returned %+v, want a and c despite b and d", recs)
	}
	// Saving b again repairs it (the history still reads).
	if err := r.Save(ctx, record("b", img, 2)); err != nil {
		t.Fatal(err)
	}
	if h, err := r.History(ctx, "b"); err != nil || len(h) != 2 {
		t.Errorf("History(b) = %d records, %v", len(h), err)
	}
}

// TestConcurrentSave: goroutines saving for the same and for different nodes lose nothing: each
// node's history has every record (up to the limit) and the latest is its newest.
func TestConcurrentSave(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	// A second Reports on the same directory stands for another replica.
	r2, err := Open(r.Dir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	img := digest.FromString("image")
	const perNode = 12
	nodes := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes)*perNode)
	for _, n := range nodes {
		for i := range perNode {
			wg.Go(func() {
				rr := r
				if i%2 == 1 {
					rr = r2
				}
				errs <- rr.Save(ctx, record(n, img, i))
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	recs, err := r.Latest(ctx)
	if err != nil || len(recs) != len(nodes) {
		t.Fatalf("Latest = %+v, %v", recs, err)
	}
	for i, n := range nodes {
		if recs[i].Node != n || recs[i].BootID != record(n, img, perNode-1).BootID {
			t.Errorf("latest of %s = %+v, want the newest", n, recs[i])
		}
		h, err := r.History(ctx, n)
		if err != nil || len(h) != perNode {
			t.Fatalf("History(%s) has %d records (%v), want %d", n, len(h), err, perNode)
		}
		for j, rec := range h {
			if rec.BootID != record(n, img, j).BootID {
				t.Errorf("History(%s)[%d] = %s", n, j, rec.BootID)
			}
		}
	}
}

// TestSaveSetsACorruptHistoryAside: a history that cannot be read does not stop a report from
// being recorded, and is kept (renamed) for inspection rather than overwritten.
func TestSaveSetsACorruptHistoryAside(t *testing.T) {
	ctx := t.Context()
	r := openReports(t)
	img := digest.FromString("image")
	if err := r.Save(ctx, record("a", img, 1)); err != nil {
		t.Fatal(err)
	}
	hp := filepath.Join(r.Dir(), "history", "a.json")
	if err := os.WriteFile(hp, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.History(ctx, "a"); err == nil || !strings.Contains(err.Error(), hp) {
		t.Fatalf("History of a corrupt file = %v, want an error naming %s", err, hp)
	}
	if err := r.Save(ctx, record("a", img, 2)); err != nil {
		t.Fatal(err)
	}
	if h, err := r.History(ctx, "a"); err != nil || len(h) != 1 || h[0].BootID != record("a", img, 2).BootID {
		t.Errorf("History after saving = %+v, %v", h, err)
	}
	kept, _ := filepath.Glob(filepath.Join(r.Dir(), "history", ".corrupt-a.json-*"))
	if len(kept) != 1 {
		t.Fatalf("corrupt history kept as %v, want one file", kept)
	}
	if data, _ := os.ReadFile(kept[0]); string(data) != "garbage" {
		t.Errorf("kept %q", data)
	}
}

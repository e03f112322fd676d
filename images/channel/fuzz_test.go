package channel

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// fuzzLog is a Log on a bare channels directory: History, readHistory and Move need no store.
func fuzzLog(dir string) *Log {
	return &Log{dir: dir, log: slog.New(slog.DiscardHandler), sems: map[string]chan struct{}{}}
}

func fuzzHistory() History {
	a, b := digest.FromString("a"), digest.FromString("b")
	when := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	return History{SchemaVersion: SchemaVersion, Channel: "nightly", Entries: []Entry{
		{Seq: 1, Channel: "nightly", Action: ActionPromote, To: a, ToVersion: "1.0", Who: "ci@build", When: when, Tool: "imgctl v1"},
		{Seq: 2, Channel: "nightly", Action: ActionPromote, From: a, To: b, FromVersion: "1.0", ToVersion: "1.1", Reason: "<fix> & more", Who: "ci@build", When: when.Add(time.Hour), Tool: "imgctl v1"},
		{Seq: 3, Channel: "nightly", Action: ActionRollback, From: b, To: a, Forced: true, Who: "me@here", When: when.Add(2 * time.Hour), Tool: "imgctl v1"},
	}}
}

// TestReadHistoryRejectsTrailingData: a history file is one JSON document; data after it was
// silently ignored.
func TestReadHistoryRejectsTrailingData(t *testing.T) {
	l := fuzzLog(t.TempDir())
	data, err := json.MarshalIndent(fuzzHistory(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for _, tail := range []string{`{"schemaVersion": 1}`, "]", "x"} {
		if err := os.WriteFile(l.historyPath("nightly"), append(data, tail...), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := l.readHistory("nightly"); err == nil || !strings.Contains(err.Error(), l.historyPath("nightly")) {
			t.Errorf("history followed by %q: err = %v, want an error naming the file", tail, err)
		}
	}
}

// FuzzReadHistory: a history file is accepted only if it is one JSON document that Check
// accepts; an accepted history re-encodes (as Move writes it) to a history that reads back and
// encodes to the same bytes. (Move itself fsyncs: too slow to call per input.)
func FuzzReadHistory(f *testing.F) {
	h := fuzzHistory()
	for _, hh := range []History{h, {SchemaVersion: 1, Channel: "nightly"}, {SchemaVersion: 1, Channel: "nightly", Entries: h.Entries[:1]}} {
		data, err := json.MarshalIndent(hh, "", "  ")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"schemaVersion":1,"channel":"nightly","entries":[{"seq":1,"channel":"nightly","action":"promote","to":"sha256:x"}]}`))
	f.Add([]byte(`{"schemaVersion":1,"channel":"nightly","entries":[{"seq":1,"channel":"nightly","action":"promote","to":"` +
		digest.FromString("a").String() + `","when":"2026-01-01T00:00:00+01:00"}]}`))
	f.Add([]byte(`{"schemaVersion":1,"channel":"staging"}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		l := fuzzLog(dir)
		p := l.historyPath("nightly")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := l.readHistory("nightly")
		if err != nil {
			if !strings.Contains(err.Error(), "channel nightly") || !strings.Contains(err.Error(), p) {
				t.Fatalf("error does not name the channel and file: %v", err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted %q, which is not one JSON document", data)
		}
		if err := got.Check("nightly"); err != nil {
			t.Fatalf("readHistory returned a history Check refuses: %v", err)
		}
		if got.Entries == nil {
			t.Fatal("readHistory returned nil entries")
		}
		e1, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatalf("encoding an accepted history: %v", err)
		}
		if err := os.WriteFile(p, e1, 0o644); err != nil {
			t.Fatal(err)
		}
		again, err := l.readHistory("nightly")
		if err != nil {
			t.Fatalf("re-reading an encoded history: %v\n%s", err, e1)
		}
		if e2, err := json.MarshalIndent(again, "", "  "); err != nil || string(e1) != string(e2) {
			t.Fatalf("encoding is not a fixed point (%v):\n%s\n%s", err, e1, e2)
		}
	})
}

package channel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	"golang.org/x/sys/unix"

	digest "github.com/opencontainers/go-digest"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir, nil); err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Fatalf("Open of a directory that is no store: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "channels")); !os.IsNotExist(err) {
		t.Errorf("Open created channels/ in a directory that is no store: %v", err)
	}
	st := storetest.Open(t)
	l, err := Open(st.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(st.Dir(), "channels")); err != nil || !fi.IsDir() {
		t.Fatalf("channels/: %v", err)
	}
	if _, err := l.Move(t.Context(), "nightly", "", Entry{Action: ActionPromote, To: digest.FromString("a")}); err != nil {
		t.Fatal(err)
	}
	// The store, its verifier and a reopen do not mind our directory.
	if problems, err := st.Verify(t.Context()); err != nil || len(problems) != 0 {
		t.Fatalf("store.Verify = %v, %v", problems, err)
	}
	if _, err := store.Open(t.Context(), st.Dir(), nil); err != nil {
		t.Fatal(err)
	}
}

func TestOrder(t *testing.T) {
	ctx := t.Context()
	st, l, _ := newEnv(t, "1.0.1")
	order, err := l.Order()
	if err != nil || !slices.Equal(order, DefaultOrder) {
		t.Fatalf("Order = %v, %v; want the default", order, err)
	}
	order[0] = "changed" // a copy: DefaultOrder is not ours to change
	if DefaultOrder[0] != "nightly" {
		t.Fatal("Order returned DefaultOrder itself")
	}
	for _, bad := range [][]string{
		nil,
		{},
		{"dev", "dev"},
		{"Dev"},
		{"-dev"},
		{"dev-"},
		{"dev.1"},
		{"dev_1"},
		{""},
		{strings.Repeat("a", 64)},
		{"order"},
		{"dev", "prod/x"},
	} {
		if err := l.SetOrder(ctx, bad); err == nil {
			t.Errorf("SetOrder(%q) succeeded", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(l.Dir(), "order.json")); !os.IsNotExist(err) {
		t.Fatalf("a refused order was written: %v", err)
	}
	custom := []string{"dev", "canary-1", strings.Repeat("p", 63)}
	if err := l.SetOrder(ctx, custom); err != nil {
		t.Fatal(err)
	}
	// A second Log on the store sees it.
	l2, err := Open(st.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if order, err := l2.Order(); err != nil || !slices.Equal(order, custom) {
		t.Fatalf("Order after SetOrder = %v, %v", order, err)
	}
	if _, err := l2.History(ctx, "nightly"); !errors.Is(err, ErrUnknownChannel) {
		t.Errorf("History of a channel left out of the order: %v", err)
	}
	if _, err := l2.Promote(ctx, st, promote("1.0.1", "canary-1")); !errors.Is(err, ErrSkippedStage) || !strings.Contains(err.Error(), "dev") {
		t.Errorf("promote into the second channel of the new order: %v", err)
	}
	if _, err := l2.Promote(ctx, st, promote("1.0.1", "dev")); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Promote(ctx, st, promote("dev", "canary-1")); err != nil {
		t.Fatal(err)
	}

	// A broken order file is an error, not the default.
	for _, body := range []string{`{`, `{"schemaVersion":2,"channels":["a"]}`, `{"schemaVersion":1,"channels":[]}`, `{"schemaVersion":1,"channels":["A"]}`} {
		if err := os.WriteFile(filepath.Join(l.Dir(), "order.json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if order, err := l.Order(); err == nil {
			t.Errorf("Order of %s = %v", body, order)
		}
	}
}

func TestHistory(t *testing.T) {
	ctx := t.Context()
	_, l, _ := newEnv(t)
	h, err := l.History(ctx, "staging")
	if err != nil || h.SchemaVersion != 1 || h.Channel != "staging" || h.Head() != "" || h.Entries == nil || len(h.Entries) != 0 {
		t.Fatalf("History of a new channel = %+v, %v", h, err)
	}
	if _, err := l.History(ctx, "qa"); !errors.Is(err, ErrUnknownChannel) {
		t.Fatalf("History(qa) = %v", err)
	}
	a, b := digest.FromString("a"), digest.FromString("b")
	if _, err := l.Move(ctx, "staging", "", Entry{Action: ActionPromote, To: a}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Move(ctx, "staging", a, Entry{Action: ActionPromote, To: b}); err != nil {
		t.Fatal(err)
	}
	good := fileBytes(t, historyFile(l, "staging"))
	var onDisk History
	if err := json.Unmarshal(good, &onDisk); err != nil || onDisk.Head() != b || len(onDisk.Entries) != 2 {
		t.Fatalf("file %s: %v", good, err)
	}

	// A history that is not whole is an error for readers and writers; nothing is overwritten.
	for name, mangle := range map[string]func(h *History){
		"seq gap":          func(h *History) { h.Entries[1].Seq = 3 },
		"broken chain":     func(h *History) { h.Entries[1].From = b },
		"other channel":    func(h *History) { h.Channel = "prod" },
		"schema":           func(h *History) { h.SchemaVersion = 2 },
		"unknown action":   func(h *History) { h.Entries[0].Action = "teleport" },
		"bad digest":       func(h *History) { h.Entries[1].To = "sha256:zz" },
		"entry of another": func(h *History) { h.Entries[0].Channel = "prod" },
	} {
		var h History
		_ = json.Unmarshal(good, &h)
		mangle(&h)
		data, _ := json.Marshal(h)
		for _, body := range [][]byte{data, good[:len(good)/2]} {
			if err := os.WriteFile(historyFile(l, "staging"), body, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := l.History(ctx, "staging"); err == nil || !strings.Contains(err.Error(), "staging.json") {
				t.Errorf("%s: History = %v", name, err)
			}
			if _, err := l.Move(ctx, "staging", b, Entry{Action: ActionPromote, To: a}); err == nil {
				t.Errorf("%s: Move succeeded", name)
			}
			if !bytes.Equal(fileBytes(t, historyFile(l, "staging")), body) {
				t.Errorf("%s: the history was rewritten", name)
			}
		}
	}
}

func TestMove(t *testing.T) {
	ctx := t.Context()
	_, l, _ := newEnv(t)
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	start := time.Now().Add(-time.Second)
	e1, err := l.Move(ctx, "nightly", "", Entry{Action: ActionPromote, To: a, ToVersion: "1.0.a"})
	if err != nil {
		t.Fatal(err)
	}
	if e1.Seq != 1 || e1.Channel != "nightly" || e1.From != "" || e1.To != a || e1.When.Before(start) ||
		e1.When.Location() != time.UTC || e1.Who == "" || e1.Tool != DefaultTool {
		t.Errorf("first entry %+v", e1)
	}
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	e2, err := l.Move(ctx, "nightly", a, Entry{Action: ActionRollback, To: b, When: when, Seq: 2, From: a, Channel: "nightly"})
	if err != nil {
		t.Fatal(err)
	}
	if e2.Seq != 2 || e2.From != a || e2.FromVersion != "1.0.a" || !e2.When.Equal(when) || e2.When.Location() != time.UTC {
		t.Errorf("second entry %+v", e2)
	}

	// Compare-and-swap: a stale expectation is a conflict naming both heads.
	before := fileBytes(t, historyFile(l, "nightly"))
	_, err = l.Move(ctx, "nightly", a, Entry{Action: ActionPromote, To: c})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("stale Move = %v", err)
	}
	for _, w := range []string{"channel nightly moved from " + a.String() + " to " + b.String() + " while promoting " + c.String(), "retry"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("conflict %q does not say %q", err, w)
		}
	}
	if _, err := l.Move(ctx, "nightly", "", Entry{Action: ActionRollback, To: c}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "from (empty) to "+b.String()+" while rolling back to") {
		t.Errorf("Move expecting an empty channel = %v", err)
	}
	if _, err := l.Move(ctx, "nightly", b, Entry{Action: ActionPromote, To: c, Seq: 7}); !errors.Is(err, ErrConflict) {
		t.Errorf("Move with a wrong seq = %v", err)
	}
	for name, e := range map[string]Entry{
		"no action":       {To: c},
		"unknown action":  {Action: "copy", To: c},
		"no image":        {Action: ActionPromote},
		"bad image":       {Action: ActionPromote, To: "sha256:1234"},
		"wrong channel":   {Action: ActionPromote, To: c, Channel: "prod"},
		"wrong from":      {Action: ActionPromote, To: c, From: a},
		"to the head":     {Action: ActionPromote, To: b},
		"unknown channel": {Action: ActionPromote, To: c, Channel: "qa"},
	} {
		ch := "nightly"
		if name == "unknown channel" {
			ch = "qa"
		}
		_, err := l.Move(ctx, ch, b, e)
		if err == nil || errors.Is(err, ErrConflict) {
			t.Errorf("%s: Move = %v", name, err)
		}
		if name == "unknown channel" && !errors.Is(err, ErrUnknownChannel) {
			t.Errorf("%s: Move = %v", name, err)
		}
	}
	if _, err := l.Move(ctx, "nightly", "sha256:bad", Entry{Action: ActionPromote, To: c}); err == nil {
		t.Error("Move with a malformed expectation succeeded")
	}
	if !bytes.Equal(before, fileBytes(t, historyFile(l, "nightly"))) {
		t.Error("refused moves changed the history")
	}
	h, err := l.History(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Entries) != 2 || h.Entries[0] != e1 || h.Entries[1] != e2 {
		t.Errorf("history %+v", h.Entries)
	}
}

func TestStaleTemps(t *testing.T) {
	ctx := t.Context()
	st, l, _ := newEnv(t)
	a := digest.FromString("a")
	if _, err := l.Move(ctx, "nightly", "", Entry{Action: ActionPromote, To: a}); err != nil {
		t.Fatal(err)
	}
	// Temps a killed writer left: a torn history and a fresh one. Readers never see them.
	old := filepath.Join(l.Dir(), ".tmp-nightly.json-111")
	fresh := filepath.Join(l.Dir(), ".tmp-nightly.json-222")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte(`{"schemaVersion":1,"chan`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if h, err := l.History(ctx, "nightly"); err != nil || h.Head() != a {
		t.Fatalf("History with temps about = %+v, %v", h, err)
	}
	if _, err := Open(st.Dir(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("stale temp survived Open: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("recent temp removed: %v", err)
	}
	// A successful move leaves no temp of its own.
	if _, err := l.Move(ctx, "nightly", a, Entry{Action: ActionPromote, To: digest.FromString("b")}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(l.Dir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") && filepath.Join(l.Dir(), e.Name()) != fresh {
			t.Errorf("temp left: %s", e.Name())
		}
	}
}

func TestLockHonoursContext(t *testing.T) {
	_, l, _ := newEnv(t)
	a := digest.FromString("a")

	// Another process (here: another open file) holds the channel's lock.
	f, err := os.OpenFile(filepath.Join(l.Dir(), "nightly.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = l.Move(ctx, "nightly", "", Entry{Action: ActionPromote, To: a})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("Move under another's lock = %v after %v", err, time.Since(start))
	}
	// Other channels have their own locks.
	if _, err := l.Move(t.Context(), "staging", "", Entry{Action: ActionPromote, To: a}); err != nil {
		t.Fatal(err)
	}
	// Once released, the waiter gets it.
	done := make(chan error, 1)
	go func() {
		_, err := l.Move(t.Context(), "nightly", "", Entry{Action: ActionPromote, To: a})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Move returned while the lock was held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// In-process: a goroutine holding the lock makes another wait, honouring ctx.
	unlock, err := l.lock(t.Context(), "nightly")
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	if _, err := l.Move(ctx2, "nightly", a, Entry{Action: ActionPromote, To: digest.FromString("b")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Move under the in-process lock = %v", err)
	}
	unlock()
	if _, err := l.Move(t.Context(), "nightly", a, Entry{Action: ActionPromote, To: digest.FromString("b")}); err != nil {
		t.Fatal(err)
	}
}

func TestList(t *testing.T) {
	ctx := t.Context()
	st, l, imgs := newEnv(t, "1.0.1", "1.0.2")
	got, err := l.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	want := []ChannelState{{Name: "nightly"}, {Name: "staging"}, {Name: "prod"}}
	if !slices.Equal(got, want) {
		t.Fatalf("List of new channels = %+v", got)
	}
	var last Entry
	for _, p := range []Promotion{promote("1.0.1", "nightly"), promote("1.0.2", "nightly"), promote("nightly", "staging")} {
		if last, err = l.Promote(ctx, st, p); err != nil {
			t.Fatal(err)
		}
	}
	// An image the history knows but the store does not (removed by gc): moved by hand here.
	gone := digest.FromString("gone")
	e, err := l.Move(ctx, "nightly", imgs["1.0.2"].Digest(), Entry{Action: ActionRollback, To: gone, ToVersion: "0.9.0"})
	if err != nil {
		t.Fatal(err)
	}
	got, err = l.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	want = []ChannelState{
		{Name: "nightly", Head: gone, Version: "0.9.0", InStore: false, LastMove: e.When, Entries: 3},
		{Name: "staging", Head: imgs["1.0.2"].Digest(), Version: "1.0.2", InStore: true, LastMove: last.When, Entries: 1},
		{Name: "prod"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List =\n%+v\nwant\n%+v", got, want)
	}
	got, err = l.List(ctx, nil)
	if err != nil || got[1].InStore || got[1].Version != "1.0.2" {
		t.Fatalf("List without a store = %+v, %v", got, err)
	}
}

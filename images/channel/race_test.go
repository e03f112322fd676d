package channel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"

	digest "github.com/opencontainers/go-digest"
)

// TestMoveRace: 32 goroutines move one channel from the same expected head to different
// images. Exactly one wins.
func TestMoveRace(t *testing.T) {
	ctx := t.Context()
	_, l, _ := newEnv(t)
	head := digest.FromString("start")
	if _, err := l.Move(ctx, "prod", "", Entry{Action: ActionPromote, To: head}); err != nil {
		t.Fatal(err)
	}
	const n = 32
	var won, conflicts atomic.Int32
	var winner atomic.Value
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			to := digest.FromString(fmt.Sprintf("image %d", i))
			e, err := l.Move(ctx, "prod", head, Entry{Action: ActionPromote, To: to})
			switch {
			case err == nil:
				won.Add(1)
				winner.Store(e)
			case errors.Is(err, ErrConflict):
				conflicts.Add(1)
				if !strings.Contains(err.Error(), "channel prod moved from "+head.String()+" to ") {
					t.Errorf("conflict message: %v", err)
				}
			default:
				t.Errorf("Move: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	t.Logf("%d won, %d conflicts", won.Load(), conflicts.Load())
	if won.Load() != 1 || conflicts.Load() != n-1 {
		t.Fatalf("%d won, %d conflicts; want 1 and %d", won.Load(), conflicts.Load(), n-1)
	}
	h, err := l.History(ctx, "prod")
	if err != nil {
		t.Fatal(err)
	}
	assertWhole(t, h, "prod")
	if len(h.Entries) != 2 || h.Entries[1] != winner.Load().(Entry) {
		t.Fatalf("history %+v, winner %+v", h.Entries, winner.Load())
	}
}

// TestPromoteRace: 32 goroutines promote different images into one channel; a barrier in the
// Verify hook makes all of them read the same head before any moves. Exactly one wins.
func TestPromoteRace(t *testing.T) {
	ctx := t.Context()
	const n = 32
	versions := []string{"base"}
	for i := range n {
		versions = append(versions, fmt.Sprintf("1.0.%d", i))
	}
	st, l, imgs := newEnv(t, versions...)
	if _, err := l.Promote(ctx, st, promote("base", "nightly")); err != nil {
		t.Fatal(err)
	}
	var arrived atomic.Int32
	all := make(chan struct{})
	l.Verify = func(ctx context.Context, img store.Image) error {
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("not every promoter reached the barrier")
		}
	}
	var mu sync.Mutex
	var won []Entry
	var conflicts []error
	var wg sync.WaitGroup
	for _, v := range versions[1:] {
		wg.Go(func() {
			e, err := l.Promote(ctx, st, promote(v, "nightly"))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, e)
			case errors.Is(err, ErrConflict):
				conflicts = append(conflicts, err)
			default:
				t.Errorf("Promote %s: %v", v, err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d won, %d conflicts", len(won), len(conflicts))
	if len(won) != 1 || len(conflicts) != n-1 {
		t.Fatalf("%d won, %d conflicts; want 1 and %d", len(won), len(conflicts), n-1)
	}
	base, w := imgs["base"].Digest(), won[0]
	for _, err := range conflicts {
		// "channel nightly moved from X to Y while promoting Z; retry"
		msg := fmt.Sprintf("channel nightly moved from %s to %s while promoting sha256:", base, w.To)
		if !strings.HasPrefix(err.Error(), msg) || !strings.Contains(err.Error(), "; retry") {
			t.Errorf("conflict message %q", err)
		}
	}
	h, err := l.History(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	assertWhole(t, h, "nightly")
	if len(h.Entries) != 2 || h.Entries[1] != w || w.From != base || w.FromVersion != "base" {
		t.Fatalf("history %+v", h.Entries)
	}
}

// TestRetryRace: goroutines (half with a Log of their own on the same store) each make moves
// in a read-head→Move loop, retrying on conflict. Every move lands, in one unbroken chain.
func TestRetryRace(t *testing.T) {
	ctx := t.Context()
	st, shared, _ := newEnv(t)
	const workers, each = 16, 6
	var conflicts atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		l := shared
		if w%2 == 1 {
			var err error
			if l, err = Open(st.Dir(), nil); err != nil {
				t.Fatal(err)
			}
		}
		wg.Go(func() {
			for i := range each {
				to := digest.FromString(fmt.Sprintf("worker %d move %d", w, i))
				for {
					h, err := l.History(ctx, "staging")
					if err != nil {
						t.Error(err)
						return
					}
					_, err = l.Move(ctx, "staging", h.Head(), Entry{Action: ActionPromote, To: to})
					if err == nil {
						break
					}
					if !errors.Is(err, ErrConflict) {
						t.Error(err)
						return
					}
					conflicts.Add(1)
				}
			}
		})
	}
	wg.Wait()
	h, err := shared.History(ctx, "staging")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d moves, %d conflicts retried", len(h.Entries), conflicts.Load())
	assertWhole(t, h, "staging")
	if len(h.Entries) != workers*each {
		t.Fatalf("%d entries, want %d", len(h.Entries), workers*each)
	}
	got := map[digest.Digest]bool{}
	for _, e := range h.Entries {
		got[e.To] = true
	}
	for w := range workers {
		for i := range each {
			if !got[digest.FromString(fmt.Sprintf("worker %d move %d", w, i))] {
				t.Errorf("move %d of worker %d lost", i, w)
			}
		}
	}
}

// TestProcessRace: child processes make read-head→Move attempts on one channel at once (no
// retries). Every success is in the history, once, in an unbroken chain, and successes plus
// conflicts add up to the attempts.
func TestProcessRace(t *testing.T) {
	st := storetest.Open(t)
	l, err := Open(st.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const procs, each = 3, 40
	goFile := filepath.Join(t.TempDir(), "go")
	type child struct {
		cmd *exec.Cmd
		out *strings.Builder
	}
	var children []child
	for p := range procs {
		cmd, out := startChild(t, "move", st.Dir(), idEnv+"="+strconv.Itoa(p), countEnv+"="+strconv.Itoa(each), goFileEnv+"="+goFile)
		children = append(children, child{cmd, out})
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var ok []digest.Digest
	conflicts := 0
	for i, c := range children {
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		var res childResult
		if err := json.Unmarshal([]byte(c.out.String()), &res); err != nil {
			t.Fatalf("child %d output %q: %v", i, c.out, err)
		}
		if len(res.OK)+res.Conflict != each {
			t.Errorf("child %d: %d moves + %d conflicts, want %d attempts", i, len(res.OK), res.Conflict, each)
		}
		ok = append(ok, res.OK...)
		conflicts += res.Conflict
	}
	h, err := l.History(t.Context(), "nightly")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d processes × %d attempts: %d moves, %d conflicts", procs, each, len(ok), conflicts)
	assertWhole(t, h, "nightly")
	if len(h.Entries) != len(ok) || len(ok)+conflicts != procs*each {
		t.Fatalf("history has %d entries; children report %d moves and %d conflicts of %d attempts",
			len(h.Entries), len(ok), conflicts, procs*each)
	}
	var tos []digest.Digest
	for _, e := range h.Entries {
		tos = append(tos, e.To)
	}
	slices.Sort(tos)
	slices.Sort(ok)
	if !slices.Equal(tos, ok) {
		t.Errorf("the history's images are not the children's successful moves")
	}
}

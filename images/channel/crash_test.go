package channel

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCrash kills a child process that promotes in a loop (into nightly, then nightly into
// staging) with SIGKILL at random points. After every kill both histories are whole and
// contiguous, staging only ever had images nightly had, and the store verifies clean.
func TestCrash(t *testing.T) {
	ctx := t.Context()
	st, l, _ := newEnv(t, "1.0.0", "1.0.1", "1.0.2")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const rounds = 20
	deadline := time.Now().Add(15 * time.Second)
	done := 0
	for round := range rounds {
		if time.Now().After(deadline) {
			break
		}
		h, err := l.History(ctx, "nightly")
		if err != nil {
			t.Fatal(err)
		}
		before := len(h.Entries)
		cmd, _ := startChild(t, "promoteloop", st.Dir(), versionsEnv+"=1.0.0,1.0.1,1.0.2")
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()

		// Wait until the child is in its loop (it moved nightly), then let it run a random while.
		for {
			select {
			case err := <-exited:
				t.Fatalf("round %d: the child exited: %v", round, err)
			case <-time.After(time.Millisecond):
			}
			h, err := l.History(ctx, "nightly")
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if len(h.Entries) > before {
				break
			}
			if time.Now().After(deadline.Add(4 * time.Second)) {
				t.Fatalf("round %d: the child made no move", round)
			}
		}
		time.Sleep(time.Duration(rng.IntN(25_000)) * time.Microsecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("round %d: the child ended with %v, not by the kill", round, err)
		}
		checkAfterCrash(ctx, t, l, round)
		problems, err := st.Verify(ctx)
		if err != nil || len(problems) != 0 {
			t.Fatalf("round %d: store.Verify = %v, %v", round, problems, err)
		}
		done++
	}
	if done < 10 {
		t.Fatalf("only %d rounds in the time allowed", done)
	}
	nightly, _ := l.History(ctx, "nightly")
	staging, _ := l.History(ctx, "staging")
	temps, _ := filepath.Glob(filepath.Join(l.Dir(), ".tmp-*"))
	t.Logf("%d kills: nightly %d entries, staging %d entries, %d temp files left by killed writers",
		done, len(nightly.Entries), len(staging.Entries), len(temps))

	// Killed holders left no lock behind, and the channel still moves.
	ctx5, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	next := "1.0.0"
	if nightly.Entries[len(nightly.Entries)-1].ToVersion == "1.0.0" {
		next = "1.0.1"
	}
	if _, err := l.Promote(ctx5, st, promote(next, "nightly")); err != nil {
		t.Fatal(err)
	}
	// Their temp files go once stale.
	old := time.Now().Add(-2 * time.Hour)
	for _, p := range temps {
		_ = os.Chtimes(p, old, old)
	}
	if _, err := Open(st.Dir(), nil); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(l.Dir(), ".tmp-*")); len(left) != 0 {
		t.Errorf("stale temps survived Open: %v", left)
	}
}

func checkAfterCrash(ctx context.Context, t *testing.T, l *Log, round int) {
	t.Helper()
	nightly, err := l.History(ctx, "nightly")
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	staging, err := l.History(ctx, "staging")
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	assertWhole(t, nightly, "nightly")
	assertWhole(t, staging, "staging")
	for _, e := range staging.Entries {
		if !nightly.contains(e.To) {
			t.Fatalf("round %d: staging moved to %s, which nightly never had", round, e.To)
		}
	}
}

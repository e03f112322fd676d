package channel

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/store"

	digest "github.com/opencontainers/go-digest"
)

// fakeMirror records Prepare calls and commits; refuse fails Prepare, commitErr fails commit.
type fakeMirror struct {
	refuse    error
	commitErr error
	prepared  []mirrorCall
	committed []mirrorCall
}

type mirrorCall struct {
	ch       string
	from, to digest.Digest
}

func (f *fakeMirror) Prepare(_ context.Context, ch string, from digest.Digest, to store.Image) (func(context.Context) error, error) {
	c := mirrorCall{ch, from, to.Digest()}
	f.prepared = append(f.prepared, c)
	if f.refuse != nil {
		return nil, f.refuse
	}
	return func(context.Context) error {
		f.committed = append(f.committed, c)
		return f.commitErr
	}, nil
}

func mirrorEnv(t *testing.T) (*Mover, *Log, map[string]store.Image, *fakeMirror) {
	t.Helper()
	st, l, imgs := newEnv(t, "1.0.1", "1.0.2")
	m := l.Mover(st)
	f := &fakeMirror{}
	m.Mirror = f
	return m, l, imgs, f
}

func entries(t *testing.T, l *Log, ch string) int {
	t.Helper()
	h, err := l.History(t.Context(), ch)
	if err != nil {
		t.Fatal(err)
	}
	return len(h.Entries)
}

func TestMirrorPromoteMovesThenCommits(t *testing.T) {
	m, l, imgs, f := mirrorEnv(t)
	ctx := t.Context()
	if _, err := m.Promote(ctx, Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Promote(ctx, Promotion{Image: "1.0.2", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	want := []mirrorCall{{"nightly", "", imgs["1.0.1"].Digest()}, {"nightly", imgs["1.0.1"].Digest(), imgs["1.0.2"].Digest()}}
	if !slices.Equal(f.prepared, want) || !slices.Equal(f.committed, want) {
		t.Fatalf("prepared %v, committed %v; want both %v", f.prepared, f.committed, want)
	}
	if n := entries(t, l, "nightly"); n != 2 {
		t.Fatalf("%d entries, want 2", n)
	}
}

func TestMirrorRefusedPrepareDoesNotMove(t *testing.T) {
	m, l, _, f := mirrorEnv(t)
	ctx := t.Context()
	if _, err := m.Promote(ctx, Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	refusal := errors.New("AMI pending in eu-west-1")
	f.refuse = refusal
	_, err := m.Promote(ctx, Promotion{Image: "1.0.2", To: "nightly"})
	if !errors.Is(err, refusal) {
		t.Fatalf("promote: %v, want the mirror's refusal", err)
	}
	if n := entries(t, l, "nightly"); n != 1 {
		t.Fatalf("the channel moved although the mirror refused: %d entries", n)
	}
	if len(f.committed) != 1 {
		t.Fatalf("committed %v after a refusal", f.committed)
	}
	// Rollback too.
	if _, err := m.Rollback(ctx, Rollback{Channel: "nightly", To: "1.0.2", Force: true}); !errors.Is(err, refusal) {
		t.Fatalf("rollback: %v, want the mirror's refusal", err)
	}
	if n := entries(t, l, "nightly"); n != 1 {
		t.Fatalf("the channel moved although the mirror refused: %d entries", n)
	}
}

func TestMirrorNotAskedWhenRulesRefuse(t *testing.T) {
	m, _, _, f := mirrorEnv(t)
	if _, err := m.Promote(t.Context(), Promotion{Image: "1.0.1", To: "prod"}); !errors.Is(err, ErrSkippedStage) {
		t.Fatalf("promote: %v, want ErrSkippedStage", err)
	}
	if len(f.prepared) != 0 {
		t.Fatalf("prepared %v for a promotion the rules refuse", f.prepared)
	}
}

func TestMirrorCommitErrorSaysMovedAndHowToRepair(t *testing.T) {
	m, l, imgs, f := mirrorEnv(t)
	ctx := t.Context()
	f.commitErr = errors.New("eu-west-1: AccessDenied")
	e, err := m.Promote(ctx, Promotion{Image: "1.0.1", To: "nightly"})
	if err == nil || !errors.Is(err, f.commitErr) {
		t.Fatalf("promote: %v, want the commit error", err)
	}
	d := imgs["1.0.1"].Digest()
	for _, w := range []string{"nightly", "moved", d.String(), "imgctl promote " + d.String() + " --to nightly"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	if e.To != d || entries(t, l, "nightly") != 1 {
		t.Fatalf("entry %+v: the local move must stand", e)
	}

	// The repair: the same promote, now at the head, prepares and commits again, from the
	// head's predecessor (none) to the head.
	f.commitErr = nil
	if _, err := m.Promote(ctx, Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	want := mirrorCall{"nightly", "", d}
	if len(f.committed) != 2 || f.committed[1] != want {
		t.Fatalf("committed %v; want the rerun at the head to commit %v", f.committed, want)
	}
	if n := entries(t, l, "nightly"); n != 1 {
		t.Fatalf("%d entries after the rerun, want 1", n)
	}

	// A rollback's repair names its target explicitly (a bare rollback would go further back).
	if _, err := m.Promote(ctx, Promotion{Image: "1.0.2", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	f.commitErr = errors.New("eu-west-1: throttled")
	_, err = m.Rollback(ctx, Rollback{Channel: "nightly"})
	if !errors.Is(err, f.commitErr) || !strings.Contains(err.Error(), "imgctl rollback nightly --to "+d.String()) {
		t.Fatalf("rollback: %v; want the commit error and the repair command", err)
	}
	f.commitErr = nil
	if _, err := m.Rollback(ctx, Rollback{Channel: "nightly", To: d.String()}); err != nil {
		t.Fatal(err)
	}
	want = mirrorCall{"nightly", imgs["1.0.2"].Digest(), d}
	if last := f.committed[len(f.committed)-1]; last != want {
		t.Fatalf("rollback rerun committed %v, want %v", last, want)
	}
}

func TestMirrorAtHeadStillSyncs(t *testing.T) {
	m, l, imgs, f := mirrorEnv(t)
	ctx := t.Context()
	for _, v := range []string{"1.0.1", "1.0.2", "1.0.2"} {
		if _, err := m.Promote(ctx, Promotion{Image: v, To: "nightly"}); err != nil {
			t.Fatal(err)
		}
	}
	want := mirrorCall{"nightly", imgs["1.0.1"].Digest(), imgs["1.0.2"].Digest()}
	if len(f.committed) != 3 || f.committed[2] != want || f.prepared[2] != want {
		t.Fatalf("prepared %v, committed %v; want the third (at the head) %v", f.prepared, f.committed, want)
	}
	// A refusal at the head is reported too.
	f.refuse = errors.New("not shared in eu-west-1")
	if _, err := m.Promote(ctx, Promotion{Image: "1.0.2", To: "nightly"}); !errors.Is(err, f.refuse) {
		t.Fatalf("promote at head: %v, want the refusal", err)
	}
	f.refuse = nil
	if _, err := m.Rollback(ctx, Rollback{Channel: "nightly", To: "1.0.2"}); err != nil {
		t.Fatal(err)
	}
	if len(f.committed) != 4 || f.committed[3] != want {
		t.Fatalf("committed %v; want a rollback to the head to commit %v", f.committed, want)
	}
	if n := entries(t, l, "nightly"); n != 2 {
		t.Fatalf("%d entries, want 2", n)
	}
}

package channel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"

	digest "github.com/opencontainers/go-digest"
)

// op is a Promotion or a Rollback. Image references may be "@VERSION" (the image's full
// digest) or "%VERSION" (an 8-digit prefix of it).
type op any

func run(ctx context.Context, t *testing.T, l *Log, st *store.Store, imgs map[string]store.Image, o op) (Entry, error) {
	t.Helper()
	ref := func(s string) string {
		switch {
		case strings.HasPrefix(s, "@"):
			return imgs[s[1:]].Digest().String()
		case strings.HasPrefix(s, "%"):
			return imgs[s[1:]].Digest().Encoded()[:8]
		}
		return s
	}
	switch o := o.(type) {
	case Promotion:
		o.Image = ref(o.Image)
		return l.Promote(ctx, st, o)
	case Rollback:
		o.To = ref(o.To)
		return l.Rollback(ctx, st, o)
	}
	t.Fatalf("bad op %T", o)
	return Entry{}, nil
}

func promote(image, to string) Promotion { return Promotion{Image: image, To: to} }

func TestRules(t *testing.T) {
	abc := []op{promote("1.0.1", "nightly"), promote("1.0.2", "nightly"), promote("1.0.3", "nightly")}
	cases := []struct {
		name  string
		setup []op
		op    op
		// want: error (errors.Is) and words of its message; or, on success, the entry.
		wantErr    error
		wantMsg    []string
		ch         string // channel of the op (for the history checks)
		action     string
		from, to   string // versions; "" = none
		forced     bool
		wantSeq    int
		wantLength int // history length after the op
	}{
		{name: "first promotion into nightly", op: promote("1.0.1", "nightly"),
			ch: "nightly", action: ActionPromote, to: "1.0.1", wantSeq: 1, wantLength: 1},
		{name: "by full digest", op: promote("@1.0.2", "nightly"),
			ch: "nightly", action: ActionPromote, to: "1.0.2", wantSeq: 1, wantLength: 1},
		{name: "by digest prefix", setup: []op{promote("1.0.1", "nightly")}, op: promote("%1.0.2", "nightly"),
			ch: "nightly", action: ActionPromote, from: "1.0.1", to: "1.0.2", wantSeq: 2, wantLength: 2},
		{name: "nightly's head into staging by channel name",
			setup: []op{promote("1.0.1", "nightly"), promote("1.0.2", "nightly")}, op: promote("nightly", "staging"),
			ch: "staging", action: ActionPromote, to: "1.0.2", wantSeq: 1, wantLength: 1},
		{name: "staging's head into prod",
			setup: []op{promote("1.0.1", "nightly"), promote("nightly", "staging"), promote("1.0.2", "nightly")},
			op:    promote("staging", "prod"),
			ch:    "prod", action: ActionPromote, to: "1.0.1", wantSeq: 1, wantLength: 1},
		{name: "an image nightly had before may go to staging",
			setup: []op{promote("1.0.1", "nightly"), promote("1.0.2", "nightly")}, op: promote("1.0.1", "staging"),
			ch: "staging", action: ActionPromote, to: "1.0.1", wantSeq: 1, wantLength: 1},
		{name: "skipping a stage", setup: []op{promote("1.0.1", "nightly")}, op: promote("1.0.1", "prod"),
			ch: "prod", wantErr: ErrSkippedStage, wantMsg: []string{"staging", "prod", "1.0.1"}},
		{name: "skipping a stage with force", setup: []op{promote("1.0.1", "nightly")},
			op: Promotion{Image: "1.0.1", To: "prod", Force: true, Reason: "hotfix"},
			ch: "prod", action: ActionPromote, to: "1.0.1", forced: true, wantSeq: 1, wantLength: 1},
		{name: "staging needs the image in nightly", setup: []op{promote("1.0.1", "nightly")}, op: promote("1.0.2", "staging"),
			ch: "staging", wantErr: ErrSkippedStage, wantMsg: []string{"nightly", "staging"}},
		{name: "force is not recorded when no stage is skipped", setup: []op{promote("1.0.1", "nightly")},
			op: Promotion{Image: "nightly", To: "staging", Force: true},
			ch: "staging", action: ActionPromote, to: "1.0.1", wantSeq: 1, wantLength: 1},
		{name: "unknown channel", op: promote("1.0.1", "qa"),
			ch: "nightly", wantErr: ErrUnknownChannel, wantMsg: []string{`"qa"`}},
		{name: "unknown image", op: promote("9.9.9", "nightly"),
			ch: "nightly", wantErr: store.ErrNotFound, wantMsg: []string{"9.9.9", "nightly"}},
		{name: "empty channel as image", op: promote("staging", "prod"),
			ch: "prod", wantErr: ErrEmpty, wantMsg: []string{"staging"}},
		{name: "no-op promote", setup: []op{promote("1.0.1", "nightly"), promote("1.0.2", "nightly")}, op: promote("1.0.2", "nightly"),
			ch: "nightly", action: ActionPromote, from: "1.0.1", to: "1.0.2", wantSeq: 2, wantLength: 2},
		{name: "no-op promote by channel name", setup: []op{promote("1.0.1", "nightly"), promote("nightly", "staging")},
			op: promote("nightly", "staging"),
			ch: "staging", action: ActionPromote, to: "1.0.1", wantSeq: 1, wantLength: 1},

		{name: "rollback C to B", setup: abc, op: Rollback{Channel: "nightly"},
			ch: "nightly", action: ActionRollback, from: "1.0.3", to: "1.0.2", wantSeq: 4, wantLength: 4},
		{name: "rollback B to A", setup: append(abc[:3:3], Rollback{Channel: "nightly"}), op: Rollback{Channel: "nightly"},
			ch: "nightly", action: ActionRollback, from: "1.0.2", to: "1.0.1", wantSeq: 5, wantLength: 5},
		{name: "rollback past the first image", setup: append(abc[:3:3], Rollback{Channel: "nightly"}, Rollback{Channel: "nightly"}),
			op: Rollback{Channel: "nightly"}, ch: "nightly", wantErr: ErrNoPrevious, wantMsg: []string{"first image"}},
		{name: "rollback after a new promotion goes to its From",
			setup: append(abc[:3:3], Rollback{Channel: "nightly"}, Rollback{Channel: "nightly"}, promote("1.0.3", "nightly")),
			op:    Rollback{Channel: "nightly"},
			ch:    "nightly", action: ActionRollback, from: "1.0.3", to: "1.0.1", wantSeq: 7, wantLength: 7},
		{name: "rollback of an empty channel", op: Rollback{Channel: "nightly"},
			ch: "nightly", wantErr: ErrEmpty},
		{name: "rollback of a single promotion", setup: abc[:1], op: Rollback{Channel: "nightly"},
			ch: "nightly", wantErr: ErrNoPrevious},
		{name: "rollback of an unknown channel", op: Rollback{Channel: "qa"},
			ch: "nightly", wantErr: ErrUnknownChannel},
		{name: "rollback --to an earlier image", setup: abc, op: Rollback{Channel: "nightly", To: "1.0.1"},
			ch: "nightly", action: ActionRollback, from: "1.0.3", to: "1.0.1", wantSeq: 4, wantLength: 4},
		{name: "rollback --to by digest", setup: abc, op: Rollback{Channel: "nightly", To: "@1.0.2"},
			ch: "nightly", action: ActionRollback, from: "1.0.3", to: "1.0.2", wantSeq: 4, wantLength: 4},
		{name: "rollback --to an image never in the channel", setup: abc[:2], op: Rollback{Channel: "nightly", To: "1.0.3"},
			ch: "nightly", wantErr: ErrNotInHistory, wantMsg: []string{"1.0.3", "nightly"}},
		{name: "rollback --to an image never in the channel, forced", setup: abc[:2],
			op: Rollback{Channel: "nightly", To: "1.0.3", Force: true},
			ch: "nightly", action: ActionRollback, from: "1.0.2", to: "1.0.3", forced: true, wantSeq: 3, wantLength: 3},
		{name: "rollback --to the current image is a no-op", setup: abc[:2], op: Rollback{Channel: "nightly", To: "1.0.2"},
			ch: "nightly", action: ActionPromote, from: "1.0.1", to: "1.0.2", wantSeq: 2, wantLength: 2},
		{name: "rollback --to an unknown image", setup: abc[:2], op: Rollback{Channel: "nightly", To: "9.9.9"},
			ch: "nightly", wantErr: store.ErrNotFound},
		{name: "plain rollback after a forced one that was never promoted",
			setup: append(abc[:2:2], Rollback{Channel: "nightly", To: "1.0.3", Force: true}),
			op:    Rollback{Channel: "nightly"}, ch: "nightly", wantErr: ErrNoPrevious, wantMsg: []string{"never promoted"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			st, l, imgs := newEnv(t, "1.0.1", "1.0.2", "1.0.3")
			for _, s := range tc.setup {
				if _, err := run(ctx, t, l, st, imgs, s); err != nil {
					t.Fatalf("setup %+v: %v", s, err)
				}
			}
			before := fileBytes(t, historyFile(l, tc.ch))
			e, err := run(ctx, t, l, st, imgs, tc.op)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				for _, w := range tc.wantMsg {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				if after := fileBytes(t, historyFile(l, tc.ch)); !bytes.Equal(before, after) {
					t.Errorf("a refused %T changed the history", tc.op)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			digestOf := func(v string) digest.Digest {
				if v == "" {
					return ""
				}
				return imgs[v].Digest()
			}
			if e.Seq != tc.wantSeq || e.Channel != tc.ch || e.Action != tc.action || e.From != digestOf(tc.from) ||
				e.To != digestOf(tc.to) || e.ToVersion != tc.to || e.FromVersion != tc.from || e.Forced != tc.forced {
				t.Errorf("entry %+v\nwant seq %d %s %s from %s to %s forced %v", e, tc.wantSeq, tc.ch, tc.action, tc.from, tc.to, tc.forced)
			}
			if !strings.Contains(e.Who, "@") || e.Tool != DefaultTool || e.When.IsZero() || e.When.Location().String() != "UTC" {
				t.Errorf("entry defaults: who %q tool %q when %v", e.Who, e.Tool, e.When)
			}
			h, err := l.History(ctx, tc.ch)
			if err != nil {
				t.Fatal(err)
			}
			assertWhole(t, h, tc.ch)
			if len(h.Entries) != tc.wantLength {
				t.Fatalf("history has %d entries, want %d", len(h.Entries), tc.wantLength)
			}
			if last := h.Entries[len(h.Entries)-1]; last != e {
				t.Errorf("returned %+v, history ends with %+v", e, last)
			}
			if p, ok := tc.op.(Promotion); ok && p.Reason != "" && e.Reason != p.Reason {
				t.Errorf("reason %q", e.Reason)
			}
		})
	}
}

func TestWhoAndTool(t *testing.T) {
	st, l, _ := newEnv(t, "1.0.1", "1.0.2")
	e, err := l.Promote(t.Context(), st, Promotion{Image: "1.0.1", To: "nightly", Who: "ci@builder", Tool: "imgctl 1.2.3", Reason: "nightly build"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Who != "ci@builder" || e.Tool != "imgctl 1.2.3" || e.Reason != "nightly build" {
		t.Errorf("entry %+v", e)
	}
	t.Setenv("USER", "alice")
	host, _ := os.Hostname()
	e, err = l.Rollback(t.Context(), st, Rollback{Channel: "nightly", To: "1.0.2", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if e.Who != "alice@"+host || e.Tool != "imgctl dev" {
		t.Errorf("defaults: who %q tool %q", e.Who, e.Tool)
	}
}

// ambiguousPair finds two versions whose images' digests share their first 4 hex digits, by
// rendering manifests in memory (the store is not involved).
func ambiguousPair(t *testing.T) (a, b string) {
	t.Helper()
	seen := map[string]string{}
	for i := range 100000 {
		v := fmt.Sprintf("amb-%d", i)
		var arts []manifest.Artifact
		for _, f := range storetest.DefaultFiles(v) {
			arts = append(arts, manifest.Artifact{Name: f.Name, MediaType: f.MediaType, Digest: digest.FromBytes(f.Content), Size: int64(len(f.Content))})
		}
		r, err := manifest.Render(storetest.Config(v, 1), arts)
		if err != nil {
			t.Fatal(err)
		}
		p := r.ManifestDescriptor.Digest.Encoded()[:4]
		if other, ok := seen[p]; ok {
			return other, v
		}
		seen[p] = v
	}
	t.Fatal("no two digests share a prefix")
	return "", ""
}

func TestAmbiguousPrefix(t *testing.T) {
	st, l, _ := newEnv(t)
	va, vb := ambiguousPair(t)
	a := storetest.PutImage(t, st, storetest.Config(va, 1), storetest.DefaultFiles(va))
	b := storetest.PutImage(t, st, storetest.Config(vb, 1), storetest.DefaultFiles(vb))
	prefix := a.Digest().Encoded()[:4]
	if b.Digest().Encoded()[:4] != prefix {
		t.Fatalf("the store's digests differ from the rendered ones: %s %s", a.Digest(), b.Digest())
	}
	_, err := l.Promote(t.Context(), st, promote(prefix, "nightly"))
	if !errors.Is(err, store.ErrAmbiguous) || !strings.Contains(err.Error(), a.Digest().String()) || !strings.Contains(err.Error(), b.Digest().String()) {
		t.Fatalf("err = %v, want ErrAmbiguous naming both images", err)
	}
	if data := fileBytes(t, historyFile(l, "nightly")); data != nil {
		t.Errorf("history written: %s", data)
	}
	// A longer prefix is unique.
	e, err := l.Promote(t.Context(), st, promote(a.Digest().Encoded()[:12], "nightly"))
	if err != nil || e.To != a.Digest() {
		t.Fatalf("Promote = %+v, %v", e, err)
	}
}

func TestVerifyHook(t *testing.T) {
	st, l, imgs := newEnv(t, "1.0.1", "1.0.2")
	ctx := t.Context()
	var seen []string
	refuse := errors.New("no valid signature")
	l.Verify = func(ctx context.Context, img store.Image) error {
		seen = append(seen, img.Config.Version)
		if img.Config.Version == "1.0.2" {
			return refuse
		}
		return nil
	}
	if _, err := l.Promote(ctx, st, promote("1.0.1", "nightly")); err != nil {
		t.Fatal(err)
	}
	before := fileBytes(t, historyFile(l, "nightly"))
	if _, err := l.Promote(ctx, st, promote("1.0.2", "nightly")); !errors.Is(err, refuse) || !strings.Contains(err.Error(), "signature policy") {
		t.Fatalf("promote of a refused image: %v", err)
	}
	if _, err := l.Rollback(ctx, st, Rollback{Channel: "nightly", To: "1.0.2", Force: true}); !errors.Is(err, refuse) {
		t.Fatalf("rollback to a refused image: %v", err)
	}
	if !bytes.Equal(before, fileBytes(t, historyFile(l, "nightly"))) {
		t.Error("a refused move changed the history")
	}
	if want := []string{"1.0.1", "1.0.2", "1.0.2"}; strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Errorf("hook saw %v, want %v", seen, want)
	}
	// Without a policy the move goes through.
	l.Verify = nil
	if e, err := l.Promote(ctx, st, promote("1.0.2", "nightly")); err != nil || e.To != imgs["1.0.2"].Digest() {
		t.Fatalf("Promote = %+v, %v", e, err)
	}
}

// writeBlob replaces a (read-only) blob's content.
func writeBlob(t *testing.T, st *store.Store, d digest.Digest, data []byte) string {
	t.Helper()
	p, err := st.BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCorruptBlob(t *testing.T) {
	st, l, imgs := newEnv(t, "1.0.1", "1.0.2", "1.0.3")
	ctx := t.Context()
	for _, v := range []string{"1.0.1", "1.0.2", "1.0.3"} {
		if _, err := l.Promote(ctx, st, promote(v, "nightly")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Promote(ctx, st, promote("1.0.1", "staging")); err != nil {
		t.Fatal(err)
	}
	// 1.0.2's kernel: same size, other bytes. 1.0.3's initrd: gone.
	kernel := imgs["1.0.2"].Manifest.Layers[1]
	if kernel.Annotations[manifest.AnnotationTitle] != "vmlinuz" {
		t.Fatalf("layer 1 is %v", kernel.Annotations)
	}
	old := fileBytes(t, mustBlobPath(t, st, kernel.Digest))
	writeBlob(t, st, kernel.Digest, bytes.ToUpper(old))
	initrd := imgs["1.0.3"].Manifest.Layers[2]
	if err := os.Remove(mustBlobPath(t, st, initrd.Digest)); err != nil {
		t.Fatal(err)
	}
	beforeNightly, beforeStaging := fileBytes(t, historyFile(l, "nightly")), fileBytes(t, historyFile(l, "staging"))

	for _, tc := range []struct {
		name    string
		op      op
		blob    digest.Digest
		wantErr error
		words   []string
	}{
		{"promote a corrupt artifact", promote("1.0.2", "staging"), kernel.Digest, store.ErrDigestMismatch, []string{"vmlinuz", "corrupt"}},
		{"promote by channel name", promote("nightly", "staging"), initrd.Digest, store.ErrNotFound, []string{"initrd", "missing"}},
		{"forced promote", Promotion{Image: "1.0.2", To: "prod", Force: true}, kernel.Digest, store.ErrDigestMismatch, nil},
		{"rollback to a corrupt image", Rollback{Channel: "nightly"}, kernel.Digest, store.ErrDigestMismatch, nil},
		{"rollback --to a missing blob", Rollback{Channel: "staging", To: "1.0.3", Force: true}, initrd.Digest, store.ErrNotFound, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(ctx, t, l, st, imgs, tc.op)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			for _, w := range append(tc.words, tc.blob.String(), "imgctl store verify") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if !bytes.Equal(beforeNightly, fileBytes(t, historyFile(l, "nightly"))) || !bytes.Equal(beforeStaging, fileBytes(t, historyFile(l, "staging"))) {
		t.Error("a refused move changed a history")
	}
	if data := fileBytes(t, historyFile(l, "prod")); data != nil {
		t.Errorf("prod history written: %s", data)
	}
	// The sound image still moves.
	if _, err := l.Rollback(ctx, st, Rollback{Channel: "nightly", To: "1.0.1"}); err != nil {
		t.Fatal(err)
	}
	// A corrupt manifest: Resolve or the blob check refuses it (both name the blob).
	man := imgs["1.0.1"].Descriptor.Digest
	writeBlob(t, st, man, append(fileBytes(t, mustBlobPath(t, st, man)), ' '))
	_, err := l.Promote(ctx, st, promote("1.0.1", "staging"))
	if err == nil || !strings.Contains(err.Error(), man.String()) {
		t.Fatalf("promote with a corrupt manifest: %v", err)
	}
}

func mustBlobPath(t *testing.T, st *store.Store, d digest.Digest) string {
	t.Helper()
	p, err := st.BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckBlobsSize(t *testing.T) {
	// A blob that hashes right but is shorter than its descriptor says (a descriptor lying
	// about the size) is refused too.
	st, _, imgs := newEnv(t, "1.0.1")
	img := imgs["1.0.1"]
	img.Manifest.Layers = slices.Clone(img.Manifest.Layers)
	img.Manifest.Layers[0].Size++
	err := checkBlobs(t.Context(), st, img)
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), img.Manifest.Layers[0].Digest.String()) {
		t.Fatalf("checkBlobs = %v", err)
	}
	if err := checkBlobs(t.Context(), st, imgs["1.0.1"]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := checkBlobs(ctx, st, imgs["1.0.1"]); !errors.Is(err, context.Canceled) {
		t.Fatalf("checkBlobs with a canceled context = %v", err)
	}
}

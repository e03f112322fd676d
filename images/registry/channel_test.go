package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// channelRepo is a registry repository holding three pushed images.
type channelRepo struct {
	reg     *testRegistry
	repo    string
	a, b, c store.Image
}

func newChannelRepo(t *testing.T, opts ...ggcrregistry.Option) channelRepo {
	t.Helper()
	reg := newRegistry(t, opts...)
	st := storetest.Open(t)
	cr := channelRepo{reg: reg, repo: reg.host + "/imgctl/node"}
	for i, p := range []*store.Image{&cr.a, &cr.b, &cr.c} {
		*p = storetest.PutVersion(t, st, []string{"1.0.0", "1.1.0", "1.2.0"}[i], int64(100+i))
		if _, err := Push(t.Context(), st, *p, cr.repo, testOptions(t)); err != nil {
			t.Fatal(err)
		}
	}
	reg.take()
	return cr
}

var when = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// move returns h with one more entry, from its head to img.
func move(h channel.History, action string, img store.Image, who string) channel.History {
	out := channel.History{SchemaVersion: 1, Channel: h.Channel, Entries: append([]channel.Entry(nil), h.Entries...)}
	out.Entries = append(out.Entries, channel.Entry{
		Seq: len(h.Entries) + 1, Channel: h.Channel, Action: action,
		From: h.Head(), To: img.Digest(), ToVersion: img.Config.Version,
		Who: who, When: when.Add(time.Duration(len(h.Entries)) * time.Minute), Tool: "imgctl test",
	})
	return out
}

// tagDigest is what tag of cr's repository names now ("" if nothing).
func (cr channelRepo) tagDigest(t *testing.T, tag string) digest.Digest {
	t.Helper()
	ref, err := name.ParseReference(cr.repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.Head(ref)
	if isNotFound(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.Digest.String())
}

func TestChannelRoundTrip(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, o := t.Context(), testOptions(t)
	if _, err := PullChannel(ctx, cr.repo, "nightly", o); !errors.Is(err, channel.ErrEmpty) {
		t.Fatalf("PullChannel of a new channel: %v, want ErrEmpty", err)
	}

	h := channel.History{SchemaVersion: 1, Channel: "nightly"}
	for i, img := range []store.Image{cr.a, cr.b, cr.c} {
		h = move(h, channel.ActionPromote, img, "alice@host")
		if err := PushChannel(ctx, cr.repo, h, o); err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
		got, err := PullChannel(ctx, cr.repo, "nightly", o)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, h) {
			t.Errorf("push %d: pulled %+v, want %+v", i, got, h)
		}
		if d := cr.tagDigest(t, "nightly"); d != img.Digest() {
			t.Errorf("push %d: tag nightly = %s, want %s", i, d, img.Digest())
		}
	}
	// A rollback is a move like any other.
	h = move(h, channel.ActionRollback, cr.b, "bob@host")
	if err := PushChannel(ctx, cr.repo, h, o); err != nil {
		t.Fatal(err)
	}
	if d := cr.tagDigest(t, "nightly"); d != cr.b.Digest() {
		t.Errorf("after rollback tag nightly = %s, want %s", d, cr.b.Digest())
	}

	// The history artifact: our artifactType, one history blob, subject = the head image.
	ref, _ := name.ParseReference(cr.repo + ":nightly.history")
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != channel.HistoryArtifactType || len(m.Layers) != 1 || m.Layers[0].MediaType != channel.HistoryMediaType ||
		m.Subject == nil || m.Subject.Digest != cr.b.Digest() || m.Config.MediaType != ocispec.MediaTypeEmptyJSON ||
		m.Annotations[AnnotationChannel] != "nightly" {
		t.Errorf("history manifest = %s", desc.Manifest)
	}

	// Pushing the same history again writes nothing.
	cr.reg.take()
	if err := PushChannel(ctx, cr.repo, h, o); err != nil {
		t.Fatal(err)
	}
	if w := writes(cr.reg.take()); len(w) != 0 {
		t.Errorf("re-pushing the same history wrote %q", w)
	}
}

func TestChannelConflict(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, o := t.Context(), testOptions(t)
	base := move(channel.History{SchemaVersion: 1, Channel: "prod"}, channel.ActionPromote, cr.a, "ci@host")
	if err := PushChannel(ctx, cr.repo, base, o); err != nil {
		t.Fatal(err)
	}
	// Two writers read the same history; the first to push wins.
	seenX, err := PullChannel(ctx, cr.repo, "prod", o)
	if err != nil {
		t.Fatal(err)
	}
	seenY, err := PullChannel(ctx, cr.repo, "prod", o)
	if err != nil {
		t.Fatal(err)
	}
	hx := move(seenX, channel.ActionPromote, cr.b, "x@host")
	hy := move(seenY, channel.ActionPromote, cr.c, "y@host")
	if err := PushChannel(ctx, cr.repo, hx, o); err != nil {
		t.Fatal(err)
	}
	cr.reg.take()
	err = PushChannel(ctx, cr.repo, hy, o)
	if !errors.Is(err, channel.ErrConflict) {
		t.Fatalf("second writer: %v, want ErrConflict", err)
	}
	t.Logf("error: %v", err)
	if w := writes(cr.reg.take()); len(w) != 0 {
		t.Errorf("conflicting push wrote %q", w)
	}
	if got, err := PullChannel(ctx, cr.repo, "prod", o); err != nil || !reflect.DeepEqual(got, hx) {
		t.Errorf("after the conflict: %+v, %v; want the first writer's history", got, err)
	}
	if d := cr.tagDigest(t, "prod"); d != cr.b.Digest() {
		t.Errorf("tag prod = %s, want %s", d, cr.b.Digest())
	}

	// A history that rewrites an entry the registry has also conflicts, even with the right head.
	forged := move(base, channel.ActionPromote, cr.b, "x@host")
	forged.Entries[0].Reason = "rewritten"
	forged = move(forged, channel.ActionPromote, cr.c, "z@host")
	if err := PushChannel(ctx, cr.repo, forged, o); !errors.Is(err, channel.ErrConflict) {
		t.Errorf("rewritten history: %v, want ErrConflict", err)
	}
	// So does an older history (a writer behind the registry).
	if err := PushChannel(ctx, cr.repo, base, o); !errors.Is(err, channel.ErrConflict) {
		t.Errorf("stale history: %v, want ErrConflict", err)
	}
	// The loser retries from what it reads now, and succeeds.
	seenY, err = PullChannel(ctx, cr.repo, "prod", o)
	if err != nil {
		t.Fatal(err)
	}
	if err := PushChannel(ctx, cr.repo, move(seenY, channel.ActionPromote, cr.c, "y@host"), o); err != nil {
		t.Fatal(err)
	}
	if d := cr.tagDigest(t, "prod"); d != cr.c.Digest() {
		t.Errorf("tag prod = %s, want %s", d, cr.c.Digest())
	}
}

// TestChannelRaceDetected: another writer's history lands between our write and our
// read-back; we report the conflict and leave the channel tag alone.
func TestChannelRaceDetected(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, o := t.Context(), testOptions(t)
	h1 := move(channel.History{SchemaVersion: 1, Channel: "staging"}, channel.ActionPromote, cr.a, "ci@host")
	if err := PushChannel(ctx, cr.repo, h1, o); err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(cr.repo + ":staging.history")
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	theirs := desc.Manifest // replayed as the other writer's history

	var once sync.Once
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodPut || !strings.HasSuffix(r.URL.Path, "/manifests/staging.history") {
			return false
		}
		next.ServeHTTP(w, r) // ours lands…
		once.Do(func() {     // …and is overwritten at once by the other writer
			req, _ := http.NewRequest(http.MethodPut, r.URL.String(), bytes.NewReader(theirs))
			req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
			next.ServeHTTP(discardWriter{}, req)
		})
		return true
	})
	h2 := move(h1, channel.ActionPromote, cr.b, "x@host")
	err = PushChannel(ctx, cr.repo, h2, o)
	if !errors.Is(err, channel.ErrConflict) {
		t.Fatalf("push overwritten meanwhile: %v, want ErrConflict", err)
	}
	t.Logf("error: %v", err)
	if d := cr.tagDigest(t, "staging"); d != cr.a.Digest() {
		t.Errorf("tag staging moved to %s after a detected conflict", d)
	}
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// TestChannelInterruptedPush: the history was written but the tag not moved. PullChannel
// returns the history and warns; pushing the same history again finishes the move.
func TestChannelInterruptedPush(t *testing.T) {
	cr := newChannelRepo(t)
	ctx := t.Context()
	var logs bytes.Buffer
	o := Options{Logger: slog.New(slog.NewTextHandler(io.MultiWriter(&logs, testWriter{t}), nil))}
	h1 := move(channel.History{SchemaVersion: 1, Channel: "nightly"}, channel.ActionPromote, cr.a, "ci@host")
	if err := PushChannel(ctx, cr.repo, h1, o); err != nil {
		t.Fatal(err)
	}
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/manifests/nightly") {
			http.Error(w, `{"errors":[{"code":"DENIED","message":"simulated crash"}]}`, http.StatusForbidden)
			return true
		}
		return false
	})
	h2 := move(h1, channel.ActionPromote, cr.b, "ci@host")
	if err := PushChannel(ctx, cr.repo, h2, o); err == nil || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("push with the tag move failing: %v", err)
	}
	got, err := PullChannel(ctx, cr.repo, "nightly", o)
	if err != nil || !reflect.DeepEqual(got, h2) {
		t.Fatalf("PullChannel after an interrupted push = %+v, %v; want the new history", got, err)
	}
	if !strings.Contains(logs.String(), "channel tag does not point at the history's head") {
		t.Errorf("no warning about the lagging tag in:\n%s", logs.String())
	}
	cr.reg.setHook(nil)
	cr.reg.take()
	if err := PushChannel(ctx, cr.repo, h2, o); err != nil {
		t.Fatal(err)
	}
	reqs := writes(cr.reg.take())
	if len(reqs) != 1 || !strings.HasSuffix(reqs[0], "/manifests/nightly") {
		t.Errorf("completing the push wrote %q, want only the tag", reqs)
	}
	if d := cr.tagDigest(t, "nightly"); d != cr.b.Digest() {
		t.Errorf("tag nightly = %s, want %s", d, cr.b.Digest())
	}
}

func TestPushChannelRefuses(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, o := t.Context(), testOptions(t)
	missing := cr.a
	missing.Descriptor.Digest = digest.FromString("not pushed")
	h := move(channel.History{SchemaVersion: 1, Channel: "nightly"}, channel.ActionPromote, missing, "ci@host")
	if err := PushChannel(ctx, cr.repo, h, o); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("head not in the repository: %v, want ErrNotFound", err)
	}
	if err := PushChannel(ctx, cr.repo, channel.History{SchemaVersion: 1, Channel: "nightly"}, o); err == nil {
		t.Error("empty history accepted")
	}
	bad := move(channel.History{SchemaVersion: 1, Channel: "bad/name"}, channel.ActionPromote, cr.a, "ci@host")
	if err := PushChannel(ctx, cr.repo, bad, o); err == nil || !strings.Contains(err.Error(), "tag") {
		t.Errorf("channel name that is no tag: %v", err)
	}
	// A tag named like the channel that PushChannel did not make is not clobbered.
	src, _ := name.ParseReference(cr.repo + "@" + cr.c.Digest().String())
	desc, err := remote.Get(src)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(cr.repo + ":prod")
	if err := remote.Tag(tag, desc); err != nil {
		t.Fatal(err)
	}
	h = move(channel.History{SchemaVersion: 1, Channel: "prod"}, channel.ActionPromote, cr.a, "ci@host")
	if err := PushChannel(ctx, cr.repo, h, o); !errors.Is(err, channel.ErrConflict) {
		t.Errorf("unmanaged tag prod: %v, want ErrConflict", err)
	}
	if _, err := PullChannel(ctx, cr.repo, "prod", o); !errors.Is(err, channel.ErrEmpty) {
		t.Errorf("PullChannel of a tag without history: %v, want ErrEmpty", err)
	}
	// A CH.history tag that is not a history is reported as what it is.
	htag, _ := name.NewTag(cr.repo + ":qa.history")
	if err := remote.Tag(htag, desc); err != nil {
		t.Fatal(err)
	}
	if _, err := PullChannel(ctx, cr.repo, "qa", o); !errors.Is(err, ErrNotImgctl) || !strings.Contains(err.Error(), "it is an imgctl image") {
		t.Errorf("PullChannel of an image tagged qa.history: %v", err)
	}
}

// TestChannelReferrers: on a registry with the Referrers API, the history artifacts are found
// as referrers of their head images and no fallback tag is made.
func TestChannelReferrers(t *testing.T) {
	cr := newChannelRepo(t, ggcrregistry.WithReferrersSupport(true))
	ctx, o := t.Context(), testOptions(t)
	h := channel.History{SchemaVersion: 1, Channel: "nightly"}
	histories := map[digest.Digest]digest.Digest{} // head image → the history manifest naming it
	for _, img := range []store.Image{cr.a, cr.b} {
		h = move(h, channel.ActionPromote, img, "ci@host")
		if err := PushChannel(ctx, cr.repo, h, o); err != nil {
			t.Fatal(err)
		}
		histories[img.Digest()] = cr.tagDigest(t, "nightly.history")
	}
	if got, err := PullChannel(ctx, cr.repo, "nightly", o); err != nil || !reflect.DeepEqual(got, h) {
		t.Fatalf("PullChannel = %+v, %v", got, err)
	}
	r, _ := name.NewRepository(cr.repo)
	tags, err := remote.List(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range tags {
		if strings.HasPrefix(tag, "sha256-") {
			t.Errorf("fallback tag %s made on a registry with the Referrers API", tag)
		}
	}
	for img, hist := range histories {
		// (No artifactType filter: this test registry reports a referrer's config media type as
		// its artifactType, ignoring the manifest's artifactType.)
		idx, err := remote.Referrers(r.Digest(img.String()))
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != 1 || im.Manifests[0].Digest.String() != hist.String() {
			t.Errorf("referrers of %s: %+v, want the history %s", img, im.Manifests, hist)
		}
	}
}

// A history in a registry is held to the same invariants as a local one: PullChannel refuses
// a history whose entries are not numbered 1, 2, … (a forged or torn history), naming the entry.
func TestPullChannelChecksHistory(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, o := t.Context(), testOptions(t)
	h := move(channel.History{SchemaVersion: 1, Channel: "nightly"}, channel.ActionPromote, cr.a, "alice@host")
	if err := PushChannel(ctx, cr.repo, h, o); err != nil {
		t.Fatal(err)
	}
	broken := move(h, channel.ActionPromote, cr.b, "mallory@host")
	broken.Entries[1].Seq = 3 // a gap: entry 2 is missing
	if err := PushChannel(ctx, cr.repo, broken, o); err != nil {
		t.Fatal(err)
	}
	_, err := PullChannel(ctx, cr.repo, "nightly", o)
	if err == nil || !strings.Contains(err.Error(), "entries[1]: seq 3, want 2") {
		t.Fatalf("PullChannel of a history with a gap in its entries: %v", err)
	}
}

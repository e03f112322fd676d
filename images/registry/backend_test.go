package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	digest "github.com/opencontainers/go-digest"
)

func (cr channelRepo) channels(t *testing.T) *Channels {
	return &Channels{Repo: cr.repo, Options: testOptions(t)}
}

func (cr channelRepo) images(t *testing.T) *Images {
	return &Images{Repo: cr.repo, Options: testOptions(t)}
}

func TestChannelsOrder(t *testing.T) {
	c := &Channels{Repo: "127.0.0.1:1/x"}
	if o, err := c.Order(); err != nil || !reflect.DeepEqual(o, channel.DefaultOrder) {
		t.Errorf("default Order = %v, %v", o, err)
	}
	c.OrderList = []string{"dev", "live"}
	if o, err := c.Order(); err != nil || !reflect.DeepEqual(o, []string{"dev", "live"}) {
		t.Errorf("Order = %v, %v", o, err)
	}
	for _, bad := range [][]string{{}, {"dev", "dev"}, {"Dev"}, {"order"}, {"a.b"}} {
		c.OrderList = bad
		if o, err := c.Order(); err == nil {
			t.Errorf("Order with %q = %v, want an error", bad, o)
		}
	}
}

func TestChannelsHistory(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, c := t.Context(), cr.channels(t)
	h, err := c.History(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if want := (channel.History{SchemaVersion: 1, Channel: "nightly", Entries: []channel.Entry{}}); !reflect.DeepEqual(h, want) || h.Entries == nil {
		t.Errorf("History of a never-pushed channel = %#v, want %#v", h, want)
	}
	_, err = c.History(ctx, "qa")
	if !errors.Is(err, channel.ErrUnknownChannel) || !strings.Contains(err.Error(), "nightly, staging, prod") {
		t.Errorf("History(qa) = %v, want ErrUnknownChannel listing the order", err)
	}
	c.OrderList = []string{"dev", "live"}
	if _, err := c.History(ctx, "nightly"); !errors.Is(err, channel.ErrUnknownChannel) || !strings.Contains(err.Error(), "dev, live") {
		t.Errorf("History(nightly) with order dev, live = %v", err)
	}
	if w := writes(cr.reg.take()); len(w) != 0 {
		t.Errorf("History wrote %q", w)
	}

	// A history pushed by another writer is read as it is.
	want := move(channel.History{SchemaVersion: 1, Channel: "dev"}, channel.ActionPromote, cr.a, "ci@host")
	if err := PushChannel(ctx, cr.repo, want, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.History(ctx, "dev"); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("History(dev) = %+v, %v; want %+v", got, err, want)
	}
	// One that breaks the invariants Move relies on is refused.
	broken := move(want, channel.ActionPromote, cr.b, "ci@host")
	broken.Entries[1].Seq = 5
	if err := PushChannel(ctx, cr.repo, broken, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.History(ctx, "dev"); err == nil || !strings.Contains(err.Error(), "seq 5, want 2") {
		t.Errorf("History of a history with a gap = %v", err)
	}
}

func TestChannelsMove(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, c := t.Context(), cr.channels(t)
	history := func() channel.History {
		t.Helper()
		h, err := c.History(ctx, "nightly")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	before := time.Now()
	e1, err := c.Move(ctx, "nightly", "", channel.Entry{Action: channel.ActionPromote, To: cr.a.Digest(), ToVersion: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if e1.Seq != 1 || e1.Channel != "nightly" || e1.From != "" || e1.FromVersion != "" || e1.To != cr.a.Digest() ||
		e1.Who != channel.DefaultWho() || e1.Tool != channel.DefaultTool || e1.When.Location() != time.UTC ||
		e1.When.Before(before.Truncate(time.Second)) || e1.When.After(after) {
		t.Errorf("first move = %+v, want the defaults filled in", e1)
	}
	if h := history(); !reflect.DeepEqual(h.Entries, []channel.Entry{e1}) {
		t.Errorf("history after the first move = %+v, want [%+v]", h.Entries, e1)
	}
	if d := cr.tagDigest(t, "nightly"); d != cr.a.Digest() {
		t.Errorf("tag nightly = %s, want %s", d, cr.a.Digest())
	}

	e2, err := c.Move(ctx, "nightly", cr.a.Digest(), channel.Entry{
		Action: channel.ActionPromote, To: cr.b.Digest(), ToVersion: "1.1.0", Reason: "nightly build", Who: "bob@ci", Tool: "imgctl 9",
	})
	if err != nil {
		t.Fatal(err)
	}
	if e2.Seq != 2 || e2.From != cr.a.Digest() || e2.FromVersion != "1.0.0" || e2.Who != "bob@ci" || e2.Tool != "imgctl 9" || e2.Reason != "nightly build" {
		t.Errorf("second move = %+v", e2)
	}

	// Refusals: nothing is written and the history stays as it was.
	cr.reg.take()
	stale := channel.Entry{Action: channel.ActionPromote, To: cr.c.Digest()}
	_, err = c.Move(ctx, "nightly", cr.a.Digest(), stale)
	if !errors.Is(err, channel.ErrConflict) || !strings.Contains(err.Error(), cr.a.Digest().String()) || !strings.Contains(err.Error(), cr.b.Digest().String()) {
		t.Errorf("move with a stale expect = %v, want ErrConflict naming both heads", err)
	}
	notPushed := storetest.PutVersion(t, storetest.Open(t), "7.0.0", 7)
	for what, tc := range map[string]struct {
		ch     string
		expect digest.Digest
		e      channel.Entry
		is     error
		says   string
	}{
		"same image":      {"nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionPromote, To: cr.b.Digest()}, nil, "already points to"},
		"wrong seq":       {"nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionPromote, To: cr.c.Digest(), Seq: 7}, channel.ErrConflict, "seq 7"},
		"wrong channel":   {"nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionPromote, To: cr.c.Digest(), Channel: "prod"}, nil, `channel "prod"`},
		"wrong from":      {"nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionPromote, To: cr.c.Digest(), From: cr.a.Digest()}, nil, "moves from " + cr.a.Digest().String()},
		"unknown action":  {"nightly", cr.b.Digest(), channel.Entry{Action: "jump", To: cr.c.Digest()}, nil, `"jump"`},
		"bad image":       {"nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionPromote, To: "sha256:abc"}, nil, "sha256:abc"},
		"unknown channel": {"qa", "", channel.Entry{Action: channel.ActionPromote, To: cr.c.Digest()}, channel.ErrUnknownChannel, "qa"},
		"image not there": {"nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionPromote, To: notPushed.Digest()}, store.ErrNotFound, notPushed.Digest().String()},
	} {
		_, err := c.Move(ctx, tc.ch, tc.expect, tc.e)
		if err == nil || tc.is != nil && !errors.Is(err, tc.is) || tc.is == nil && errors.Is(err, channel.ErrConflict) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: Move = %v, want an error (%v) saying %q", what, err, tc.is, tc.says)
		}
	}
	if w := writes(cr.reg.take()); len(w) != 0 {
		t.Errorf("refused moves wrote %q", w)
	}
	if h := history(); !reflect.DeepEqual(h.Entries, []channel.Entry{e1, e2}) {
		t.Errorf("history after refused moves = %+v", h.Entries)
	}

	// A rollback, with a time in another zone: stored in UTC.
	cet := time.Date(2026, 12, 1, 9, 30, 0, 0, time.FixedZone("CET", 3600))
	e3, err := c.Move(ctx, "nightly", cr.b.Digest(), channel.Entry{Action: channel.ActionRollback, To: cr.a.Digest(), ToVersion: "1.0.0", When: cet, Seq: 3, Channel: "nightly", From: cr.b.Digest()})
	if err != nil {
		t.Fatal(err)
	}
	if !e3.When.Equal(cet) || e3.When.Location() != time.UTC || e3.FromVersion != "1.1.0" || e3.Seq != 3 {
		t.Errorf("rollback entry = %+v", e3)
	}
	if h := history(); !reflect.DeepEqual(h.Entries, []channel.Entry{e1, e2, e3}) {
		t.Errorf("history = %+v, want %+v", h.Entries, []channel.Entry{e1, e2, e3})
	}
	if d := cr.tagDigest(t, "nightly"); d != cr.a.Digest() {
		t.Errorf("tag nightly after the rollback = %s, want %s", d, cr.a.Digest())
	}
}

// waitFor waits for wg for at most d, and reports whether it finished.
func waitFor(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestChannelsMoveRace makes two moves with the same expected head write their histories at
// the same time: both have read the registry before either writes, and both writes land
// before either reads back. Exactly one may win.
func TestChannelsMoveRace(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, c := t.Context(), cr.channels(t)
	var arrived, served sync.WaitGroup
	arrived.Add(2)
	served.Add(2)
	var puts atomic.Int32
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodPut || r.URL.Path != "/v2/imgctl/node/manifests/nightly.history" || puts.Add(1) > 2 {
			return false
		}
		arrived.Done()
		waitFor(&arrived, 5*time.Second)
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		served.Done()
		waitFor(&served, 5*time.Second)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return true
	})

	imgs := []store.Image{cr.a, cr.b}
	entries := make([]channel.Entry, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Go(func() {
			entries[i], errs[i] = c.Move(ctx, "nightly", "", channel.Entry{Action: channel.ActionPromote, To: img.Digest(), ToVersion: img.Config.Version})
		})
	}
	wg.Wait()
	if n := puts.Load(); n != 2 {
		t.Fatalf("%d history writes, want 2 (the race was not staged): %v", n, errs)
	}
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("both moves succeeded: %+v and %+v", entries[winner], entries[i])
		case err == nil:
			winner = i
		case !errors.Is(err, channel.ErrConflict):
			t.Errorf("losing move: %v, want ErrConflict", err)
		default:
			t.Logf("losing move: %v", err)
		}
	}
	if winner < 0 {
		t.Fatalf("no move succeeded: %v", errs)
	}
	cr.reg.setHook(nil)
	h, err := c.History(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h.Entries, []channel.Entry{entries[winner]}) {
		t.Errorf("registry history = %+v, want the winner's entry %+v", h.Entries, entries[winner])
	}
	if d := cr.tagDigest(t, "nightly"); d != imgs[winner].Digest() {
		t.Errorf("tag nightly = %s, want the winner's %s", d, imgs[winner].Digest())
	}
}

// TestChannelsMoveConcurrent lets several moves with the same expected head run freely, a few
// rounds over: each round adds exactly one entry, and the history stays contiguous.
func TestChannelsMoveConcurrent(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, c := t.Context(), cr.channels(t)
	const rounds, movers = 4, 4
	imgs := []store.Image{cr.a, cr.b, cr.c}
	var wins [][]channel.Entry
	for round := range rounds {
		h, err := c.History(ctx, "staging")
		if err != nil {
			t.Fatal(err)
		}
		head := h.Head()
		var candidates []store.Image
		for _, img := range imgs {
			if img.Digest() != head {
				candidates = append(candidates, img)
			}
		}
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			won []channel.Entry
		)
		for i := range movers {
			img := candidates[i%len(candidates)]
			wg.Go(func() {
				e, err := c.Move(ctx, "staging", head, channel.Entry{Action: channel.ActionPromote, To: img.Digest(), Who: "mover@test"})
				switch {
				case err == nil:
					mu.Lock()
					won = append(won, e)
					mu.Unlock()
				case !errors.Is(err, channel.ErrConflict):
					t.Errorf("round %d: move %d: %v, want success or ErrConflict", round, i, err)
				}
			})
		}
		wg.Wait()
		wins = append(wins, won)
		// More than one would be the race Move cannot rule out: a writer that read the registry
		// before our write and wrote after our read-back.
		t.Logf("round %d: %d of %d moves succeeded", round, len(won), movers)
	}
	h, err := c.History(ctx, "staging") // History checks seq and from/to continuity
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Entries) != rounds {
		t.Fatalf("%d entries after %d rounds, want one per round: %+v", len(h.Entries), rounds, h.Entries)
	}
	for round, e := range h.Entries {
		if !slices.ContainsFunc(wins[round], func(w channel.Entry) bool { return reflect.DeepEqual(w, e) }) {
			t.Errorf("round %d: the registry kept %+v, which no successful move returned (%+v)", round, e, wins[round])
		}
	}
}

// TestChannelsMoveLostWrite stages the interleaving PushChannel's own read-back cannot see:
// writer B read the registry before A wrote, B's history lands after A read its own back, and
// A's tag move lands after B's. A's entry is lost, so A's Move must not report success, and it
// must leave tag nightly at the head of the history the registry kept.
func TestChannelsMoveLostWrite(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, c := t.Context(), cr.channels(t)
	var (
		histPuts, tagPuts                atomic.Int32
		bArrived, aTagArrived, bTagMoved sync.WaitGroup
	)
	bArrived.Add(1)
	aTagArrived.Add(1)
	bTagMoved.Add(1)
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodPut {
			return false
		}
		switch r.URL.Path {
		case "/v2/imgctl/node/manifests/nightly.history":
			switch histPuts.Add(1) {
			case 1: // A: write once B has read too and is about to write
				waitFor(&bArrived, 5*time.Second)
			case 2: // B: write after A has read its own history back
				bArrived.Done()
				waitFor(&aTagArrived, 5*time.Second)
			}
		case "/v2/imgctl/node/manifests/nightly":
			switch tagPuts.Add(1) {
			case 1: // A: move the tag after B moved it
				aTagArrived.Done()
				waitFor(&bTagMoved, 5*time.Second)
			case 2: // B
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, r)
				bTagMoved.Done()
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				_, _ = w.Write(rec.Body.Bytes())
				return true
			}
		}
		return false
	})

	imgs := []store.Image{cr.a, cr.b}
	entries := make([]channel.Entry, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Go(func() {
			entries[i], errs[i] = c.Move(ctx, "nightly", "", channel.Entry{Action: channel.ActionPromote, To: img.Digest()})
		})
	}
	wg.Wait()
	cr.reg.setHook(nil)
	if histPuts.Load() != 2 || tagPuts.Load() < 2 {
		t.Fatalf("%d history and %d tag writes, want 2 and at least 2 (the race was not staged): %v", histPuts.Load(), tagPuts.Load(), errs)
	}
	h, err := c.History(ctx, "nightly")
	if err != nil || len(h.Entries) != 1 {
		t.Fatalf("history = %+v, %v", h, err)
	}
	for i, err := range errs {
		kept := reflect.DeepEqual(h.Entries[0], entries[i])
		switch {
		case err == nil && !kept:
			t.Errorf("move to %s succeeded, but the registry kept %+v instead", imgs[i].Digest(), h.Entries[0])
		case err != nil && !errors.Is(err, channel.ErrConflict):
			t.Errorf("move to %s: %v, want ErrConflict", imgs[i].Digest(), err)
		case err != nil && !strings.Contains(err.Error(), "another writer replaced the history"):
			t.Errorf("move to %s: %v, want the lost write reported", imgs[i].Digest(), err)
		case err != nil:
			t.Logf("lost move: %v", err)
		}
	}
	if errs[0] == nil && errs[1] == nil || errs[0] != nil && errs[1] != nil {
		t.Errorf("want exactly one successful move: %v", errs)
	}
	if d := cr.tagDigest(t, "nightly"); d != h.Head() {
		t.Errorf("tag nightly = %s, want the history's head %s", d, h.Head())
	}
}

func TestImagesResolve(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, im := t.Context(), cr.images(t)
	for _, ref := range []string{cr.a.Digest().String(), cr.a.Digest().Encoded(), "1.0.0"} {
		got, err := im.Resolve(ctx, ref)
		if err != nil {
			t.Fatalf("Resolve(%s): %v", ref, err)
		}
		if !reflect.DeepEqual(got, cr.a) {
			t.Errorf("Resolve(%s) = %+v, want the store's image %+v", ref, got, cr.a)
		}
	}
	if got, err := im.Resolve(ctx, "1.2.0"); err != nil || !reflect.DeepEqual(got, cr.c) {
		t.Errorf("Resolve(1.2.0) = %+v, %v", got, err)
	}

	// A version that is not a valid tag, by version and by its tag.
	st := storetest.Open(t)
	plus := storetest.PutVersion(t, st, testVersion, 200)
	if _, err := Push(ctx, st, plus, cr.repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{testVersion, Tag(testVersion)} {
		if got, err := im.Resolve(ctx, ref); err != nil || !reflect.DeepEqual(got, plus) {
			t.Errorf("Resolve(%s) = %+v, %v", ref, got.Digest(), err)
		}
	}

	absent := digest.FromString("absent")
	for ref, says := range map[string]string{
		"9.9.9":                                  `no manifest ` + cr.repo + `:9.9.9`,
		absent.String():                          absent.String(),
		cr.a.Digest().Encoded()[:12]:             "cannot look up a digest prefix (use the full sha256:… digest or a version)",
		"sha256:" + cr.a.Digest().Encoded()[:12]: "cannot look up a digest prefix; use the full sha256:… digest or a version",
		"":                                       "no image given",
	} {
		_, err := im.Resolve(ctx, ref)
		if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), says) || !strings.Contains(err.Error(), cr.repo) {
			t.Errorf("Resolve(%q) = %v, want store.ErrNotFound saying %q", ref, err, says)
		}
	}

	// A tag that looks like a version but names an image of another version.
	other, err := remote.Get(mustRef(t, cr.repo+":1.1.0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Tag(mustRef(t, cr.repo+":5.0.0").(name.Tag), other); err != nil {
		t.Fatal(err)
	}
	if _, err := im.Resolve(ctx, "5.0.0"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "names version 1.1.0") {
		t.Errorf("Resolve of a tag naming another version = %v", err)
	}

	// Not an imgctl image.
	rnd, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustRef(t, cr.repo+":latest"), rnd); err != nil {
		t.Fatal(err)
	}
	if _, err := im.Resolve(ctx, "latest"); !errors.Is(err, ErrNotImgctl) || !strings.Contains(err.Error(), "a container image") {
		t.Errorf("Resolve of a container image = %v, want ErrNotImgctl", err)
	}

	// An imgctl manifest not in the byte form imgctl writes (Pull could not store it).
	raw, err := json.Marshal(cr.a.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, '\n', '\n')
	if err := remote.Put(mustRef(t, cr.repo+":odd"), rawManifest{raw: raw, mediaType: types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
	odd := digest.FromBytes(raw)
	if _, err := im.Resolve(ctx, odd.String()); err == nil || !strings.Contains(err.Error(), "not in the form imgctl writes") {
		t.Errorf("Resolve of a rewritten manifest = %v", err)
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestImagesCheck(t *testing.T) {
	cr := newChannelRepo(t)
	ctx, im := t.Context(), cr.images(t)
	img, err := im.Resolve(ctx, "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Check(ctx, img); err != nil {
		t.Fatalf("Check of a whole image: %v", err)
	}
	if reqs := cr.reg.take(); count(reqs, "HEAD /v2/imgctl/node/blobs/") != 3 || len(writes(reqs)) != 0 {
		t.Errorf("Check sent %q, want a HEAD per artifact and no writes", reqs)
	}
	art := map[string]manifest.Artifact{}
	for _, a := range manifest.Artifacts(img.Manifest) {
		art[a.Name] = a
	}

	// A registry that lost the kernel.
	kernel := art["vmlinuz"].Digest
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+kernel.String()) {
			return false
		}
		w.WriteHeader(http.StatusNotFound)
		return true
	})
	err = im.Check(ctx, img)
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), kernel.String()) || !strings.Contains(err.Error(), `"vmlinuz"`) {
		t.Errorf("Check with the kernel missing = %v, want ErrNotFound naming %s vmlinuz", err, kernel)
	}
	t.Logf("error: %v", err)

	// A registry that reports the initrd with another size.
	initrd := art["initrd"]
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodHead || !strings.HasSuffix(r.URL.Path, "/blobs/"+initrd.Digest.String()) {
			return false
		}
		w.Header().Set("Docker-Content-Digest", initrd.Digest.String())
		w.Header().Set("Content-Length", "1")
		w.WriteHeader(http.StatusOK)
		return true
	})
	err = im.Check(ctx, img)
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), initrd.Digest.String()) || !strings.Contains(err.Error(), `"initrd"`) {
		t.Errorf("Check with the initrd of the wrong size = %v, want ErrDigestMismatch naming it", err)
	}

	// A registry that serves a corrupted config (same length).
	cfg := img.Manifest.Config.Digest
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+cfg.String()) {
			return false
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		body[len(body)/2] ^= 0x01
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
		return true
	})
	err = im.Check(ctx, img)
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), cfg.String()) || !strings.Contains(err.Error(), "config") {
		t.Errorf("Check with a corrupted config = %v, want ErrDigestMismatch naming it", err)
	}
	cr.reg.setHook(nil)

	// An image that is not in the repository at all.
	notPushed := storetest.PutVersion(t, storetest.Open(t), "7.0.0", 7)
	if err := im.Check(ctx, notPushed); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), notPushed.Digest().String()) {
		t.Errorf("Check of an image never pushed = %v", err)
	}

	// Hold runs fn and returns its error.
	boom := errors.New("boom")
	ran := false
	if err := im.Hold(ctx, img, func() error { ran = true; return boom }); !errors.Is(err, boom) || !ran {
		t.Errorf("Hold = %v (ran %v), want fn's error", err, ran)
	}
}

// TestMoverOverRegistry promotes and rolls back channels kept in a registry with the rules of
// channel.Mover.
func TestMoverOverRegistry(t *testing.T) {
	cr := newChannelRepo(t)
	ctx := t.Context()
	m := channel.Mover{Channels: cr.channels(t), Images: cr.images(t)}

	e, err := m.Promote(ctx, channel.Promotion{Image: "1.0.0", To: "nightly", Reason: "build 1"})
	if err != nil {
		t.Fatal(err)
	}
	if e.To != cr.a.Digest() || e.ToVersion != "1.0.0" || e.Seq != 1 || e.Reason != "build 1" {
		t.Errorf("promotion into nightly = %+v", e)
	}
	e, err = m.Promote(ctx, channel.Promotion{Image: "nightly", To: "staging"})
	if err != nil {
		t.Fatal(err)
	}
	if e.To != cr.a.Digest() || e.Forced || e.Channel != "staging" {
		t.Errorf("promotion nightly → staging = %+v", e)
	}

	// 1.1.0 was never in nightly: staging refuses it, and nothing is written.
	cr.reg.take()
	_, err = m.Promote(ctx, channel.Promotion{Image: cr.b.Digest().String(), To: "staging"})
	if !errors.Is(err, channel.ErrSkippedStage) {
		t.Errorf("promotion skipping nightly = %v, want ErrSkippedStage", err)
	}
	if w := writes(cr.reg.take()); len(w) != 0 {
		t.Errorf("refused promotion wrote %q", w)
	}
	e, err = m.Promote(ctx, channel.Promotion{Image: "1.1.0", To: "staging", Force: true})
	if err != nil || !e.Forced || e.From != cr.a.Digest() || e.FromVersion != "1.0.0" {
		t.Fatalf("forced promotion = %+v, %v", e, err)
	}
	e, err = m.Rollback(ctx, channel.Rollback{Channel: "staging", Reason: "bad"})
	if err != nil || e.To != cr.a.Digest() || e.Action != channel.ActionRollback || e.Seq != 3 {
		t.Fatalf("rollback = %+v, %v", e, err)
	}
	if d := cr.tagDigest(t, "staging"); d != cr.a.Digest() {
		t.Errorf("tag staging = %s, want %s", d, cr.a.Digest())
	}
	h, err := PullChannel(ctx, cr.repo, "staging", testOptions(t))
	if err != nil || len(h.Entries) != 3 {
		t.Errorf("staging history = %+v, %v", h, err)
	}

	// Check is wired in: an image with a blob missing from the registry is refused.
	kernel := cr.c.Manifest.Layers[1].Digest
	cr.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+kernel.String()) {
			return false
		}
		w.WriteHeader(http.StatusNotFound)
		return true
	})
	if _, err := m.Promote(ctx, channel.Promotion{Image: "1.2.0", To: "nightly"}); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), kernel.String()) {
		t.Errorf("promotion of an image missing a blob = %v", err)
	}
	cr.reg.setHook(nil)
	if h, err := m.Channels.History(ctx, "nightly"); err != nil || len(h.Entries) != 1 {
		t.Errorf("nightly after a refused promotion = %+v, %v", h, err)
	}
}

package publication

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	digest "github.com/opencontainers/go-digest"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// record is a record of img uploaded to region at t0+minutes, in state s.
func record(img store.Image, region string, minutes int, s State, copies ...string) Record {
	r := Record{
		Image: img.Digest(), Name: img.Config.Name, Version: img.Config.Version, Method: MethodEBSDirect,
		Region: region, State: s, Published: t0.Add(time.Duration(minutes) * time.Minute),
		Snapshot: Snapshot{ID: "snap-" + img.Config.Version + "-" + region, BlockSize: BlockSize, Blocks: 8},
	}
	for _, g := range append([]string{region}, copies...) {
		r.Regions = append(r.Regions, Region{Region: g, ImageID: "ami-" + img.Config.Version + "-" + g, State: s})
	}
	return r
}

func hashes(seed byte, blocks ...int64) *Hashes {
	h := NewHashes(BlockSize, 8)
	for _, i := range blocks {
		h.Set(i, sha256.Sum256([]byte{seed, byte(i)}))
	}
	return h
}

func put(t *testing.T, st *store.Store, r Record) {
	t.Helper()
	if _, err := Put(t.Context(), st, r); err != nil {
		t.Fatal(err)
	}
}

func TestPutListLatest(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	other := storetest.PutVersion(t, st, "1.1.0", 20)

	if rs, err := List(t.Context(), st, img.Digest()); err != nil || len(rs) != 0 {
		t.Fatalf("List of an unpublished image = %+v, %v", rs, err)
	}
	if r, err := Latest(t.Context(), st, img.Digest(), "us-east-1"); err != nil || r != nil {
		t.Fatalf("Latest of an unpublished image = %+v, %v", r, err)
	}

	up := record(img, "us-east-1", 0, StateUploading)
	up.Hashes = hashes(1, 0, 3)
	put(t, st, up)
	snap := record(img, "us-east-1", 1, StateSnapshot)
	snap.Hashes = hashes(1, 0, 3)
	put(t, st, snap)
	// Written later with the same time: index order decides (the later one wins).
	avail := record(img, "us-east-1", 2, StateRegistered, "eu-west-1")
	avail.Hashes = hashes(1, 0, 3)
	put(t, st, avail)
	avail2 := avail
	avail2.State, avail2.Regions = StateAvailable, []Region{
		{Region: "us-east-1", ImageID: "ami-1", State: StateAvailable},
		{Region: "eu-west-1", ImageID: "ami-2", State: StateAvailable},
	}
	put(t, st, avail2)
	// An older record put last is still older.
	put(t, st, record(img, "ap-south-1", -5, StateAvailable))
	put(t, st, record(other, "us-east-1", 30, StateAvailable))

	rs, err := List(t.Context(), st, img.Digest())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Region+":"+string(r.State))
		if r.Hashes != nil {
			t.Errorf("List returned hashes")
		}
		if r.Image != img.Digest() || r.Name != "node" || r.Version != "1.0.0" {
			t.Errorf("record = %+v", r)
		}
	}
	want := "us-east-1:available us-east-1:registered us-east-1:snapshot us-east-1:uploading ap-south-1:available"
	if strings.Join(got, " ") != want {
		t.Errorf("List order = %q, want %q", strings.Join(got, " "), want)
	}
	if !rs[0].Published.Equal(avail.Published) {
		t.Errorf("Published = %s, want %s", rs[0].Published, avail.Published)
	}

	for region, want := range map[string]string{"us-east-1": "ami-1", "eu-west-1": "ami-2", "ap-south-1": "ami-1.0.0-ap-south-1", "": "ami-1"} {
		r, err := Latest(t.Context(), st, img.Digest(), region)
		if err != nil || r == nil {
			t.Fatalf("Latest(%q) = %v, %v", region, r, err)
		}
		g, _ := r.RegionState(region)
		if region == "" {
			g = r.Regions[0]
		}
		if g.ImageID != want {
			t.Errorf("Latest(%q) image = %q, want %q", region, g.ImageID, want)
		}
	}
	if r, err := Latest(t.Context(), st, img.Digest(), "sa-east-1"); err != nil || r != nil {
		t.Errorf("Latest(sa-east-1) = %+v, %v", r, err)
	}

	// Hashes round-trip through LoadHashes.
	r, _ := Latest(t.Context(), st, img.Digest(), "us-east-1")
	if err := LoadHashes(t.Context(), st, r); err != nil {
		t.Fatal(err)
	}
	if r.Hashes == nil || r.Hashes.Len() != 2 || !r.Hashes.Same(avail.Hashes, 0) || !r.Hashes.Same(avail.Hashes, 3) || r.Hashes.Blocks != 8 {
		t.Errorf("loaded hashes = %+v", r.Hashes)
	}
	// A record put without hashes has none to load.
	r, _ = Latest(t.Context(), st, img.Digest(), "ap-south-1")
	if err := LoadHashes(t.Context(), st, r); err == nil || !strings.Contains(err.Error(), "no block hashes") {
		t.Errorf("LoadHashes of a record without hashes: %v", err)
	}
	// Nor a record that was not read from the store.
	fresh := record(img, "us-east-1", 0, StateSnapshot)
	if err := LoadHashes(t.Context(), st, &fresh); err == nil || !strings.Contains(err.Error(), "not read from the store") {
		t.Errorf("LoadHashes of a record not read from the store: %v", err)
	}

	// Putting the same record again writes nothing new.
	before, _ := st.Referrers(t.Context(), img.Digest(), ArtifactType)
	put(t, st, avail2)
	after, _ := st.Referrers(t.Context(), img.Digest(), ArtifactType)
	if len(before) != len(after) {
		t.Errorf("putting a record again: %d referrers, then %d", len(before), len(after))
	}
}

func TestPutDefaultsAndRejects(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)

	// Name and Version come from the image, Published from the clock.
	r := record(img, "us-east-1", 0, StateUploading)
	r.Name, r.Version, r.Published = "", "", time.Time{}
	before := time.Now()
	put(t, st, r)
	got, err := Latest(t.Context(), st, img.Digest(), "us-east-1")
	if err != nil || got == nil {
		t.Fatal(got, err)
	}
	if got.Name != "node" || got.Version != "1.0.0" || got.Published.Before(before.Add(-time.Second)) {
		t.Errorf("defaults: %+v", got)
	}

	elsewhere := storetest.PutVersion(t, storetest.Open(t), "2.0.0", 30)
	for _, c := range []struct {
		name   string
		edit   func(r *Record)
		want   string
		target error
	}{
		{"no image", func(r *Record) { r.Image = "" }, "image digest", nil},
		{"image not in the store", func(r *Record) { r.Image = elsewhere.Digest() }, "not found", store.ErrNotFound},
		{"other name", func(r *Record) { r.Name = "gpu" }, `name "gpu"`, nil},
		{"no region", func(r *Record) { r.Region = "" }, "no region", nil},
		{"bad state", func(r *Record) { r.State = "done" }, `state "done"`, nil},
		{"bad region state", func(r *Record) { r.Regions[0].State = "" }, `regions[0] (us-east-1): state ""`, nil},
		{"regions[0] not the upload region", func(r *Record) { r.Regions[0].Region = "eu-west-1" }, "regions[0] is eu-west-1", nil},
		{"bad hashes", func(r *Record) { r.Hashes = NewHashes(1000, 8) }, "block size 1000", nil},
	} {
		r := record(img, "us-east-1", 0, StateAvailable)
		c.edit(&r)
		_, err := Put(t.Context(), st, r)
		if err == nil || !strings.Contains(err.Error(), c.want) || (c.target != nil && !errors.Is(err, c.target)) {
			t.Errorf("%s: Put error %v, want %q", c.name, err, c.want)
		}
	}
}

func TestPrevious(t *testing.T) {
	st := storetest.Open(t)
	v1 := storetest.PutVersion(t, st, "1.0.0", 10)
	v2 := storetest.PutVersion(t, st, "1.1.0", 20)
	v3 := storetest.PutVersion(t, st, "1.2.0", 30)
	cfg := storetest.Config("9.0.0", 40)
	cfg.Name = "gpu"
	gpu := storetest.PutImage(t, st, cfg, storetest.DefaultFiles("9.0.0"))
	gone := storetest.PutVersion(t, st, "0.9.0", 5)

	prev := func(exclude store.Image, region string) string {
		t.Helper()
		r, err := Previous(t.Context(), st, "node", region, exclude.Digest())
		if err != nil {
			t.Fatal(err)
		}
		if r == nil {
			return ""
		}
		if r.Hashes == nil {
			t.Errorf("Previous returned no hashes")
		}
		return r.Snapshot.ID
	}
	if got := prev(v3, "us-east-1"); got != "" {
		t.Errorf("Previous with no records = %q", got)
	}

	r1 := record(v1, "us-east-1", 0, StateAvailable, "eu-west-1")
	r1.Hashes = hashes(1, 0, 1)
	put(t, st, r1)
	if got := prev(v3, "us-east-1"); got != "snap-1.0.0-us-east-1" {
		t.Errorf("Previous = %q, want v1's", got)
	}
	// Only the upload region counts: v1's snapshot is not in eu-west-1.
	if got := prev(v3, "eu-west-1"); got != "" {
		t.Errorf("Previous(eu-west-1) = %q, want none", got)
	}
	// Never the image itself.
	if got := prev(v1, "us-east-1"); got != "" {
		t.Errorf("Previous excluding v1 = %q, want none", got)
	}

	// A newer image whose snapshot is still uploading or failed is passed over...
	r2 := record(v2, "us-east-1", 10, StateUploading)
	r2.Hashes = hashes(2, 0, 1)
	put(t, st, r2)
	r2f := r2
	r2f.Published, r2f.State, r2f.Regions = r2.Published.Add(time.Minute), StateFailed, []Region{{Region: "us-east-1", State: StateFailed}}
	put(t, st, r2f)
	if got := prev(v3, "us-east-1"); got != "snap-1.0.0-us-east-1" {
		t.Errorf("Previous with v2 failed = %q, want v1's", got)
	}
	// ...until it completes; a record without hashes cannot serve an incremental upload.
	r2s := r2
	r2s.Published, r2s.State, r2s.Regions[0].State = r2.Published.Add(2*time.Minute), StateSnapshot, StateSnapshot
	put(t, st, r2s)
	if got := prev(v3, "us-east-1"); got != "snap-1.1.0-us-east-1" {
		t.Errorf("Previous with v2 completed = %q, want v2's", got)
	}
	nohash := record(v2, "us-east-1", 20, StateAvailable)
	put(t, st, nohash)
	if got := prev(v3, "us-east-1"); got != "snap-1.1.0-us-east-1" {
		t.Errorf("Previous with v2's newest record hashless = %q, want v2's older one", got)
	}
	r, err := Previous(t.Context(), st, "node", "us-east-1", v3.Digest())
	if err != nil || r == nil || r.Hashes.Same(r2.Hashes, 0) != true || r.Image != v2.Digest() {
		t.Errorf("Previous hashes: %+v, %v", r, err)
	}

	// Another name's records never count, nor do those of images no longer in the store.
	rg := record(gpu, "us-east-1", 100, StateAvailable)
	rg.Hashes = hashes(9, 0)
	put(t, st, rg)
	rgone := record(gone, "us-east-1", 200, StateAvailable)
	rgone.Hashes = hashes(8, 0)
	put(t, st, rgone)
	if got := prev(v3, "us-east-1"); got != "snap-0.9.0-us-east-1" {
		t.Fatalf("Previous with 0.9.0 newest = %q", got)
	}
	if _, err := st.GC(t.Context(), store.GCOptions{Roots: []digest.Digest{v1.Digest(), v2.Digest(), v3.Digest(), gpu.Digest()}}); err != nil {
		t.Fatal(err)
	}
	if got := prev(v3, "us-east-1"); got != "snap-1.1.0-us-east-1" {
		t.Errorf("Previous after 0.9.0 was collected = %q, want v2's", got)
	}
}

// TestRecordsFollowTheirImageThroughGC: store gc keeps an image's records (and their hashes)
// with it, and removes them with it.
func TestRecordsFollowTheirImageThroughGC(t *testing.T) {
	st := storetest.Open(t)
	keep := storetest.PutVersion(t, st, "1.0.0", 10)
	drop := storetest.PutVersion(t, st, "0.9.0", 5)
	rk := record(keep, "us-east-1", 0, StateAvailable)
	rk.Hashes = hashes(1, 0, 2)
	put(t, st, rk)
	rd := record(drop, "us-east-1", 0, StateAvailable)
	rd.Hashes = hashes(2, 1, 3)
	dropDesc, err := Put(t.Context(), st, rd)
	if err != nil {
		t.Fatal(err)
	}

	// Two hours on, so that the grace for young blobs has passed.
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	rep, err := st.GC(t.Context(), store.GCOptions{Roots: []digest.Digest{keep.Digest()}, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedImages) != 1 || rep.DeletedImages[0].Digest() != drop.Digest() ||
		len(rep.DeletedReferrers) != 1 || rep.DeletedReferrers[0].Digest != dropDesc.Digest {
		t.Errorf("GC report: images %v, referrers %v", rep.DeletedImages, rep.DeletedReferrers)
	}
	r, err := Latest(t.Context(), st, keep.Digest(), "us-east-1")
	if err != nil || r == nil {
		t.Fatalf("kept image's record: %v, %v", r, err)
	}
	if err := LoadHashes(t.Context(), st, r); err != nil || r.Hashes.Len() != 2 {
		t.Errorf("kept image's hashes: %v", err)
	}
	if st.HasBlob(dropDesc.Digest) {
		t.Errorf("the dropped image's record manifest is still stored")
	}
	hd, _ := rd.Hashes.MarshalBinary()
	if st.HasBlob(digest.FromBytes(hd)) {
		t.Errorf("the dropped image's hashes are still stored")
	}
	if rs, err := List(t.Context(), st, drop.Digest()); err != nil || len(rs) != 0 {
		t.Errorf("dropped image's records: %v, %v", rs, err)
	}
}

func TestListCorruptRecord(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	put(t, st, record(img, "us-east-1", 0, StateAvailable))
	refs, err := st.Referrers(t.Context(), img.Digest(), ArtifactType)
	if err != nil || len(refs) != 1 {
		t.Fatal(refs, err)
	}
	cfg := refs[0].Manifest.Config
	storetest.Corrupt(t, st, cfg.Digest, []byte(`{"image":"x"}`))
	_, err = List(t.Context(), st, img.Digest())
	if err == nil || !strings.Contains(err.Error(), refs[0].Descriptor.Digest.String()) || !strings.Contains(err.Error(), "imgctl store verify") {
		t.Errorf("List with a corrupt record: %v", err)
	}
}

func TestByRegion(t *testing.T) {
	rs := []Record{
		{Region: "us-east-1", State: StateUploading, Snapshot: Snapshot{ID: "snap-new"}},
		{Region: "us-east-1", State: StateAvailable, Snapshot: Snapshot{ID: "snap-old"}, Regions: []Region{
			{Region: "us-east-1", ImageID: "ami-old", State: StateAvailable},
			{Region: "eu-west-1", ImageID: "ami-copy", SnapshotID: "snap-copy", State: StateFailed, Message: "copy failed"},
		}},
	}
	got := ByRegion(rs)
	want := []Region{
		{Region: "us-east-1", SnapshotID: "snap-new", State: StateUploading},
		{Region: "eu-west-1", ImageID: "ami-copy", SnapshotID: "snap-copy", State: StateFailed, Message: "copy failed"},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ByRegion = %+v, want %+v", got, want)
	}
	if ByRegion(nil) != nil {
		t.Errorf("ByRegion(nil) is not empty")
	}
}

func TestAllPlaces(t *testing.T) {
	st := storetest.Open(t)
	a := storetest.PutVersion(t, st, "1.0.0", 10)
	b := storetest.PutVersion(t, st, "1.1.0", 20)
	storetest.PutVersion(t, st, "1.2.0", 30)
	ra := record(a, "us-east-1", 0, StateAvailable, "eu-west-1")
	ra.SSMPrefix = "/imgctl/nodes"
	put(t, st, ra)
	put(t, st, record(a, "ap-south-1", 1, StateUploading))
	rb := record(b, "eu-west-1", 0, StateAvailable, "sa-east-1")
	rb.SSMPrefix = "/imgctl/nodes"
	put(t, st, rb)
	rs, err := All(t.Context(), st)
	if err != nil || len(rs) != 3 {
		t.Fatalf("All = %d records, %v", len(rs), err)
	}
	regions, prefixes := Places(rs)
	if strings.Join(regions, " ") != "ap-south-1 eu-west-1 sa-east-1 us-east-1" || strings.Join(prefixes, " ") != "/imgctl/nodes" {
		t.Errorf("Places = %v, %v", regions, prefixes)
	}
}

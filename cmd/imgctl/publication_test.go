package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestInspectShowsAMIs: images inspect lists an image's AMIs per region, from the newest
// record covering each region; "-" when the image was never published.
func TestInspectShowsAMIs(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := storetest.PutVersion(t, st, "v1", 100)
	plain := storetest.PutVersion(t, st, "v2", 200)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, r := range []publication.Record{{
		Image: img.Digest(), Region: "us-east-1", State: publication.StateRegistered, Published: t0,
		Snapshot: publication.Snapshot{ID: "snap-old"},
		Regions:  []publication.Region{{Region: "us-east-1", ImageID: "ami-old", SnapshotID: "snap-old", State: publication.StateRegistered}},
	}, {
		Image: img.Digest(), Region: "ap-south-1", State: publication.StateAvailable, Published: t0.Add(-time.Hour),
		Snapshot: publication.Snapshot{ID: "snap-ap"},
		Regions:  []publication.Region{{Region: "ap-south-1", ImageID: "ami-ap", SnapshotID: "snap-ap", State: publication.StateAvailable}},
	}, {
		Image: img.Digest(), Region: "us-east-1", State: publication.StateRegistered, Published: t0.Add(time.Minute),
		Snapshot: publication.Snapshot{ID: "snap-1"},
		Regions: []publication.Region{
			{Region: "us-east-1", ImageID: "ami-1", State: publication.StateAvailable},
			{Region: "eu-west-1", ImageID: "ami-2", SnapshotID: "snap-2", State: publication.StateRegistered},
		},
	}} {
		if _, err := publication.Put(t.Context(), st, r); err != nil {
			t.Fatal(err)
		}
	}

	out, _, err := run(t, dir, "images", "inspect", "v1")
	want := "\namis\n" +
		"  us-east-1   ami-1   snap-1   available\n" +
		"  eu-west-1   ami-2   snap-2   registered\n" +
		"  ap-south-1  ami-ap  snap-ap  available\n"
	if err != nil || !strings.Contains(out, want) || strings.Contains(out, "ami-old") {
		t.Errorf("images inspect (%v):\n%s\nwant %q", err, out, want)
	}
	out, _, err = run(t, dir, "images", "inspect", "v2")
	if err != nil || !strings.Contains(out, "\namis        -\n") {
		t.Errorf("images inspect of an unpublished image (%v):\n%s", err, out)
	}

	out, _, err = run(t, dir, "-o", "json", "images", "inspect", "v1")
	var doc struct {
		Digest       string
		Publications []map[string]string
	}
	if err != nil || json.Unmarshal([]byte(out), &doc) != nil || doc.Digest != img.Digest().String() {
		t.Fatalf("images inspect -o json (%v):\n%s", err, out)
	}
	wantJSON := []map[string]string{
		{"region": "us-east-1", "imageId": "ami-1", "snapshotId": "snap-1", "state": "available"},
		{"region": "eu-west-1", "imageId": "ami-2", "snapshotId": "snap-2", "state": "registered"},
		{"region": "ap-south-1", "imageId": "ami-ap", "snapshotId": "snap-ap", "state": "available"},
	}
	if got, _ := json.Marshal(doc.Publications); string(got) != mustJSON(wantJSON) {
		t.Errorf("publications = %s, want %s", got, mustJSON(wantJSON))
	}
	// The records are referrers store verify checks and accepts.
	if out, _, err := run(t, dir, "store", "verify"); err != nil {
		t.Errorf("store verify with publication records (%v):\n%s", err, out)
	}
	out, _, err = run(t, dir, "-o", "json", "images", "inspect", plain.Digest().String())
	if err != nil || !strings.Contains(out, `"publications": []`) {
		t.Errorf("images inspect -o json of an unpublished image (%v):\n%s", err, out)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

package deb

import (
	"context"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/progress/progresstest"
)

// Loading a repository's index (InRelease, then a Packages file of tens of MB) is a step with
// the index's bytes of its listed size and the entries parsed; later resolutions reuse it.
func TestIndexLoadReportsProgress(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz"}, "", nil)
	r := tr.repo("bookworm")
	ctx, rec := progresstest.Context(context.Background())
	if _, err := r.Resolve(ctx, "containerd", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(ctx, "runc", ""); err != nil {
		t.Fatal(err)
	}
	size := int64(len(tr.files["/debian/dists/bookworm/main/binary-amd64/Packages.xz"]))
	entries := int64(strings.Count("\n"+testPackages, "\nPackage: "))
	const name = "Debian package index bookworm main/amd64"
	e, ok := rec.Step(name)
	if !ok || e.Err != nil || e.Bytes != size || e.Total != size || e.Entries != entries {
		t.Fatalf("steps = %+v, want %q with %d of %d bytes, %d entries", rec.Finished(), name, size, size, entries)
	}
	if n := rec.Names(); len(n) != 1 {
		t.Errorf("steps %q, want the index loaded once", n)
	}

	// A failed load ends the step with the error.
	ctx, rec = progresstest.Context(context.Background())
	if _, err := tr.repo("trixie").Resolve(ctx, "runc", ""); err == nil {
		t.Fatal("a missing suite resolved")
	}
	if e, ok := rec.Step("Debian package index trixie main/amd64"); !ok || e.Err == nil {
		t.Fatalf("steps = %+v, want the trixie index failed", rec.Finished())
	}
}

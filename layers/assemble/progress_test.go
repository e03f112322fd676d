package assemble

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/progress/progresstest"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
	"github.com/imgctl/imgctl/layers/tarentry/tartest"
)

// Resolving, materializing and composing are steps counting sources and layers, so the first
// half minute of a cold build is not a blank terminal; a second run, all cached, reports the
// outer steps but no conversion or composition.
func TestLayersReportProgress(t *testing.T) {
	dir := t.TempDir()
	var uris []string
	for _, name := range []string{"a.tar", "b.tar", "c.tar"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, tartest.Tar(t, name+"-dir/", name+"-dir/f"), 0o644); err != nil {
			t.Fatal(err)
		}
		uris = append(uris, "file://"+p)
	}
	n := &spec.NodeImage{Spec: spec.Spec{Layers: []spec.Layer{
		{Role: spec.RoleBase, Sources: uris[:1]},
		{Role: spec.RoleExtra, Sources: uris[1:]},
	}}}
	ca, err := cache.Open(filepath.Join(dir, "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Env: &source.Env{Cache: ca, MTime: time.Unix(1, 0)}}
	for run, want := range [][]string{
		{"resolve 3 sources", "fetch and convert 3 sources", "convert a.tar", "convert b.tar", "convert c.tar", "compose layer base", "compose layer extra"},
		{"resolve 3 sources", "fetch and convert 3 sources"},
	} {
		ctx, rec := progresstest.Context(context.Background())
		plan, err := Resolve(ctx, n, nil, 1, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Layers(ctx, plan, 1, opts); err != nil {
			t.Fatal(err)
		}
		got := rec.Names()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("run %d: steps %q, want %q", run, got, want)
		}
		for _, name := range []string{"resolve 3 sources", "fetch and convert 3 sources"} {
			if e, ok := rec.Step(name); !ok || e.Entries != 3 || e.Err != nil {
				t.Errorf("run %d: %s = %+v, want 3 entries", run, name, e)
			}
		}
		if e, ok := rec.Step("compose layer extra"); run == 0 && (!ok || e.Entries != 4 || e.Bytes == 0) {
			t.Errorf("compose layer extra = %+v, want 4 entries and bytes", e)
		}
	}
}

package source

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/progress/progresstest"
	"github.com/imgctl/imgctl/layers/tarentry/tartest"
)

// mmdebstrap runs for half a minute on a cold build: it is a step, with the size of the tar it
// produced; a cached base reports nothing.
func TestMmdebstrapReportsProgress(t *testing.T) {
	fakeMmdebstrap(t)
	env := testEnv(t)
	u, err := Parse("mmdebstrap://bookworm?mirror=https://h/debian&packages=udev,kmod")
	if err != nil {
		t.Fatal(err)
	}
	ctx, rec := progresstest.Context(context.Background())
	if _, err := env.Resolve(ctx, u, nil); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(os.Getenv("FAKE_MMDEBSTRAP_TAR"))
	if err != nil {
		t.Fatal(err)
	}
	const name = "mmdebstrap bookworm (minbase +2 packages)"
	if e, ok := rec.Step(name); !ok || e.Err != nil || e.Bytes != st.Size() {
		t.Fatalf("steps = %+v, want %q with %d bytes", rec.Finished(), name, st.Size())
	}
	ctx, rec = progresstest.Context(context.Background())
	if _, err := env.Resolve(ctx, u, nil); err != nil {
		t.Fatal(err)
	}
	if n := rec.Names(); len(n) != 0 {
		t.Errorf("a cached base reported steps %q", n)
	}
}

// Converting a source into a layer tar is a step naming the source, with the tar's bytes and
// entries.
func TestMaterializeReportsProgress(t *testing.T) {
	env := newTestEnv(t)
	p := filepath.Join(t.TempDir(), "extras.tar")
	if err := os.WriteFile(p, tartest.Tar(t, "a/", "a/x", "a/y"), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := Parse("file://" + p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, rec := progresstest.Context(context.Background())
	pin, err := env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := env.Materialize(ctx, u, pin)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := rec.Step("convert extras.tar"); !ok || e.Err != nil || e.Bytes != tr.Size || e.Entries != int64(tr.Entries) {
		t.Fatalf("steps = %+v, want convert extras.tar with %d bytes, %d entries", rec.Finished(), tr.Size, tr.Entries)
	}

	// A failed conversion ends its step with the error.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	if err := os.WriteFile(bad, []byte(strings.Repeat("not a tar", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	u, _ = Parse("file://" + bad)
	pin, err = env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Materialize(ctx, u, pin); err == nil {
		t.Fatal("garbage converted")
	}
	if e, ok := rec.Step("convert bad.tar"); !ok || e.Err == nil {
		t.Fatalf("steps = %+v, want convert bad.tar failed", rec.Finished())
	}
}

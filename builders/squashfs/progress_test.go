package squashfs

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/imgctl/imgctl/layers/progress/progresstest"
)

// The squashfs writer is the slow step of a build: it reports the input tar bytes it consumed
// (of the total, when the input knows its size) and the entries it read.
func TestWriteReportsProgress(t *testing.T) {
	tarball := makeTar(t, cases()["sizes"])
	ctx, rec := progresstest.Context(context.Background())
	if _, err := Write(ctx, &memImage{}, bytes.NewReader(tarball), Options{MTime: sde}); err != nil {
		t.Fatal(err)
	}
	e, ok := rec.Step("compress squashfs (zstd)")
	if !ok || e.Err != nil || e.Bytes != int64(len(tarball)) || e.Total != int64(len(tarball)) || e.Entries != int64(countTar(t, tarball)) {
		t.Fatalf("steps = %+v, want %d of %d bytes, %d entries", rec.Finished(), len(tarball), len(tarball), countTar(t, tarball))
	}

	// A stream of unknown size, then a failure: no total, and the step ends with the error.
	ctx, rec = progresstest.Context(context.Background())
	bad := io.MultiReader(bytes.NewReader(tarball[:len(tarball)/2]), bytes.NewReader(make([]byte, 4096)))
	if _, err := Write(ctx, &memImage{}, bad, Options{MTime: sde, Compression: "gzip"}); err == nil {
		t.Fatal("a truncated tar was accepted")
	}
	if e, ok := rec.Step("compress squashfs (gzip)"); !ok || e.Err == nil || e.Total != 0 || e.Bytes == 0 {
		t.Fatalf("steps = %+v, want the error, no total, some bytes", rec.Finished())
	}
}

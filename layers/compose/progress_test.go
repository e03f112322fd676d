package compose

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/progress/progresstest"
)

// Compose reports one step: the tar bytes and entries written; its name says what is composed
// (Options.Step, by default the mode).
func TestComposeReportsProgress(t *testing.T) {
	in := []Input{mkTar(t, "f b 2", "f a 1", "d c", "l c/l ../a"), mkTar(t, "f c/z zz", "h c/h a")}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Mode: Rootfs}, "compose rootfs"},
		{Options{Mode: Layer}, "compose layer"},
		{Options{Mode: Layer, Step: "compose layer kernel"}, "compose layer kernel"},
	} {
		ctx, rec := progresstest.Context(context.Background())
		var out bytes.Buffer
		tc.opts.MTime = time.Unix(1, 0)
		res, err := Compose(ctx, &out, in, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		e, ok := rec.Step(tc.want)
		if !ok || e.Err != nil || e.Bytes != int64(out.Len()) || e.Entries != int64(res.Entries) {
			t.Errorf("steps = %+v, want %q with %d bytes, %d entries", rec.Finished(), tc.want, out.Len(), res.Entries)
		}
	}
	ctx, rec := progresstest.Context(context.Background())
	bad := mkTar(t, "f a 0123456789")
	bad.Size = 512 + 5
	if _, err := Compose(ctx, &bytes.Buffer{}, []Input{bad}, Options{}); err == nil {
		t.Fatal("a truncated layer composed")
	}
	if e, ok := rec.Step("compose rootfs"); !ok || e.Err == nil {
		t.Errorf("steps = %+v, want compose rootfs failed", rec.Finished())
	}
}

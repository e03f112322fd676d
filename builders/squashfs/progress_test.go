package squashfs

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/layers/progress"
)

// recorder collects the events of a progress.Reporter.
type recorder struct {
	mu  sync.Mutex
	evs []progress.Event
}

func (r *recorder) sink(e progress.Event) { r.mu.Lock(); r.evs = append(r.evs, e); r.mu.Unlock() }

func (r *recorder) finished(t *testing.T) progress.Event {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.evs) < 2 || r.evs[0].Kind != progress.Started || r.evs[len(r.evs)-1].Kind != progress.Finished {
		t.Fatalf("events = %+v, want Started … Finished", r.evs)
	}
	return r.evs[len(r.evs)-1]
}

// The squashfs writer is the slow step of a build: it reports the input tar bytes it consumed
// (of the total, when the input knows its size) and the entries it read.
func TestWriteReportsProgress(t *testing.T) {
	tarball := makeTar(t, cases()["sizes"])
	var rec recorder
	ctx := progress.With(context.Background(), progress.New(rec.sink))
	if _, err := Write(ctx, &memImage{}, bytes.NewReader(tarball), Options{MTime: sde}); err != nil {
		t.Fatal(err)
	}
	e := rec.finished(t)
	if e.Step != "compress squashfs (zstd)" || e.Err != nil || e.Bytes != int64(len(tarball)) || e.Total != int64(len(tarball)) || e.Entries != int64(countTar(t, tarball)) {
		t.Fatalf("finish = %+v, want %d of %d bytes, %d entries", e, len(tarball), len(tarball), countTar(t, tarball))
	}

	// A stream of unknown size, then a failure: no total, and the step ends with the error.
	rec = recorder{}
	ctx = progress.With(context.Background(), progress.New(rec.sink))
	bad := io.MultiReader(bytes.NewReader(tarball[:len(tarball)/2]), bytes.NewReader(make([]byte, 4096)))
	if _, err := Write(ctx, &memImage{}, bad, Options{MTime: sde, Compression: "gzip"}); err == nil {
		t.Fatal("a truncated tar was accepted")
	}
	if e := rec.finished(t); e.Step != "compress squashfs (gzip)" || e.Err == nil || e.Total != 0 || e.Bytes == 0 {
		t.Fatalf("finish = %+v, want the error, no total, some bytes", e)
	}
}

package sparse

import (
	"bytes"
	"context"
	"os"
	"slices"
	"testing"

	"github.com/imgctl/imgctl/layers/progress/progresstest"
)

// Encoding a disk reports two steps a person can follow: finding the data in the disk (bytes
// of the disk covered, of its size) and writing the sparse image (bytes written, of the exact
// output size, and chunks as entries).
func TestWriteReportsProgress(t *testing.T) {
	p := sample(t, false)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	ctx, rec := progresstest.Context(context.Background())
	var buf bytes.Buffer
	s, err := Write(ctx, &buf, f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if names := rec.Names(); !slices.Equal(names, []string{"find data in disk image", "write sparse image"}) {
		t.Fatalf("steps = %q", names)
	}
	scan, _ := rec.Step("find data in disk image")
	write, _ := rec.Step("write sparse image")
	if scan.Bytes != st.Size() || scan.Total != st.Size() || scan.Err != nil {
		t.Errorf("scan step = %+v, want %d of %d bytes", scan, st.Size(), st.Size())
	}
	if n := int64(buf.Len()); write.Bytes != n || write.Total != n || write.Entries != int64(s.Chunks) || write.Err != nil {
		t.Errorf("write step = %+v, want %d of %d bytes, %d chunks", write, n, n, s.Chunks)
	}
}

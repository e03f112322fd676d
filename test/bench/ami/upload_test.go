package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/sparse"
)

// writeSimg stores d as a sparse image (zero runs become holes) and returns its path.
func writeSimg(t *testing.T, dir, name string, d []byte) string {
	t.Helper()
	raw, err := os.Create(filepath.Join(dir, name+".raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// write only the non-zero 4 KiB pages, so the rest stays a hole
	if err := raw.Truncate(int64(len(d))); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(d); off += 4096 {
		if p := d[off : off+4096]; slices.ContainsFunc(p, func(b byte) bool { return b != 0 }) {
			if _, err := raw.WriteAt(p, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	path := filepath.Join(dir, name+".simg")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := sparse.Write(context.Background(), out, raw, int64(len(d))); err != nil {
		t.Fatal(err)
	}
	return path
}

func fill(d []byte, off, n int, v byte) {
	for i := range n {
		d[off+i] = v + byte(i%7)
	}
}

// A 4 MiB disk (GPT, P1 at 1 MiB, P2 at 2 MiB, 1 MiB each) and the same disk with one of P2's
// blocks edited: the full upload sends the data blocks only, the incremental one the edited
// block only, the areas say where it was, and the plain PUT baseline sends the same bytes as
// the full upload.
func TestUploadIncrementalAndPut(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const mib = 1 << 20
	base := testDisk(t, 4*mib/sectorSize, [3]any{"P1", 2048, 2048}, [3]any{"P2", 4096, 2048})
	fill(base, 1*mib+100, 1000, 1) // P1, its first block
	fill(base, 2*mib, mib, 2)      // P2, both blocks
	next := slices.Clone(base)
	fill(next, 2*mib+mib/2+10, 10, 9) // P2, its second block
	basePath := writeSimg(t, dir, "base", base)
	nextPath := writeSimg(t, dir, "next", next)

	out, err := incrementalCmd(ctx, []string{"-base", basePath, "-next", nextPath, "-concurrency", "3",
		"-areas", filepath.Join(dir, "areas.md")})
	if err != nil {
		t.Fatal(err)
	}
	res := out.(incrementalResult)
	// base: blocks 0 (GPT), 2 (P1), 4 and 5 (P2)
	if res.Base.Sent != 4 || res.Base.BytesSent != 4*512<<10 || res.Base.Received != res.Base.BytesSent || res.Base.DiskBytes != 4*mib {
		t.Fatalf("full upload: %+v, want 4 blocks of 512 KiB sent and received of a 4 MiB disk", res.Base)
	}
	// 6 requests (start, 4 blocks, complete), 3 in flight; the transport may dial for a
	// request while a connection is being returned, so up to one per request
	if res.Base.Connections < 1 || res.Base.Connections > 6 {
		t.Fatalf("the full upload opened %d connections, want 1 to 6 (6 requests)", res.Base.Connections)
	}
	if res.Base.ZeroSkip != 0.5 {
		t.Fatalf("zero-skip %v, want 0.5 (2 of 4 MiB)", res.Base.ZeroSkip)
	}
	if res.Next.Sent != 1 || res.Next.Unchanged != 3 || res.Changed != 1 || res.FullSent != 4 || res.SentOfFull != 0.25 {
		t.Fatalf("incremental: %+v, want 1 block sent of 4", res)
	}
	want := []area{
		{Name: "P1", Blocks: 2, Data: 1, FirstChanged: -1, TailFrom: -1},
		{Name: "P2", Blocks: 2, Data: 2, Changed: 1, FirstChanged: 512 << 10, TailFrom: 512 << 10, TailData: 1},
	}
	if !slices.Equal(res.Areas[:2], want) || res.Areas[2].Name != outside || res.Areas[2].Changed != 0 {
		t.Fatalf("areas %+v, want %+v and nothing changed outside", res.Areas, want)
	}
	rows, err := os.ReadFile(filepath.Join(dir, "areas.md"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(rows); !slices.Contains(strings.Split(got, "\n"), "| P2 | 2 | 2 | 1 | 50% | 0.5 MiB | 0.5 MiB (1 blocks) |") {
		t.Fatalf("areas table:\n%s", got)
	}
	if _, err := json.Marshal(res); err != nil {
		t.Fatal(err)
	}

	p, err := putCmd(ctx, []string{"-simg", basePath, "-concurrency", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if pr := p.(putResult); pr.Blocks != res.Base.Sent || pr.Bytes != res.Base.BytesSent || pr.Received != pr.Bytes {
		t.Fatalf("baseline %+v: want the full upload's %d blocks, %d bytes", pr, res.Base.Sent, res.Base.BytesSent)
	}
}

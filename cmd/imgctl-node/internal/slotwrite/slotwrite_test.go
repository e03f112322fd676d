package slotwrite

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/update"
)

const slotSize = 4 << 20

type fixture struct {
	v1, v2         []byte // root blobs
	im1, im2       update.Image
	srv            *server
	active, slot   *os.File
	activeOnVerity *Active
}

// newFixture: v1 runs in the active slot; v2 is v1 with blocks [from, to) changed.
func newFixture(t *testing.T, blocks, from, to int) *fixture {
	d1 := rootData(1, blocks)
	d2 := append([]byte(nil), d1...)
	copy(d2[from*BlockSize:to*BlockSize], rootData(2, to-from))
	f := &fixture{}
	f.v1, f.im1 = build(t, d1)
	f.v2, f.im2 = build(t, d2)
	f.srv = newServer(t, f.v1, f.v2)
	f.active = slotFile(t, "root-a", slotSize, f.v1)
	f.slot = slotFile(t, "root-b", slotSize, nil)
	f.activeOnVerity = &Active{Device: f.active, Size: slotSize, VerityRootHash: f.im1.VerityRootHash, VerityOffset: f.im1.VerityOffset}
	return f
}

func (f *fixture) options(im update.Image, active *Active) Options {
	return Options{Image: im, Slot: f.slot, SlotSize: slotSize, SlotName: "ROOT-B (test)", Active: active,
		Blobs: f.srv.client(), RangeBlocks: 64}
}

func TestWriteFullFetch(t *testing.T) {
	f := newFixture(t, 300, 0, 0)
	o := f.options(f.im1, nil)
	var progress []int64
	o.Progress = func(done, total int64) {
		if total != 300*BlockSize {
			t.Errorf("progress total %d, want %d", total, 300*BlockSize)
		}
		progress = append(progress, done)
	}
	res, err := Write(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(progress) != 5 || progress[0] != 64*BlockSize || progress[4] != 300*BlockSize {
		t.Errorf("progress %v: want 5 calls, one per range, ending at %d", progress, 300*BlockSize)
	}
	if !slotHolds(t, f.slot, f.v1) {
		t.Fatal("the slot does not hold the root blob")
	}
	if res.Fetched != int64(len(f.v1)) || res.Reused != 0 || res.Kept != 0 || res.Plan.Fetch != 300 {
		t.Errorf("result %+v: want all %d bytes fetched", res, len(f.v1))
	}
	// 300 blocks in ranges of 64: 5 requests, and one for the hash area.
	if got := f.srv.requests.Load(); got != 6 {
		t.Errorf("%d requests, want 6", got)
	}
	if got := f.srv.sent.Load(); got != int64(len(f.v1)) {
		t.Errorf("server sent %d bytes, want %d", got, len(f.v1))
	}
}

func TestWriteKubeletLikeChange(t *testing.T) {
	// 1000 blocks, 40 of them (the kubelet) differ.
	f := newFixture(t, 1000, 600, 640)
	for _, c := range []struct {
		name   string
		active func() *Active
	}{
		{"active slot with verity", func() *Active { return f.activeOnVerity }},
		{"active slot hashed", func() *Active { return &Active{Device: f.active, Size: slotSize} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.slot = slotFile(t, "root-b", slotSize, nil)
			before := f.srv.sent.Load()
			res, err := Write(context.Background(), f.options(f.im2, c.active()))
			if err != nil {
				t.Fatal(err)
			}
			if !slotHolds(t, f.slot, f.v2) {
				t.Fatal("the slot does not hold v2's root blob")
			}
			area := int64(len(f.v2)) - f.im2.VerityOffset
			// The zero blocks (every 10th) of the changed region are copies too.
			if res.Plan.Fetch != 36 || res.Fetched != 36*BlockSize+area || res.Reused != 964*BlockSize || res.Kept != 0 {
				t.Errorf("result %+v: want 36 blocks + the hash area (%d bytes) fetched, 964 reused", res, area)
			}
			if sent := f.srv.sent.Load() - before; sent != res.Fetched {
				t.Errorf("server sent %d bytes, result says %d", sent, res.Fetched)
			}
		})
	}
}

// cancelAfter is a slot that cancels the write after n bytes were written: a writer killed
// half-way (what a power cut leaves is the same: some blocks written, the rest old).
type cancelAfter struct {
	*os.File
	n      atomic.Int64
	cancel context.CancelFunc
}

func (c *cancelAfter) WriteAt(b []byte, off int64) (int, error) {
	n, err := c.File.WriteAt(b, off)
	if c.n.Add(-int64(n)) <= 0 {
		c.cancel()
	}
	return n, err
}

func TestWriteResumes(t *testing.T) {
	f := newFixture(t, 1000, 0, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	killed := &cancelAfter{File: f.slot, cancel: cancel}
	killed.n.Store(500 * BlockSize)
	o := f.options(f.im1, nil)
	o.Slot = killed
	if _, err := Write(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("killed write: %v, want context.Canceled", err)
	}
	if slotHolds(t, f.slot, f.v1) {
		t.Fatal("the killed write completed the slot")
	}
	// A new server: the first one may still be sending what the killed write asked for.
	f.srv = newServer(t, f.v1)
	res, err := Write(context.Background(), f.options(f.im1, nil))
	if err != nil {
		t.Fatal(err)
	}
	if !slotHolds(t, f.slot, f.v1) {
		t.Fatal("the second run did not complete the slot")
	}
	area := int64(len(f.v1)) - f.im1.VerityOffset
	// Blocks 0-511 were written (ranges of 64 blocks: the write that crossed 500 finished);
	// zero blocks of the rest were already right too (the slot was all zeros).
	if res.Plan.Keep < 500 || res.Plan.Fetch > 500 || res.Fetched != int64(res.Plan.Fetch)*BlockSize+area {
		t.Errorf("second run %+v: want at least 500 blocks kept, the rest fetched", res.Plan)
	}
	if sent := f.srv.sent.Load(); sent != res.Fetched {
		t.Errorf("second run: server sent %d bytes, result says %d", sent, res.Fetched)
	}
}

func TestWriteRefusesBadResponses(t *testing.T) {
	for _, c := range []struct {
		name  string
		fault func(w http.ResponseWriter, r *http.Request, blob []byte) bool
		want  string
	}{
		{"corrupt block", func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
			start, end := rangeOf(r)
			if start >= 300*BlockSize { // the hash area
				return false
			}
			b := append([]byte(nil), blob[start:end+1]...)
			b[len(b)/2] ^= 1
			serveRange(w, b, start, end, len(blob))
			return true
		}, "does not match its verity hash: the download is corrupt"},
		{"truncated body", func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
			start, end := rangeOf(r)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(blob)))
			w.Header().Set("Content-Length", strconv.Itoa(end-start+1))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[start : start+(end-start+1)/2])
			return true
		}, "unexpected EOF"},
		{"wrong Content-Range", func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
			start, end := rangeOf(r)
			serveRange(w, blob[start+BlockSize:end+BlockSize+1], start+BlockSize, end+BlockSize, len(blob))
			return true
		}, "Content-Range"},
		{"corrupt hash area", func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
			start, end := rangeOf(r)
			if start < 300*BlockSize {
				return false
			}
			b := append([]byte(nil), blob[start:end+1]...)
			b[len(b)-1] ^= 1
			serveRange(w, b, start, end, len(blob))
			return true
		}, "the hash area does not match the image's verity root hash: verity hash area: level 0 block 2 does not match its hash in level 1"},
		{"no Range support", func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
			w.Write(blob)
			return true
		}, "the server does not answer Range requests"},
		{"not found", func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
			http.NotFound(w, r)
			return true
		}, "404 Not Found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, 300, 0, 0)
			f.srv.setFault(c.fault)
			res, err := Write(context.Background(), f.options(f.im1, nil))
			if err == nil {
				t.Fatalf("accepted: %+v", res)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			if slotHolds(t, f.slot, f.v1) {
				t.Error("the slot holds the root blob after a refused download")
			}
		})
	}
}

func TestWriteRetriesOnce(t *testing.T) {
	// A connection dropped in the middle of a range: the next attempt continues from the
	// first block not yet written.
	f := newFixture(t, 300, 0, 0)
	var dropped atomic.Bool
	f.srv.setFault(func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
		start, end := rangeOf(r)
		if start != 64*BlockSize || dropped.Swap(true) {
			return false
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(blob)))
		w.Header().Set("Content-Length", strconv.Itoa(end-start+1))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(blob[start : start+10*BlockSize+100])
		return true
	})
	res, err := Write(context.Background(), f.options(f.im1, nil))
	if err != nil {
		t.Fatal(err)
	}
	if !slotHolds(t, f.slot, f.v1) {
		t.Fatal("the slot does not hold the root blob")
	}
	// 5 ranges + the hash area + the retry, which asked only for the blocks not yet written.
	if got := f.srv.requests.Load(); got != 7 {
		t.Errorf("%d requests, want 7", got)
	}
	if got, want := f.srv.sent.Load(), int64(len(f.v1))+100; got != want {
		t.Errorf("server sent %d bytes, want %d (the dropped range's 10 blocks not sent again)", got, want)
	}
	if res.Fetched != int64(len(f.v1)) {
		t.Errorf("fetched %d, want %d", res.Fetched, len(f.v1))
	}
}

func TestWriteServerDown(t *testing.T) {
	f := newFixture(t, 10, 0, 0)
	url := f.srv.URL
	f.srv.Close()
	start := time.Now()
	_, err := Write(context.Background(), f.options(f.im1, nil))
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") || !strings.Contains(err.Error(), url+"/blobs/"+f.im1.Root.Digest) {
		t.Fatalf("error %v: want it to give up after 3 attempts naming the blob's URL", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestWriteCancelled(t *testing.T) {
	f := newFixture(t, 300, 0, 0)
	ctx, cancel := context.WithCancel(context.Background())
	f.srv.setFault(func(w http.ResponseWriter, r *http.Request, blob []byte) bool {
		cancel()
		<-r.Context().Done()
		return true
	})
	_, err := Write(ctx, f.options(f.im1, nil))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

func TestWriteTooLarge(t *testing.T) {
	f := newFixture(t, 10, 0, 0)
	o := f.options(f.im1, nil)
	o.SlotSize = f.im1.Root.Size - 1
	_, err := Write(context.Background(), o)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "slot ROOT-B (test) holds") {
		t.Fatalf("error %v, want ErrTooLarge naming the slot", err)
	}
	if f.srv.requests.Load() != 0 {
		t.Error("fetched something for a root that does not fit")
	}
}

func TestWriteActiveBlockChanged(t *testing.T) {
	// A block of the running slot's partition no longer matches its tree: it is fetched.
	f := newFixture(t, 100, 50, 60)
	if _, err := f.active.WriteAt([]byte{0xff}, 20*BlockSize+7); err != nil {
		t.Fatal(err)
	}
	res, err := Write(context.Background(), f.options(f.im2, f.activeOnVerity))
	if err != nil {
		t.Fatal(err)
	}
	if !slotHolds(t, f.slot, f.v2) {
		t.Fatal("the slot does not hold v2's root blob")
	}
	area := int64(len(f.v2)) - f.im2.VerityOffset
	if res.Fetched != 10*BlockSize+area || res.Reused != 90*BlockSize {
		t.Errorf("result %+v: want the 9 changed blocks and the modified one fetched", res)
	}
}

// rangeOf parses a request's "Range: bytes=START-END".
func rangeOf(r *http.Request) (start, end int) {
	fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &start, &end)
	return start, end
}

func serveRange(w http.ResponseWriter, b []byte, start, end, total int) {
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, total))
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(b)
}

// lossySlot acknowledges one write without making it (a disk that lies, a bad cable).
type lossySlot struct {
	*os.File
	dropAt int64
}

func (l *lossySlot) WriteAt(b []byte, off int64) (int, error) {
	if off <= l.dropAt && l.dropAt < off+int64(len(b)) {
		return len(b), nil
	}
	return l.File.WriteAt(b, off)
}

func TestWriteChecksWhatLanded(t *testing.T) {
	f := newFixture(t, 100, 0, 0)
	o := f.options(f.im1, nil)
	o.Slot = &lossySlot{File: f.slot, dropAt: 70 * BlockSize}
	_, err := Write(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "slot ROOT-B (test): its first "+strconv.FormatInt(f.im1.Root.Size, 10)+" bytes hash to") ||
		!strings.Contains(err.Error(), "want the root blob's "+f.im1.Root.Digest) {
		t.Fatalf("error %v: want the final digest check to fail", err)
	}
}

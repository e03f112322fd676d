package ebssnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/smithy-go"

	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/layers/progress"
)

const region = "us-east-1"

// fake starts an in-process EBS direct endpoint.
func fake(t *testing.T) (*awsfake.EBS, *ebs.Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &awsfake.EBS{}
	s := &awsfake.Server{}
	s.Use(f)
	url, err := s.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); s.Close(); cancel() })
	return f, awsfake.ClientsForTest(t, region, url).EBS(region)
}

// pattern is 4 KiB of bytes that differ for each seed.
func pattern(seed byte) []byte {
	out := make([]byte, 0, 4096)
	for h := sha256.Sum256([]byte{seed}); len(out) < 4096; h = sha256.Sum256(h[:]) {
		out = append(out, h[:]...)
	}
	return out
}

// disk writes a sparse image of size bytes whose 512 KiB block i holds pattern(seed) at
// 8 KiB into the block (seed 0: the block stays zeros), and opens it.
func disk(t *testing.T, size int64, blocks map[int64]byte) (*sparse.Reader, []byte) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, size)
	for i, seed := range blocks {
		if seed == 0 {
			continue
		}
		off := i*BlockSize + 8192
		copy(raw[off:], pattern(seed))
		if _, err := f.WriteAt(pattern(seed), off); err != nil {
			t.Fatal(err)
		}
	}
	var img bytes.Buffer
	if _, err := sparse.Write(context.Background(), &img, f, size); err != nil {
		t.Fatal(err)
	}
	rd, err := sparse.Open(bytes.NewReader(img.Bytes()), int64(img.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return rd, raw
}

// fast are options that keep retries quick.
func fast(o Options) Options {
	o.RetryDelay = time.Millisecond
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 5 * time.Second
	}
	return o
}

// checkSnapshot compares every block the fake holds for id with raw (zeros where it holds
// none) and the result's hashes.
func checkSnapshot(t *testing.T, f *awsfake.EBS, id string, raw []byte, res Result) {
	t.Helper()
	if s := f.Snapshot(id); s == nil || s.Status != "completed" {
		t.Fatalf("snapshot %s: %+v, want completed", id, s)
	}
	zero := make([]byte, BlockSize)
	for i := int64(0); i < res.Blocks; i++ {
		want := zero
		if off := i * BlockSize; off < int64(len(raw)) {
			want = append(raw[off:min(off+BlockSize, int64(len(raw)))], zero[:max(0, off+BlockSize-int64(len(raw)))]...)
		}
		got := f.Block(id, i)
		if got == nil {
			got = zero
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d of %s differs from the disk", i, id)
		}
		sum, ok := res.Hashes.Get(i)
		if isZero := bytes.Equal(want, zero); ok == isZero || (ok && sum != sha256.Sum256(want)) {
			t.Fatalf("Result.Hashes block %d: %x, %v (zero block: %v)", i, sum, ok, isZero)
		}
	}
}

// TestUploadSkipsZeroBlocks: only blocks with data are read and sent, each once, with a
// checksum and aggregate the fake accepts; the snapshot holds the disk; progress is reported.
func TestUploadSkipsZeroBlocks(t *testing.T) {
	f, c := fake(t)
	src, raw := disk(t, 8<<20+12288, map[int64]byte{0: 1, 3: 2, 16: 3})
	var mu sync.Mutex
	var done []progress.Event
	ctx := progress.With(context.Background(), progress.New(func(e progress.Event) {
		if e.Kind == progress.Finished {
			mu.Lock()
			done = append(done, e)
			mu.Unlock()
		}
	}))
	tags := map[string]string{"imgctl:state": "uploading", "imgctl:image": "sha256:abc"}
	res, err := Upload(ctx, c, src, fast(Options{Tags: tags, Description: "test disk"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.VolumeSize != 1 || res.Blocks != 2048 || res.DataBlocks != 3 || res.Sent != 3 || res.Zero != 2045 || res.Unchanged != 0 || res.BytesSent != 3*BlockSize {
		t.Errorf("result %+v", res)
	}
	n := f.Counters()
	if n.Blocks != 3 || n.Rejected != 0 || len(n.Attempts) != 3 || n.Attempts[16] != 1 {
		t.Errorf("the fake received %d blocks (%d rejected), attempts %v; want blocks 0, 3, 16 once", n.Blocks, n.Rejected, n.Attempts)
	}
	checkSnapshot(t, f, res.SnapshotID, raw, res)
	if s := f.Snapshot(res.SnapshotID); s.Tags["imgctl:image"] != "sha256:abc" || s.Description != "test disk" || s.VolumeSize != 1 {
		t.Errorf("snapshot %+v", s)
	}
	if len(done) != 1 || done[0].Step != "upload snapshot "+region || done[0].Err != nil || done[0].Bytes != 3*BlockSize || done[0].Entries != 3 {
		t.Errorf("progress: %+v", done)
	}
}

// TestFakeChecksChecksums: the fake refuses a block whose checksum or length is wrong and a
// completion whose aggregate or count is wrong, so the upload tests prove Upload's are right.
func TestFakeChecksChecksums(t *testing.T) {
	f, c := fake(t)
	ctx := context.Background()
	st, err := c.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte{1}, BlockSize)
	good := sha256.Sum256(block)
	put := func(data []byte, sum string) error {
		_, err := c.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
			SnapshotId: st.SnapshotId, BlockIndex: aws.Int32(2), BlockData: bytes.NewReader(data),
			DataLength: aws.Int32(int32(len(data))), Checksum: aws.String(sum), ChecksumAlgorithm: types.ChecksumAlgorithmChecksumAlgorithmSha256,
		}, noSDKRetries)
		return err
	}
	var ve *types.ValidationException
	if err := put(block, base64.StdEncoding.EncodeToString(make([]byte, 32))); !errors.As(err, &ve) {
		t.Errorf("a wrong checksum: %v, want ValidationException", err)
	}
	if err := put(block[:4096], base64.StdEncoding.EncodeToString(good[:])); !errors.As(err, &ve) {
		t.Errorf("a short block: %v, want ValidationException", err)
	}
	if err := put(block, base64.StdEncoding.EncodeToString(good[:])); err != nil {
		t.Fatal(err)
	}
	complete := func(n int32, sum string) error {
		_, err := c.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{
			SnapshotId: st.SnapshotId, ChangedBlocksCount: aws.Int32(n), Checksum: aws.String(sum),
			ChecksumAlgorithm: types.ChecksumAlgorithmChecksumAlgorithmSha256, ChecksumAggregationMethod: types.ChecksumAggregationMethodChecksumAggregationLinear,
		}, noSDKRetries)
		return err
	}
	agg := Aggregate(slices.Values([][sha256.Size]byte{good}))
	if err := complete(1, base64.StdEncoding.EncodeToString(good[:])); !errors.As(err, &ve) {
		t.Errorf("a wrong aggregate: %v, want ValidationException", err)
	}
	if err := complete(2, agg); !errors.As(err, &ve) {
		t.Errorf("a wrong block count: %v, want ValidationException", err)
	}
	if err := complete(1, agg); err != nil {
		t.Errorf("the right aggregate: %v", err)
	}
	if n := f.Counters(); n.Rejected != 4 || n.Blocks != 1 {
		t.Errorf("counters %+v", n)
	}
}

// TestUploadEncryptedSendsZeros: on an encrypted snapshot unwritten blocks do not read as
// zeros (coldsnap#395), so every block is written.
func TestUploadEncryptedSendsZeros(t *testing.T) {
	f, c := fake(t)
	src, raw := disk(t, 4<<20, map[int64]byte{1: 9})
	res, err := Upload(context.Background(), c, src, fast(Options{Encrypted: true, KMSKeyARN: "arn:aws:kms:us-east-1:123456789012:key/k"}))
	if err != nil {
		t.Fatal(err)
	}
	if n := f.Counters(); res.Sent != 2048 || n.Blocks != 2048 || res.DataBlocks != 1 || res.Zero != 2047 {
		t.Errorf("sent %d (fake received %d) of 2048 blocks, data %d", res.Sent, n.Blocks, res.DataBlocks)
	}
	if s := f.Snapshot(res.SnapshotID); !s.Encrypted || s.KMSKeyARN == "" {
		t.Errorf("snapshot %+v not encrypted", s)
	}
	checkSnapshot(t, f, res.SnapshotID, raw, res)
}

// TestUploadIncremental: on top of a parent, only blocks whose hash differs are sent; a block
// that became zeros is written as zeros; the new hashes cover inherited blocks too.
func TestUploadIncremental(t *testing.T) {
	f, c := fake(t)
	ctx := context.Background()
	srcA, _ := disk(t, 8<<20, map[int64]byte{0: 1, 1: 2, 2: 3, 3: 4})
	a, err := Upload(ctx, c, srcA, fast(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, encrypted := range []bool{false, true} {
		srcB, rawB := disk(t, 8<<20, map[int64]byte{0: 1, 1: 5, 3: 4, 7: 6})
		before := f.Counters()
		b, err := Upload(ctx, c, srcB, fast(Options{Parent: a.SnapshotID, ParentHashes: a.Hashes, Encrypted: encrypted}))
		if err != nil {
			t.Fatal(err)
		}
		after := f.Counters()
		for _, i := range []int64{1, 2, 7} {
			if after.Written[i]-before.Written[i] != 1 {
				t.Errorf("encrypted %v: block %d written %d times, want once", encrypted, i, after.Written[i]-before.Written[i])
			}
		}
		if sent := after.Blocks - before.Blocks; sent != 3 || b.Sent != 3 || b.Unchanged != 2 || b.DataBlocks != 4 {
			t.Errorf("encrypted %v: sent %d (result %+v), want 3 sent (1, 2 as zeros, 7), 2 unchanged", encrypted, sent, b)
		}
		if got := f.Block(b.SnapshotID, 2); !bytes.Equal(got, make([]byte, BlockSize)) {
			t.Errorf("encrypted %v: block 2 became zeros but reads %d bytes of something else", encrypted, len(got))
		}
		checkSnapshot(t, f, b.SnapshotID, rawB, b)
		if s := f.Snapshot(b.SnapshotID); s.Parent != a.SnapshotID {
			t.Errorf("parent %q", s.Parent)
		}
	}
	if _, err := Upload(ctx, c, srcA, fast(Options{Parent: a.SnapshotID})); err == nil || !strings.Contains(err.Error(), "block hashes") {
		t.Errorf("a parent without hashes: %v", err)
	}
}

// TestUploadConcurrency: never more than Concurrency blocks in flight, and more than one.
func TestUploadConcurrency(t *testing.T) {
	f, c := fake(t)
	f.Delay = 20 * time.Millisecond
	blocks := map[int64]byte{}
	for i := range int64(24) {
		blocks[i] = byte(i + 1)
	}
	src, raw := disk(t, 12<<20, blocks)
	res, err := Upload(context.Background(), c, src, fast(Options{Concurrency: 4}))
	if err != nil {
		t.Fatal(err)
	}
	if n := f.Counters(); n.MaxInFlight > 4 || n.MaxInFlight < 2 || n.Blocks != 24 {
		t.Errorf("%d blocks, at most %d in flight; want 24, 2..4", n.Blocks, n.MaxInFlight)
	}
	checkSnapshot(t, f, res.SnapshotID, raw, res)
}

// TestUploadFaults: transient failures are retried per request until the upload completes;
// a hung request times out and only it is retried; errors that cannot succeed end the upload
// at once, naming the IAM action, and leave the snapshot tagged as uploading.
func TestUploadFaults(t *testing.T) {
	type check func(t *testing.T, n awsfake.EBSCounters)
	attempts := func(block int64, want int) check {
		return func(t *testing.T, n awsfake.EBSCounters) {
			if n.Attempts[block] != want {
				t.Errorf("block %d: %d attempts, want %d", block, n.Attempts[block], want)
			}
		}
	}
	ops := func(op string, want int) check {
		return func(t *testing.T, n awsfake.EBSCounters) {
			if n.Ops[op] != want {
				t.Errorf("%s: %d requests, want %d", op, n.Ops[op], want)
			}
		}
	}
	others := func(except int64) check { // every other block went through at its first attempt
		return func(t *testing.T, n awsfake.EBSCounters) {
			for i, a := range n.Attempts {
				if i != except && a != 1 {
					t.Errorf("block %d: %d attempts, want 1", i, a)
				}
			}
		}
	}
	cases := []struct {
		name    string
		fault   func(op string, block int64, attempt int) awsfake.Fault
		timeout time.Duration
		err     string // "" = success
		checks  []check
	}{
		{name: "throttled", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 3 && a <= 3 {
				return awsfake.Throttle
			}
			return awsfake.NoFault
		}, checks: []check{attempts(3, 4), others(3)}},
		{name: "5xx", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 0 && a <= 2 {
				return awsfake.ServerError
			}
			return awsfake.NoFault
		}, checks: []check{attempts(0, 3), others(0)}},
		{name: "dropped connection", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 5 && a == 1 {
				return awsfake.Drop
			}
			return awsfake.NoFault
		}, checks: []check{attempts(5, 2), others(5)}},
		{name: "hung request", timeout: 300 * time.Millisecond, fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 1 && a == 1 {
				return awsfake.Hang
			}
			return awsfake.NoFault
		}, checks: []check{attempts(1, 2), others(1)}},
		{name: "not found right after start", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && a <= 2 {
				return awsfake.NotFound
			}
			return awsfake.NoFault
		}, checks: []check{attempts(0, 3), attempts(3, 3)}},
		{name: "start and complete throttled, 5xx", fault: func(op string, b int64, a int) awsfake.Fault {
			switch {
			case op == "StartSnapshot" && a == 1:
				return awsfake.Throttle
			case op == "CompleteSnapshot" && a == 1:
				return awsfake.ServerError
			}
			return awsfake.NoFault
		}, checks: []check{ops("StartSnapshot", 2), ops("CompleteSnapshot", 2)}},
		{name: "start answer lost", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "StartSnapshot" && a == 1 {
				return awsfake.Lost
			}
			return awsfake.NoFault
		}, checks: []check{ops("StartSnapshot", 2), func(t *testing.T, n awsfake.EBSCounters) {
			if n.Ops["CompleteSnapshot"] != 1 {
				t.Errorf("CompleteSnapshot %d times", n.Ops["CompleteSnapshot"])
			}
		}}},
		{name: "block answer lost", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 1 && a == 1 {
				return awsfake.Lost
			}
			return awsfake.NoFault
		}, checks: []check{attempts(1, 2), others(1)}},
		{name: "access denied on a block", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 3 {
				return awsfake.AccessDenied
			}
			return awsfake.NoFault
		}, err: "PutSnapshotBlock of block 3 to snap-", checks: []check{attempts(3, 1), ops("CompleteSnapshot", 0)}},
		{name: "access denied on start", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "StartSnapshot" {
				return awsfake.AccessDenied
			}
			return awsfake.NoFault
		}, err: "StartSnapshot: access denied: the credentials need the IAM permission ebs:StartSnapshot", checks: []check{ops("StartSnapshot", 1), ops("PutSnapshotBlock", 0)}},
		{name: "access denied on complete", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "CompleteSnapshot" {
				return awsfake.AccessDenied
			}
			return awsfake.NoFault
		}, err: "ebs:CompleteSnapshot", checks: []check{ops("CompleteSnapshot", 1)}},
		{name: "throttled for good", fault: func(op string, b int64, a int) awsfake.Fault {
			if op == "PutSnapshotBlock" && b == 5 {
				return awsfake.Throttle
			}
			return awsfake.NoFault
		}, err: "PutSnapshotBlock of block 5 to snap-00000000000000001: gave up after 8 attempts", checks: []check{attempts(5, 8)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, c := fake(t)
			f.Fault = tc.fault
			src, raw := disk(t, 4<<20, map[int64]byte{0: 1, 1: 2, 3: 3, 5: 4})
			t0 := time.Now()
			res, err := Upload(context.Background(), c, src, fast(Options{RequestTimeout: tc.timeout, Tags: map[string]string{"imgctl:state": "uploading"}}))
			n := f.Counters()
			for _, ck := range tc.checks {
				ck(t, n)
			}
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				checkSnapshot(t, f, res.SnapshotID, raw, res)
				if ids := f.Snapshots(); len(ids) != 1 || f.Snapshot(ids[0]).ClientToken == "" {
					t.Errorf("snapshots started: %v, want one, with a client token", ids)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
			t.Logf("error: %v", err)
			if strings.Contains(tc.name, "denied") && !strings.Contains(err.Error(), "ebs:") {
				t.Errorf("error %q names no IAM action", err)
			}
			if d := time.Since(t0); d > 5*time.Second {
				t.Errorf("failing took %s", d)
			}
			if res.SnapshotID != "" {
				if s := f.Snapshot(res.SnapshotID); s.Status != "pending" || s.Tags["imgctl:state"] != "uploading" {
					t.Errorf("failed snapshot %+v, want pending and tagged uploading", s)
				}
			}
			var ae smithy.APIError
			if strings.Contains(tc.name, "denied") && (!errors.As(err, &ae) || ae.ErrorCode() != "AccessDeniedException") {
				t.Errorf("error %v does not wrap the AccessDeniedException", err)
			}
		})
	}
}

// countingSource counts the bytes read from a Source.
type countingSource struct {
	Source
	n atomic.Int64
}

func (c *countingSource) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Source.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// TestUploadReadsOnlyData: zero blocks are not read, not even when encryption sends them.
func TestUploadReadsOnlyData(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		_, c := fake(t)
		src, _ := disk(t, 4<<20, map[int64]byte{2: 1, 6: 2})
		cs := &countingSource{Source: src}
		if _, err := Upload(context.Background(), c, cs, fast(Options{Encrypted: encrypted})); err != nil {
			t.Fatal(err)
		}
		if n := cs.n.Load(); n != 2*BlockSize {
			t.Errorf("encrypted %v: read %d bytes of the disk, want the 2 data blocks' %d", encrypted, n, 2*BlockSize)
		}
	}
}

// fakeSource is a Source with given extents and no data (only candidates reads it).
type fakeSource struct {
	size int64
	ext  []sparse.Extent
}

func (f fakeSource) ReadAt(p []byte, off int64) (int, error) { clear(p); return len(p), nil }
func (f fakeSource) Size() int64                             { return f.size }
func (f fakeSource) Extents() []sparse.Extent                { return f.ext }

// TestCandidates: the blocks considered are those the extents touch (each once, even when
// extents share a block), the parent's data blocks, and with encryption every block the parent
// does not cover; in order.
func TestCandidates(t *testing.T) {
	const B = BlockSize
	ph := publication.NewHashes(B, 4)
	ph.Set(1, [32]byte{1})
	ph.Set(3, [32]byte{3})
	ext := []sparse.Extent{{Off: 0, Len: 4096}, {Off: B - 4096, Len: 8192}, {Off: 5*B + 100, Len: 2 * B}, {Off: 9 * B, Len: 4096}}
	cases := []struct {
		name      string
		parent    *publication.Hashes
		encrypted bool
		want      string
	}{
		{"plain", nil, false, "0d 1d 5d 6d 7d 9d"},
		{"parent", ph, false, "0d 1d 3 5d 6d 7d 9d"},
		{"encrypted parent", ph, true, "0d 1d 3 4 5d 6d 7d 8 9d 10 11"},
	}
	for _, tc := range cases {
		u := &uploader{src: fakeSource{6 << 20, ext}, blocks: 12, o: Options{ParentHashes: tc.parent, Encrypted: tc.encrypted}}
		var got []string
		u.candidates(func(c candidate) bool {
			s := strconv.FormatInt(c.i, 10)
			if c.data {
				s += "d"
			}
			got = append(got, s)
			return true
		})
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, g, tc.want)
		}
	}
	u := &uploader{src: fakeSource{6 << 20, nil}, blocks: 2048, o: Options{Encrypted: true}}
	n := 0
	u.candidates(func(candidate) bool { n++; return true })
	if n != 2048 {
		t.Errorf("encrypted without parent: %d candidates, want all 2048", n)
	}
}

// TestUploadReusesConnections: with many blocks in flight, connections are kept for reuse
// (the SDK's default keeps 10 idle per host, so 32 in flight opened a connection, with a TLS
// handshake on AWS, for most blocks).
func TestUploadReusesConnections(t *testing.T) {
	f := &awsfake.EBS{Delay: 20 * time.Millisecond}
	s := &awsfake.Server{}
	s.Use(f)
	var conns atomic.Int64
	hs := httptest.NewUnstartedServer(s)
	hs.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	hs.Start()
	defer hs.Close()
	defer f.Close()
	c := awsfake.ClientsForTest(t, region, hs.URL).EBS(region)
	blocks := map[int64]byte{}
	for i := range int64(160) {
		blocks[i] = byte(i%250 + 1)
	}
	src, _ := disk(t, 80<<20, blocks)
	if _, err := Upload(context.Background(), c, src, fast(Options{Concurrency: 32})); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections", conns.Load())
	if n := conns.Load(); n > 40 {
		t.Errorf("%d connections for 160 blocks at 32 in flight, want at most 40", n)
	}
}

// Package ebssnap uploads a disk to an EBS snapshot with the EBS direct APIs: 512 KiB blocks
// read straight from the disk's data extents (zero blocks are neither read nor sent), many in
// flight, each with its sha256, the aggregate checked on completion. Retries are per block,
// with backoff and jitter, on throttling, 5xx, dropped connections and per-request timeouts;
// errors that can never succeed (access denied, a bad parameter) end the upload at once,
// naming the operation and the IAM action it needs. With a parent snapshot and the block
// hashes recorded when it was uploaded, only the blocks that changed are sent.
package ebssnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ebs/types"

	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/layers/progress"
)

// BlockSize is the EBS direct APIs' block size.
const BlockSize = publication.BlockSize

// gib is the unit of EBS volume sizes.
const gib = 1 << 30

// Defaults of Options.
const (
	DefaultConcurrency    = 64
	DefaultRequestTimeout = 60 * time.Second
	DefaultMaxAttempts    = 8
	DefaultRetryDelay     = 250 * time.Millisecond
	maxRetryDelay         = 20 * time.Second
)

// Source is a disk to upload: its bytes, its size and the ranges that may hold data
// (everything else is zeros). *sparse.Reader is one.
type Source interface {
	io.ReaderAt
	Size() int64
	Extents() []sparse.Extent
}

// Options tune Upload.
type Options struct {
	// Concurrency is the number of blocks in flight (default 64); memory is about
	// Concurrency × 512 KiB.
	Concurrency int
	// Parent is the snapshot to start from (ParentSnapshotId); ParentHashes are its block
	// hashes as recorded when it was uploaded. Only blocks whose hash differs are written; a
	// block that became zeros is written as zeros.
	Parent       string
	ParentHashes *publication.Hashes
	// Encrypted snapshots read unwritten blocks as garbage, not zeros (coldsnap#395): zero
	// blocks are sent too, unless the parent already holds zeros there.
	Encrypted bool
	KMSKeyARN string
	Tags      map[string]string
	// Description of the snapshot.
	Description string
	// ClientToken makes StartSnapshot idempotent ("" = none).
	ClientToken string
	// RequestTimeout bounds each request (default 60 s): a hung block times out and is retried
	// alone.
	RequestTimeout time.Duration
	// MaxAttempts bounds the attempts of each request (default 8).
	MaxAttempts int
	// RetryDelay is the first retry's delay (default 250 ms); it doubles per attempt (at most
	// 20 s), with jitter.
	RetryDelay time.Duration
	Logger     *slog.Logger
}

// Result describes an upload.
type Result struct {
	SnapshotID string
	// Hashes has every non-zero block of the new snapshot (sent or inherited).
	Hashes     *publication.Hashes
	VolumeSize int64 // GiB
	// Blocks of the volume; DataBlocks of them hold data; Sent were written (data, or zeros
	// where needed); Unchanged data blocks were inherited from the parent; Zero blocks are
	// zeros.
	Blocks, DataBlocks, Sent, Unchanged, Zero int64
	BytesSent                                 int64
	Duration                                  time.Duration
}

// IAM actions each operation needs, named in errors.
var iamAction = map[string]string{
	"StartSnapshot":    "ebs:StartSnapshot",
	"PutSnapshotBlock": "ebs:PutSnapshotBlock",
	"CompleteSnapshot": "ebs:CompleteSnapshot",
}

// uploader is one Upload's state.
type uploader struct {
	c      *ebs.Client
	src    Source
	o      Options
	log    *slog.Logger
	id     string
	blocks int64
	step   *progress.Step
	zero   []byte

	mu        sync.Mutex
	hashes    *publication.Hashes
	sent      map[int64][sha256.Size]byte // checksums of the blocks written, for the aggregate
	res       Result
	startedAt time.Time // when StartSnapshot returned
}

// Upload writes src to a new snapshot and completes it. On failure the snapshot is left as it
// is (pending or error, with the tags given), for a garbage collector to find by its tags.
func Upload(ctx context.Context, c *ebs.Client, src Source, o Options) (Result, error) {
	t0 := time.Now()
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	size := src.Size()
	if size <= 0 {
		return Result{}, fmt.Errorf("ebssnap: disk of %d bytes: nothing to upload", size)
	}
	volume := (size + gib - 1) / gib
	blocks := volume * (gib / BlockSize)
	switch ph := o.ParentHashes; {
	case (o.Parent == "") != (ph == nil):
		return Result{}, errors.New("ebssnap: a parent snapshot needs its block hashes and block hashes need their parent snapshot (Options.Parent and Options.ParentHashes)")
	case ph != nil && ph.BlockSize != BlockSize:
		return Result{}, fmt.Errorf("ebssnap: parent %s has block hashes of %d-byte blocks, expected %d", o.Parent, ph.BlockSize, BlockSize)
	case ph != nil && ph.Blocks > blocks:
		return Result{}, fmt.Errorf("ebssnap: parent %s has %d blocks, more than the %d of a %d GiB volume (a snapshot cannot shrink)", o.Parent, ph.Blocks, blocks, volume)
	}
	region := c.Options().Region
	u := &uploader{
		c: c, src: src, o: o, log: o.Logger.With("region", region), blocks: blocks,
		zero:   make([]byte, BlockSize),
		hashes: publication.NewHashes(BlockSize, blocks),
		sent:   map[int64][sha256.Size]byte{},
	}
	u.res = Result{VolumeSize: volume, Blocks: blocks, Hashes: u.hashes}
	u.step = progress.Start(ctx, "upload snapshot "+region)
	err := u.run(ctx)
	u.step.Done(err)
	u.res.Duration = time.Since(t0)
	if err != nil {
		return u.res, err
	}
	u.log.Info("snapshot uploaded", "snapshot", u.id, "blocks", blocks, "data", u.res.DataBlocks, "sent", u.res.Sent, "unchanged", u.res.Unchanged, "bytes", u.res.BytesSent, "duration", u.res.Duration)
	return u.res, nil
}

func (u *uploader) run(ctx context.Context) error {
	cands := u.candidates()
	u.step.SetTotal(int64(len(cands)) * BlockSize)
	if err := u.start(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan int64)
	var wg sync.WaitGroup
	for range min(u.o.Concurrency, max(len(cands), 1)) {
		wg.Go(func() {
			buf := make([]byte, BlockSize)
			for i := range jobs {
				if err := u.block(ctx, i, buf); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for _, i := range cands {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	u.res.Zero = u.blocks - u.res.DataBlocks
	return u.complete(ctx)
}

// candidates lists, in order, the blocks that may need writing: those the extents touch,
// those the parent has data in, and with encryption every block the parent does not cover.
// Blocks not listed are zeros in the disk and in the new snapshot without being written.
func (u *uploader) candidates() []int64 {
	var out []int64
	if u.o.Encrypted && u.o.ParentHashes == nil {
		out = make([]int64, u.blocks)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	set := map[int64]struct{}{}
	for _, e := range u.src.Extents() {
		if e.Len <= 0 {
			continue
		}
		for i := e.Off / BlockSize; i <= (e.Off+e.Len-1)/BlockSize && i < u.blocks; i++ {
			set[i] = struct{}{}
		}
	}
	if ph := u.o.ParentHashes; ph != nil {
		for _, i := range ph.Indexes() {
			set[i] = struct{}{}
		}
		if u.o.Encrypted { // blocks past the parent's volume were never written
			for i := ph.Blocks; i < u.blocks; i++ {
				set[i] = struct{}{}
			}
		}
	}
	out = make([]int64, 0, len(set))
	for i := range set {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out
}

// block reads block i into buf, decides whether it must be written, and writes it.
func (u *uploader) block(ctx context.Context, i int64, buf []byte) error {
	data, err := u.read(i, buf)
	if err != nil {
		return err
	}
	isZero := data == nil
	var sum [sha256.Size]byte
	if isZero {
		sum = zeroSum
	} else {
		sum = sha256.Sum256(data)
	}
	send := true
	inherited := false
	switch ph := u.o.ParentHashes; {
	case ph != nil && i < ph.Blocks:
		psum, pdata := ph.Get(i)
		if isZero {
			send = pdata // zeros where the parent had data
		} else {
			send = !pdata || psum != sum
			inherited = !send
		}
	case isZero:
		send = u.o.Encrypted
	}
	if send {
		body := data
		if isZero {
			body = u.zero
		}
		if err := u.put(ctx, i, body, sum); err != nil {
			return err
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if !isZero {
		u.hashes.Set(i, sum)
		u.res.DataBlocks++
	}
	if send {
		u.sent[i] = sum
		u.res.Sent++
		u.res.BytesSent += BlockSize
	}
	if inherited {
		u.res.Unchanged++
	}
	var n int64
	if send {
		n = 1
	}
	u.step.Add(BlockSize, n)
	return nil
}

var zeroSum = sha256.Sum256(make([]byte, BlockSize))

// read returns block i's bytes in buf, or nil if they are all zeros; past the disk's end a
// block reads as zeros.
func (u *uploader) read(i int64, buf []byte) ([]byte, error) {
	off := i * BlockSize
	size := u.src.Size()
	if off >= size {
		return nil, nil
	}
	n := min(int64(BlockSize), size-off)
	m, err := u.src.ReadAt(buf[:n], off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(m) == n) {
		return nil, fmt.Errorf("ebssnap: reading block %d (bytes %d-%d) of the disk: %w", i, off, off+n, err)
	}
	clear(buf[n:])
	if bytes.Equal(buf, u.zero) {
		return nil, nil
	}
	return buf, nil
}

// noSDKRetries leaves retries to Upload, which knows which errors can succeed later and times
// each attempt out.
func noSDKRetries(o *ebs.Options) { o.Retryer = aws.NopRetryer{} }

func (u *uploader) start(ctx context.Context) error {
	in := &ebs.StartSnapshotInput{VolumeSize: aws.Int64(u.res.VolumeSize), Encrypted: aws.Bool(u.o.Encrypted)}
	if u.o.Parent != "" {
		in.ParentSnapshotId = aws.String(u.o.Parent)
	}
	if u.o.KMSKeyARN != "" {
		in.KmsKeyArn = aws.String(u.o.KMSKeyARN)
	}
	if u.o.Description != "" {
		in.Description = aws.String(u.o.Description)
	}
	if u.o.ClientToken != "" {
		in.ClientToken = aws.String(u.o.ClientToken)
	}
	keys := make([]string, 0, len(u.o.Tags))
	for k := range u.o.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		in.Tags = append(in.Tags, types.Tag{Key: aws.String(k), Value: aws.String(u.o.Tags[k])})
	}
	var out *ebs.StartSnapshotOutput
	err := u.call(ctx, "StartSnapshot", -1, func(ctx context.Context) error {
		var err error
		out, err = u.c.StartSnapshot(ctx, in, noSDKRetries)
		return err
	})
	if err != nil {
		return err
	}
	if out.SnapshotId == nil || *out.SnapshotId == "" {
		return errors.New("ebssnap: StartSnapshot returned no snapshot ID")
	}
	// EBS's blocks are 512 KiB; moto 5.2.1 answers BlockSize 512 (in KiB, it seems) and
	// takes 512 KiB blocks all the same, so the answer is logged, not enforced.
	if bs := aws.ToInt32(out.BlockSize); bs != BlockSize {
		u.log.Debug("StartSnapshot named another block size", "snapshot", *out.SnapshotId, "block_size", bs)
	}
	u.id = *out.SnapshotId
	u.res.SnapshotID = u.id
	u.mu.Lock()
	u.startedAt = time.Now()
	u.mu.Unlock()
	u.log.Info("snapshot started", "snapshot", u.id, "parent", u.o.Parent, "volume_gib", u.res.VolumeSize, "encrypted", u.o.Encrypted)
	return nil
}

func (u *uploader) put(ctx context.Context, i int64, data []byte, sum [sha256.Size]byte) error {
	b64 := base64.StdEncoding.EncodeToString(sum[:])
	return u.call(ctx, "PutSnapshotBlock", i, func(ctx context.Context) error {
		_, err := u.c.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
			SnapshotId:        aws.String(u.id),
			BlockIndex:        aws.Int32(int32(i)),
			BlockData:         bytes.NewReader(data),
			DataLength:        aws.Int32(int32(len(data))),
			Checksum:          aws.String(b64),
			ChecksumAlgorithm: types.ChecksumAlgorithmChecksumAlgorithmSha256,
		}, noSDKRetries)
		return err
	})
}

// Aggregate is the LINEAR aggregate of block checksums: the sha256 of the blocks' raw sha256
// digests concatenated in block index order, base64. sums maps block index to digest.
func Aggregate(sums map[int64][sha256.Size]byte) string {
	idx := make([]int64, 0, len(sums))
	for i := range sums {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	h := sha256.New()
	for _, i := range idx {
		s := sums[i]
		h.Write(s[:])
	}
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

func (u *uploader) complete(ctx context.Context) error {
	in := &ebs.CompleteSnapshotInput{
		SnapshotId:                aws.String(u.id),
		ChangedBlocksCount:        aws.Int32(int32(len(u.sent))),
		Checksum:                  aws.String(Aggregate(u.sent)),
		ChecksumAlgorithm:         types.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: types.ChecksumAggregationMethodChecksumAggregationLinear,
	}
	return u.call(ctx, "CompleteSnapshot", -1, func(ctx context.Context) error {
		out, err := u.c.CompleteSnapshot(ctx, in, noSDKRetries)
		if err == nil && out.Status == types.StatusError {
			return permanent{fmt.Errorf("the snapshot is in state %s", out.Status)}
		}
		return err
	})
}

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
	mathbits "math/bits"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
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
	// ClientToken makes StartSnapshot idempotent across calls of Upload ("" = one the SDK
	// makes up, which makes the retries of one call idempotent).
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
	http   aws.HTTPClient

	mu        sync.Mutex
	hashes    *publication.Hashes
	sent      []uint64 // bitmap of the blocks written, for the aggregate
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
		sent:   make([]uint64, (blocks+63)/64),
	}
	u.res = Result{VolumeSize: volume, Blocks: blocks, Hashes: u.hashes}
	u.http = pooled(c, o.Concurrency)
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
	var total int64
	for range u.candidates {
		total++
	}
	u.step.SetTotal(total * BlockSize)
	if err := u.start(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan candidate)
	var wg sync.WaitGroup
	for range min(int64(u.o.Concurrency), max(total, 1)) {
		wg.Go(func() {
			buf := make([]byte, BlockSize)
			for c := range jobs {
				if err := u.block(ctx, c, buf); err != nil {
					cancel(err)
				}
			}
		})
	}
	u.candidates(func(c candidate) bool {
		select {
		case jobs <- c:
			return true
		case <-ctx.Done():
			return false
		}
	})
	close(jobs)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	u.res.Zero = u.blocks - u.res.DataBlocks
	return u.complete(ctx)
}

// candidate is a block that may need writing; data says the extents touch it (else it is
// zeros in the disk and is not read).
type candidate struct {
	i    int64
	data bool
}

// candidates yields, in block order, each block that may need writing: those the extents
// touch, those the parent has data in, and with encryption every block the parent does not
// cover. Blocks not yielded are zeros in the disk and in the new snapshot without a write.
// It keeps nothing per block, so a sparse 64 TiB volume costs no memory.
func (u *uploader) candidates(yield func(candidate) bool) {
	ext := u.src.Extents()
	next := int64(0) // the first block the extents have not yielded yet
	dataBlock := func() (int64, bool) {
		for len(ext) > 0 {
			e := ext[0]
			first := max(e.Off/BlockSize, next)
			last := min((e.Off+e.Len-1)/BlockSize, u.blocks-1)
			if e.Len <= 0 || first > last {
				ext = ext[1:]
				continue
			}
			next = first + 1
			return first, true
		}
		return 0, false
	}
	var parent []int64
	from := int64(0) // encrypted: every block from here on
	if ph := u.o.ParentHashes; ph != nil {
		parent, from = ph.Indexes(), ph.Blocks
	}
	extraBlock := func() (int64, bool) {
		if len(parent) > 0 {
			i := parent[0]
			parent = parent[1:]
			return i, true
		}
		if u.o.Encrypted && from < u.blocks {
			from++
			return from - 1, true
		}
		return 0, false
	}
	d, dok := dataBlock()
	x, xok := extraBlock()
	for dok || xok {
		if dok && (!xok || d <= x) {
			if xok && x == d {
				x, xok = extraBlock()
			}
			if !yield(candidate{d, true}) {
				return
			}
			d, dok = dataBlock()
			continue
		}
		if !yield(candidate{x, false}) {
			return
		}
		x, xok = extraBlock()
	}
}

// block reads block i into buf, decides whether it must be written, and writes it.
func (u *uploader) block(ctx context.Context, c candidate, buf []byte) error {
	i := c.i
	var data []byte
	if c.data {
		var err error
		if data, err = u.read(i, buf); err != nil {
			return err
		}
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
		u.sent[i/64] |= 1 << (i % 64)
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

// pooled returns the client's HTTP client keeping n idle connections per host: the SDK's
// default keeps 10, so with more blocks in flight most requests opened a new connection (a
// TLS handshake each on AWS). Other HTTP clients are left as they are.
func pooled(c *ebs.Client, n int) aws.HTTPClient {
	hc := c.Options().HTTPClient
	bc, ok := hc.(*awshttp.BuildableClient)
	if !ok {
		return hc
	}
	return bc.WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = max(t.MaxIdleConnsPerHost, n)
		if t.MaxIdleConns != 0 {
			t.MaxIdleConns = max(t.MaxIdleConns, n)
		}
	})
}

// opts are the options of every request of an upload.
func (u *uploader) opts(o *ebs.Options) {
	noSDKRetries(o)
	if u.http != nil {
		o.HTTPClient = u.http
	}
}

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
	// in is shared by every attempt: the SDK fills in a ClientToken (an idempotency token) on
	// the first, so a retry after a lost answer gets the same snapshot, not a second one.
	var out *ebs.StartSnapshotOutput
	err := u.call(ctx, "StartSnapshot", -1, func(ctx context.Context) error {
		var err error
		out, err = u.c.StartSnapshot(ctx, in, u.opts)
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
		}, u.opts)
		return err
	})
}

// Aggregate is the LINEAR aggregate checksum of blocks: the sha256 of their raw sha256
// digests concatenated in block index order, base64. sums are the digests in that order.
func Aggregate(sums func(yield func([sha256.Size]byte) bool)) string {
	h := sha256.New()
	for s := range sums {
		h.Write(s[:])
	}
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// aggregate is the LINEAR aggregate of the blocks written: a written block not in the hashes
// was zeros.
func (u *uploader) aggregate() string {
	return Aggregate(func(yield func([sha256.Size]byte) bool) {
		for w, bits := range u.sent {
			for ; bits != 0; bits &= bits - 1 {
				i := int64(w)*64 + int64(mathbits.TrailingZeros64(bits))
				sum, ok := u.hashes.Get(i)
				if !ok {
					sum = zeroSum
				}
				if !yield(sum) {
					return
				}
			}
		}
	})
}

func (u *uploader) complete(ctx context.Context) error {
	in := &ebs.CompleteSnapshotInput{
		SnapshotId:                aws.String(u.id),
		ChangedBlocksCount:        aws.Int32(int32(u.res.Sent)),
		Checksum:                  aws.String(u.aggregate()),
		ChecksumAlgorithm:         types.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: types.ChecksumAggregationMethodChecksumAggregationLinear,
	}
	return u.call(ctx, "CompleteSnapshot", -1, func(ctx context.Context) error {
		out, err := u.c.CompleteSnapshot(ctx, in, u.opts)
		if err == nil && out.Status == types.StatusError {
			return permanent{fmt.Errorf("the snapshot is in state %s", out.Status)}
		}
		return err
	})
}

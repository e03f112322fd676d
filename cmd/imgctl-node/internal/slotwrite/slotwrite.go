// Package slotwrite writes a new root into the inactive A/B slot, verifying every byte before it
// is written and downloading only what the node does not already have.
//
// The root blob is a squashfs followed by its dm-verity hash area. The hash area is fetched
// first (HTTP Range) and checked against the image's verity root hash: its level-0 hashes are
// then trusted hashes of every 4 KiB data block. The slot's current blocks are hashed the same
// way (a block already right is kept: that is how an interrupted write resumes), the running
// slot's blocks are known from its own verified tree (or hashed), and update.PlanBlocks says
// which blocks to keep, copy from the running slot or fetch. Every copied or fetched block is
// hashed and compared with its level-0 hash before it is written. Last, the hash area is
// written, the slot synced, and the sha256 of the slot's first Root.Size bytes must equal the
// root blob's digest: only then does Write return success.
package slotwrite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blobs"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/update"
)

// BlockSize is the size of a data block.
const BlockSize = update.BlockSize

// DefaultRangeBlocks bounds one Range request (and the memory a fetch uses): 8 MiB.
const DefaultRangeBlocks = 2048

// Blobs reads byte ranges of blobs (blobs.Client).
type Blobs interface {
	// Range returns the bytes [off, off+n) of blob; its reader yields exactly n bytes or an
	// error. Errors that retrying cannot fix are *blobs.Permanent.
	Range(ctx context.Context, blob update.Blob, off, n int64) (io.ReadCloser, error)
	// Retry runs attempt a bounded number of times with a backoff between tries.
	Retry(ctx context.Context, what string, attempt func(ctx context.Context) error) error
}

// Slot is the inactive slot's partition (an *os.File).
type Slot interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Active is the running slot: its blocks are reused where the new root has the same ones.
type Active struct {
	Device io.ReaderAt // its partition, read only
	// Size is how many bytes of it to consider: its partition size, or less.
	Size int64
	// VerityRootHash and VerityOffset are its root's dm-verity parameters (from the running
	// kernel command line). With them, its level-0 hashes are read from its own hash area
	// (checked against the root hash); without, its first Size bytes are hashed.
	VerityRootHash string
	VerityOffset   int64
}

// Options of Write.
type Options struct {
	Image    update.Image // the new image (update.ParseManifest)
	Slot     Slot
	SlotSize int64  // bytes of the inactive slot's partition
	SlotName string // for messages: "ROOT-B (/dev/vda4)"
	Active   *Active
	Blobs    Blobs
	// RangeBlocks bounds one Range request in blocks (DefaultRangeBlocks).
	RangeBlocks int
	// Progress, when set, is called as data blocks are done (written, or kept): done of total
	// bytes of the root's data (the hash area follows).
	Progress func(done, total int64)
	Logger   *slog.Logger
}

// Result counts what Write did, in bytes.
type Result struct {
	Plan    update.Plan
	Fetched int64 // downloaded: data blocks and the hash area
	Reused  int64 // copied from the running slot
	Kept    int64 // already right in the inactive slot
}

// ErrTooLarge is wrapped by the error for a root that does not fit the slot.
var ErrTooLarge = errors.New("root larger than the slot")

// Write writes o.Image's root into o.Slot. On success the slot holds exactly the root blob's
// bytes (checked by digest). On error the slot may be partly written — a later Write resumes —
// and must not be made bootable.
func Write(ctx context.Context, o Options) (Result, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RangeBlocks <= 0 {
		o.RangeBlocks = DefaultRangeBlocks
	}
	im := o.Image
	if im.Root.Size > o.SlotSize {
		return Result{}, fmt.Errorf("%w: image %s's root is %d bytes, slot %s holds %d", ErrTooLarge, im.Version, im.Root.Size, o.SlotName, o.SlotSize)
	}
	w := &writer{o: o, blocks: im.DataBlocks()}
	var res Result

	area, want, err := w.fetchHashArea(ctx)
	if err != nil {
		return res, err
	}
	res.Fetched += int64(len(area))
	target, err := w.hashBlocks(ctx, o.Slot, w.blocks, "slot "+o.SlotName)
	if err != nil {
		return res, err
	}
	active, err := w.activeLeaves(ctx)
	if err != nil {
		return res, err
	}
	p := update.PlanBlocks(want, target, active)
	res.Plan = p
	o.Logger.Info("slot plan", "slot", o.SlotName, "blocks", p.Blocks, "keep", p.Keep, "copy", p.Copy, "fetch", p.Fetch)
	w.want = want
	for _, op := range p.Ops {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		switch op.Kind {
		case update.Keep:
			res.Kept += p.Bytes(op.Count)
			w.advance(p.Bytes(op.Count))
		case update.Copy:
			fetched, err := w.copyRun(ctx, op)
			res.Reused += p.Bytes(op.Count) - fetched
			res.Fetched += fetched
			if err != nil {
				return res, err
			}
		case update.Fetch:
			if err := w.fetchRun(ctx, op.Dst, op.Count); err != nil {
				return res, err
			}
			res.Fetched += p.Bytes(op.Count)
		}
	}
	if _, err := o.Slot.WriteAt(area, im.VerityOffset); err != nil {
		return res, fmt.Errorf("slot %s: writing the hash area: %w", o.SlotName, err)
	}
	if err := o.Slot.Sync(); err != nil {
		return res, fmt.Errorf("slot %s: sync: %w", o.SlotName, err)
	}
	if err := w.checkDigest(ctx); err != nil {
		return res, err
	}
	return res, nil
}

type writer struct {
	o      Options
	blocks uint64     // data blocks of the new root
	want   [][32]byte // their level-0 hashes
	done   int64      // bytes of data written or kept
}

func (w *writer) advance(n int64) {
	w.done += n
	if w.o.Progress != nil {
		w.o.Progress(w.done, int64(w.blocks)*BlockSize)
	}
}

// fetchHashArea downloads the root's hash area and checks it against the image's root hash
// (a corrupt download is fetched again); it returns the area and its level-0 hashes.
func (w *writer) fetchHashArea(ctx context.Context) (area []byte, leaves [][32]byte, err error) {
	im := w.o.Image
	rootHash, err := verity.ParseRootHash(im.VerityRootHash)
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: verity root hash: %w", im.Digest, err)
	}
	n := im.Root.Size - im.VerityOffset
	if want := verity.HashAreaSize(w.blocks); n != want {
		return nil, nil, fmt.Errorf("image %s: root blob %s is %d bytes with its hash area at %d: the area would be %d bytes, %d blocks need %d",
			im.Digest, im.Root.Digest, im.Root.Size, im.VerityOffset, n, w.blocks, want)
	}
	err = w.o.Blobs.Retry(ctx, fmt.Sprintf("fetching the hash area of root blob %s", im.Root.Digest), func(ctx context.Context) error {
		rc, err := w.o.Blobs.Range(ctx, im.Root, im.VerityOffset, n)
		if err != nil {
			return err
		}
		defer rc.Close()
		buf := make([]byte, n)
		if _, err := io.ReadFull(rc, buf); err != nil {
			return err
		}
		l, err := verity.ParseHashArea(buf, rootHash, w.blocks)
		if err != nil {
			return fmt.Errorf("root blob %s: the hash area does not match the image's verity root hash: %w", im.Root.Digest, err)
		}
		area, leaves = buf, l
		return nil
	})
	return area, leaves, err
}

// hashBlocks returns the level-0 hashes of the first n blocks of dev; bytes past its end read
// as zeros.
func (w *writer) hashBlocks(ctx context.Context, dev io.ReaderAt, n uint64, name string) ([][32]byte, error) {
	out := make([][32]byte, 0, n)
	buf := make([]byte, 256*BlockSize)
	for i := uint64(0); i < n; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		k := min(n-i, uint64(len(buf)/BlockSize))
		b := buf[:k*BlockSize]
		got, err := dev.ReadAt(b, int64(i)*BlockSize)
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s: reading block %d: %w", name, i, err)
		}
		clear(b[got:])
		for j := range k {
			out = append(out, verity.HashBlock(b[j*BlockSize:(j+1)*BlockSize]))
		}
		i += k
	}
	return out, nil
}

// activeLeaves are the running slot's level-0 hashes: from its verified hash area, or hashed.
func (w *writer) activeLeaves(ctx context.Context) ([][32]byte, error) {
	a := w.o.Active
	if a == nil || a.Device == nil {
		return nil, nil
	}
	if a.VerityRootHash == "" {
		return w.hashBlocks(ctx, a.Device, uint64(a.Size/BlockSize), "the running slot")
	}
	rootHash, err := verity.ParseRootHash(a.VerityRootHash)
	if err != nil {
		return nil, fmt.Errorf("the running slot's verity root hash: %w", err)
	}
	if a.VerityOffset <= 0 || a.VerityOffset%BlockSize != 0 {
		return nil, fmt.Errorf("the running slot's verity offset %d: want a positive multiple of %d", a.VerityOffset, BlockSize)
	}
	blocks := uint64(a.VerityOffset / BlockSize)
	size := verity.HashAreaSize(blocks)
	if a.VerityOffset+size > a.Size {
		return nil, fmt.Errorf("the running slot's hash area (%d bytes at %d) ends past its %d bytes", size, a.VerityOffset, a.Size)
	}
	area := make([]byte, size)
	if _, err := a.Device.ReadAt(area, a.VerityOffset); err != nil {
		return nil, fmt.Errorf("the running slot: reading its hash area: %w", err)
	}
	leaves, err := verity.ParseHashArea(area, rootHash, blocks)
	if err != nil {
		// Not fatal: its blocks are only a source of copies, each checked again before use.
		w.o.Logger.Warn("the running slot's hash area does not verify: fetching instead of copying", "err", err)
		return nil, nil
	}
	return leaves, nil
}

// copyRun copies op's blocks from the running slot, checking each against its level-0 hash. A
// block that does not match (the running slot's partition changed under it) is fetched
// instead; fetched counts those bytes.
func (w *writer) copyRun(ctx context.Context, op update.Op) (fetched int64, err error) {
	step := uint64(w.o.RangeBlocks)
	buf := make([]byte, min(op.Count, step)*BlockSize)
	for done := uint64(0); done < op.Count; {
		k := min(op.Count-done, step)
		b := buf[:k*BlockSize]
		if _, err := w.o.Active.Device.ReadAt(b, int64(op.Src+done)*BlockSize); err != nil && err != io.EOF {
			return fetched, fmt.Errorf("the running slot: reading block %d: %w", op.Src+done, err)
		}
		dst := op.Dst + done
		start := uint64(0) // first block of b not yet written
		for j := range k {
			if verity.HashBlock(b[j*BlockSize:(j+1)*BlockSize]) == w.want[dst+j] {
				continue
			}
			if err := w.writeBlocks(dst+start, b[start*BlockSize:j*BlockSize]); err != nil {
				return fetched, err
			}
			w.o.Logger.Warn("a block of the running slot does not match its hash: fetching it", "block", op.Src+done+j)
			if err := w.fetchRun(ctx, dst+j, 1); err != nil {
				return fetched, err
			}
			fetched += BlockSize
			start = j + 1
		}
		if err := w.writeBlocks(dst+start, b[start*BlockSize:]); err != nil {
			return fetched, err
		}
		done += k
	}
	return fetched, nil
}

// fetchRun downloads count blocks from block dst on, in Range requests of at most RangeBlocks,
// checks each block against its level-0 hash and writes it. A failed or corrupt response is
// retried from the first block not yet written.
func (w *writer) fetchRun(ctx context.Context, dst, count uint64) error {
	root := w.o.Image.Root
	step := uint64(w.o.RangeBlocks)
	buf := make([]byte, min(count, step)*BlockSize)
	for done := uint64(0); done < count; {
		k := min(count-done, step)
		first := dst + done
		next := first // the first block of this chunk not yet written
		err := w.o.Blobs.Retry(ctx, fmt.Sprintf("fetching blocks %d-%d of %s", first, first+k-1, root.Digest), func(ctx context.Context) error {
			n := first + k - next
			rc, err := w.o.Blobs.Range(ctx, root, int64(next)*BlockSize, int64(n)*BlockSize)
			if err != nil {
				return err
			}
			defer rc.Close()
			b := buf[:n*BlockSize]
			got, rerr := io.ReadFull(rc, b)
			// Write what arrived and verifies, then report what went wrong.
			var j uint64
			for ; j < uint64(got)/BlockSize; j++ {
				if verity.HashBlock(b[j*BlockSize:(j+1)*BlockSize]) != w.want[next+j] {
					rerr = fmt.Errorf("block %d of root blob %s does not match its verity hash: the download is corrupt", next+j, root.Digest)
					break
				}
			}
			if err := w.writeBlocks(next, b[:j*BlockSize]); err != nil {
				return err
			}
			next += j
			return rerr
		})
		if err != nil {
			return err
		}
		done += k
	}
	return nil
}

// writeBlocks writes verified blocks at block dst.
func (w *writer) writeBlocks(dst uint64, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if _, err := w.o.Slot.WriteAt(b, int64(dst)*BlockSize); err != nil {
		// A write error is the disk's: retrying the download does not help.
		return &blobs.Permanent{Err: fmt.Errorf("slot %s: writing block %d: %w", w.o.SlotName, dst, err)}
	}
	w.advance(int64(len(b)))
	return nil
}

// checkDigest reads the slot's first Root.Size bytes back and compares their sha256 with the
// root blob's digest.
func (w *writer) checkDigest(ctx context.Context) error {
	root := w.o.Image.Root
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < root.Size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), root.Size-off)]
		n, err := w.o.Slot.ReadAt(b, off)
		h.Write(b[:n])
		off += int64(n)
		if err != nil && !(err == io.EOF && off == root.Size) {
			return fmt.Errorf("slot %s: reading it back at %d: %w", w.o.SlotName, off, err)
		}
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != root.Digest {
		return fmt.Errorf("slot %s: its first %d bytes hash to %s after writing, want the root blob's %s", w.o.SlotName, root.Size, got, root.Digest)
	}
	return nil
}

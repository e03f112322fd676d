package imagediff

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/update"
)

// Blocks compares the roots' 4 KiB blocks as a disk node's update does
// (update.PlanBlocks(want = B, target = nothing, active = A)).
type Blocks struct {
	// Blocks is B's number of data blocks; Copy of them are in A (anywhere), Fetch are not.
	Blocks uint64 `json:"blocks"`
	Copy   uint64 `json:"copy"`
	Fetch  uint64 `json:"fetch"`
	// VerityA and VerityB: the image's leaves came from its dm-verity hash area (checked
	// against its root hash); otherwise from hashing its root's blocks.
	VerityA bool `json:"verityA"`
	VerityB bool `json:"verityB"`
}

// Update is what a disk node running A fetches to install B.
type Update struct {
	// FetchBytes = BlockBytes + HashAreaBytes + KernelBytes + InitrdBytes.
	FetchBytes    int64 `json:"fetchBytes"`
	BlockBytes    int64 `json:"blockBytes"`    // the data blocks not in A
	HashAreaBytes int64 `json:"hashAreaBytes"` // B's dm-verity hash area (0 for a root without one)
	KernelBytes   int64 `json:"kernelBytes"`   // B's vmlinuz, if it differs from A's
	InitrdBytes   int64 `json:"initrdBytes"`   // B's initrd.img, if it differs from A's
	// RootBytes is the size of B's root blob (squashfs + hash area); Percent = 100 ×
	// FetchBytes / RootBytes.
	RootBytes int64   `json:"rootBytes"`
	Percent   float64 `json:"percent"`
}

// verityParams are a root blob's dm-verity annotations.
type verityParams struct {
	ok       bool
	rootHash [32]byte
	offset   int64 // the data size: where the hash area starts
}

func verityOf(a manifest.Artifact) (verityParams, error) {
	rh, hasRH := a.Annotations[manifest.AnnotationRootVerityRootHash]
	off, hasOff := a.Annotations[manifest.AnnotationRootVerityOffset]
	if !hasRH && !hasOff {
		return verityParams{}, nil
	}
	if !hasRH || !hasOff {
		return verityParams{}, fmt.Errorf("annotations %s and %s go together", manifest.AnnotationRootVerityRootHash, manifest.AnnotationRootVerityOffset)
	}
	h, err := verity.ParseRootHash(rh)
	if err != nil {
		return verityParams{}, fmt.Errorf("annotation %s: %w", manifest.AnnotationRootVerityRootHash, err)
	}
	n, err := strconv.ParseInt(off, 10, 64)
	if err != nil || n <= 0 || n%verity.BlockSize != 0 || n >= a.Size {
		return verityParams{}, fmt.Errorf("annotation %s %q: expected a positive multiple of %d below the blob's size %d", manifest.AnnotationRootVerityOffset, off, verity.BlockSize, a.Size)
	}
	return verityParams{ok: true, rootHash: h, offset: n}, nil
}

// leaves are the level-0 hashes of r's data blocks: from its hash area, verified against its
// root hash, when it has one; else hashed from its blocks (the last one padded with zeros,
// as a slot holds it).
func leaves(ctx context.Context, r root) ([][32]byte, error) {
	f, err := os.Open(r.path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", r.name, err)
	}
	defer func() { _ = f.Close() }()
	if r.verity.ok {
		area := make([]byte, r.blob.Size-r.verity.offset)
		if _, err := f.ReadAt(area, r.verity.offset); err != nil {
			return nil, fmt.Errorf("reading the hash area of %s: %w", r.name, err)
		}
		l, err := verity.ParseHashArea(area, r.verity.rootHash, uint64(r.verity.offset/verity.BlockSize))
		if err != nil {
			return nil, fmt.Errorf("hash area of %s: %w", r.name, err)
		}
		return l, nil
	}
	n := (r.blob.Size + verity.BlockSize - 1) / verity.BlockSize
	out := make([][32]byte, 0, n)
	br := bufio.NewReaderSize(f, 1<<20)
	block := make([]byte, verity.BlockSize)
	for range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		clear(block)
		if _, err := io.ReadFull(br, block); err != nil && err != io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("reading %s: %w", r.name, err)
		}
		out = append(out, verity.HashBlock(block))
	}
	return out, nil
}

// diffBlocks plans B's root over A's as a node with an empty inactive slot would.
func diffBlocks(ctx context.Context, a, b root) (*Blocks, error) {
	la, err := leaves(ctx, a)
	if err != nil {
		return nil, err
	}
	lb, err := leaves(ctx, b)
	if err != nil {
		return nil, err
	}
	p := update.PlanBlocks(lb, nil, la)
	return &Blocks{Blocks: p.Blocks, Copy: p.Copy + p.Keep, Fetch: p.Fetch, VerityA: a.verity.ok, VerityB: b.verity.ok}, nil
}

// updateCost is what an update from A to B fetches: B's blocks not in A, B's hash area, and
// B's kernel and initrd where they differ from A's.
func updateCost(bl *Blocks, b root, boot []Artifact) *Update {
	u := &Update{BlockBytes: int64(bl.Fetch) * verity.BlockSize, RootBytes: b.blob.Size}
	if b.verity.ok {
		u.HashAreaBytes = b.blob.Size - b.verity.offset
	}
	for _, a := range boot {
		if a.Change == Same || a.New == nil {
			continue
		}
		switch a.Name {
		case manifest.KernelArtifact:
			u.KernelBytes = a.New.Size
		case manifest.InitrdArtifact:
			u.InitrdBytes = a.New.Size
		}
	}
	u.FetchBytes = u.BlockBytes + u.HashAreaBytes + u.KernelBytes + u.InitrdBytes
	if u.RootBytes > 0 {
		u.Percent = 100 * float64(u.FetchBytes) / float64(u.RootBytes)
	}
	return u
}

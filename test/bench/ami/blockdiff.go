package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/imgctl/imgctl/images/publication"
)

func init() { commands["blockdiff"] = blockdiffCmd }

// blockdiffResult compares two files by 512 KiB blocks at the same offsets, as a snapshot
// holds them.
type blockdiffResult struct {
	Blocks  int64 `json:"blocks"`  // of the longer file
	Changed int64 `json:"changed"` // blocks that differ (a block only one file has counts)
	First   int64 `json:"first"`   // index of the first changed block, -1 if none
}

// blockdiffCmd: blockdiff FILE1 FILE2.
func blockdiffCmd(ctx context.Context, args []string) (any, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("want 2 files, got %q", args)
	}
	a, err := os.Open(args[0])
	if err != nil {
		return nil, err
	}
	defer a.Close()
	b, err := os.Open(args[1])
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return blockdiff(ctx, a, b, publication.BlockSize)
}

func blockdiff(ctx context.Context, a, b io.Reader, blockSize int) (blockdiffResult, error) {
	out := blockdiffResult{First: -1}
	ba, bb := make([]byte, blockSize), make([]byte, blockSize)
	for i := int64(0); ; i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		na, err := readBlock(a, ba)
		if err != nil {
			return out, err
		}
		nb, err := readBlock(b, bb)
		if err != nil {
			return out, err
		}
		if na == 0 && nb == 0 {
			return out, nil
		}
		out.Blocks++
		if !bytes.Equal(ba[:na], bb[:nb]) {
			out.Changed++
			if out.First < 0 {
				out.First = i
			}
		}
	}
}

// readBlock fills buf unless the reader ends first; it returns the bytes read.
func readBlock(r io.Reader, buf []byte) (int, error) {
	n, err := io.ReadFull(r, buf)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return n, nil
	}
	return n, err
}

package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"

	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
)

// TestMotoBlockListMended: the SDK refuses moto's ListSnapshotBlocks reply (block indexes as
// strings); through motoBlockList it reads it, and AWS's form (numbers) still passes.
func TestMotoBlockListMended(t *testing.T) {
	replies := map[string]string{
		"/snapshots/snap-moto/blocks": `{"Blocks": [{"BlockIndex": "0", "BlockToken": "t0"}, {"BlockIndex": "6143", "BlockToken": "t1"}], "VolumeSize": 3, "BlockSize": 512}`,
		"/snapshots/snap-aws/blocks":  `{"Blocks": [{"BlockIndex": 7, "BlockToken": "t7"}], "VolumeSize": 3, "BlockSize": 524288, "NextToken": "n"}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8") // as moto says
		io.WriteString(w, replies[r.URL.Path])
	}))
	defer srv.Close()
	ctx := context.Background()
	plain := awsfake.ClientsForTest(t, "us-east-1", srv.URL).EBS("us-east-1")
	if _, err := plain.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String("snap-moto")}); err == nil || !strings.Contains(err.Error(), "expected number") {
		t.Fatalf("the SDK read moto's reply (%v): the mender is not needed any more", err)
	}
	mended := readBackEBS(plain)
	l, err := mended.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String("snap-moto")})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Blocks) != 2 || aws.ToInt32(l.Blocks[1].BlockIndex) != 6143 || aws.ToString(l.Blocks[1].BlockToken) != "t1" || aws.ToInt64(l.VolumeSize) != 3 {
		t.Fatalf("mended reply: %+v", l)
	}
	l, err = mended.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String("snap-aws")})
	if err != nil || len(l.Blocks) != 1 || aws.ToInt32(l.Blocks[0].BlockIndex) != 7 || aws.ToString(l.NextToken) != "n" {
		t.Fatalf("AWS's reply through the mender: %+v, %v", l, err)
	}
	if _, err := numericBlockIndexes([]byte(`{"Blocks": [{"BlockIndex": "x"}]}`)); err == nil {
		t.Error("a block index that is no number was accepted")
	}
}

// putTestSnapshot writes blocks (index → fill byte) as a new snapshot on moto with the EBS
// direct APIs, tagged with its parent like imgctl's incremental uploads.
func putTestSnapshot(ctx context.Context, t *testing.T, c *ebs.Client, parent string, blocks map[int32]byte) string {
	t.Helper()
	in := &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1)}
	if parent != "" {
		in.ParentSnapshotId = aws.String(parent)
		in.Tags = []ebstypes.Tag{{Key: aws.String(publication.TagParent), Value: aws.String(parent)}}
	}
	s, err := c.StartSnapshot(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	for i, fill := range blocks {
		b := bytes.Repeat([]byte{fill}, publication.BlockSize)
		sum := sha256.Sum256(b)
		if _, err := c.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{SnapshotId: s.SnapshotId, BlockIndex: aws.Int32(i),
			BlockData: bytes.NewReader(b), DataLength: aws.Int32(publication.BlockSize),
			Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: s.SnapshotId, ChangedBlocksCount: aws.Int32(int32(len(blocks)))}); err != nil {
		t.Fatal(err)
	}
	return aws.ToString(s.SnapshotId)
}

// TestReassembleSnapshotChain: a disk written as a full snapshot and an incremental one on top
// (a changed block, a new block, a block zeroed) reads back as the child's disk by following
// the parent tag, though moto's child holds only its own blocks.
func TestReassembleSnapshotChain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := awsfake.MotoForTest(t, "us-east-1").Clients
	e := c.EBS("us-east-1")
	base := putTestSnapshot(ctx, t, e, "", map[int32]byte{0: 1, 5: 2, 2047: 3})
	child := putTestSnapshot(ctx, t, e, base, map[int32]byte{5: 4, 9: 5, 2047: 0})
	chain, err := snapshotChain(ctx, c.EC2("us-east-1"), child)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[0] != child || chain[1] != base {
		t.Fatalf("chain %v, want [%s %s]", chain, child, base)
	}
	dir := t.TempDir()
	got := filepath.Join(dir, "disk")
	read, err := reassemble(ctx, readBackEBS(e), chain, got)
	if err != nil {
		t.Fatal(err)
	}
	if len(read[0].Blocks) != 3 || len(read[1].Blocks) != 3 {
		t.Errorf("blocks read: child %d, base %d; want 3 and 3", len(read[0].Blocks), len(read[1].Blocks))
	}
	want := filepath.Join(dir, "want")
	f, err := os.Create(want)
	if err != nil {
		t.Fatal(err)
	}
	for i, fill := range map[int64]byte{0: 1, 5: 4, 9: 5} {
		f.WriteAt(bytes.Repeat([]byte{fill}, publication.BlockSize), i*publication.BlockSize)
	}
	f.Close()
	if err := diskDiff(got, want); err != nil {
		t.Fatal(err)
	}
	// The oracle sees a difference: the base alone is another disk.
	if _, err := reassemble(ctx, readBackEBS(e), chain[1:], got); err != nil {
		t.Fatal(err)
	}
	if err := diskDiff(got, want); err == nil || !strings.Contains(err.Error(), "block 5)") {
		t.Errorf("the base snapshot alone: %v, want a difference in block 5", err)
	}
}

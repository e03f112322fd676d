package ebssnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
)

// motoBlocks lists a snapshot's written blocks with a signed ListSnapshotBlocks request
// decoded by hand: moto 5.2.1 answers BlockIndex as a JSON string ("3", its dict key), which
// the Go SDK's deserializer refuses, and BlockSize 512. Its GetSnapshotBlock ignores the
// block token (any non-empty token reads the block), so the token only has to be present.
func motoBlocks(t *testing.T, ctx context.Context, c *awsclient.Clients, url, id string) map[int64]string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/snapshots/"+id+"/blocks", nil)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := c.Config.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	empty := sha256.Sum256(nil)
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(empty[:]), "ebs", region, time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ListSnapshotBlocks: %s: %s", resp.Status, body)
	}
	var out struct {
		Blocks []struct {
			BlockIndex json.Number
			BlockToken string
		}
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	if err := d.Decode(&out); err != nil {
		t.Fatalf("ListSnapshotBlocks reply %s: %v", body, err)
	}
	blocks := map[int64]string{}
	for _, b := range out.Blocks {
		i, err := strconv.ParseInt(b.BlockIndex.String(), 10, 64)
		if err != nil {
			t.Fatalf("block index %q: %v", b.BlockIndex, err)
		}
		blocks[i] = b.BlockToken
	}
	return blocks
}

// TestUploadMoto: a small sparse disk uploaded to moto_server reads back block by block with
// GetSnapshotBlock; EC2 sees the snapshot completed with its tags.
func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

func TestUploadMoto(t *testing.T) {
	ctx := context.Background()
	a := awsfake.MotoForTest(t, region)
	m, c := a.Moto, a.Clients
	src, raw := disk(t, 6<<20, map[int64]byte{0: 1, 2: 2, 11: 3})
	tags := map[string]string{"imgctl:image": "sha256:feed", "imgctl:state": "uploading"}
	res, err := Upload(ctx, c.EBS(region), src, Options{Tags: tags, Description: "moto test"})
	if err != nil {
		t.Fatalf("%v\n%s", err, m.Log())
	}
	if res.Sent != 3 || res.DataBlocks != 3 {
		t.Errorf("result %+v", res)
	}
	if err := WaitCompleted(ctx, c.EC2(region), res.SnapshotID, time.Minute, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ds, err := c.EC2(region).DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{Filters: []ec2types.Filter{{Name: aws.String("tag:imgctl:image"), Values: []string{"sha256:feed"}}}})
	if err != nil || len(ds.Snapshots) != 1 || aws.ToString(ds.Snapshots[0].SnapshotId) != res.SnapshotID {
		t.Fatalf("finding the snapshot by its tag: %v %+v", err, ds)
	}
	blocks := motoBlocks(t, ctx, c, m.URL, res.SnapshotID)
	if len(blocks) != 3 {
		t.Fatalf("moto holds blocks %v, want 0, 2, 11", blocks)
	}
	got := make([]byte, len(raw))
	for i, tok := range blocks {
		out, err := c.EBS(region).GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(res.SnapshotID), BlockIndex: aws.Int32(int32(i)), BlockToken: aws.String(tok)})
		if err != nil {
			t.Fatalf("GetSnapshotBlock %d: %v", i, err)
		}
		b, err := io.ReadAll(out.BlockData)
		out.BlockData.Close()
		if err != nil || len(b) != BlockSize {
			t.Fatalf("block %d: %d bytes, %v", i, len(b), err)
		}
		// moto keeps the checksum it was sent without checking it: compare it here.
		sum := sha256.Sum256(b)
		if got := aws.ToString(out.Checksum); got != base64.StdEncoding.EncodeToString(sum[:]) {
			t.Errorf("block %d: checksum sent %q is not the data's", i, got)
		}
		if h, ok := res.Hashes.Get(i); !ok || h != sum {
			t.Errorf("block %d read back differs from the hash recorded", i)
		}
		copy(got[i*BlockSize:], b)
	}
	if !bytes.Equal(got, raw) {
		t.Error("the disk reassembled from moto's blocks differs")
	}
}

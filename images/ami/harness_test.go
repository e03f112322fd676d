package ami

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
)

const (
	home = "us-east-1"
	away = "eu-west-1"
)

// env is one test's AWS (awsfake.MotoForTest): moto_server behind the EC2 recorder, and
// clients pointed at it.
type env struct {
	moto    *awsfake.Moto
	srv     *awsfake.Server
	fake    *awsfake.EC2
	clients *awsclient.Clients
	url     string
}

func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

// newEnv gives the test the package's moto_server, reset, with a fresh recorder in front.
func newEnv(t *testing.T) *env {
	t.Helper()
	a := awsfake.MotoForTest(t, home)
	return &env{moto: a.Moto, srv: a.Front, fake: a.EC2, clients: a.Clients, url: a.URL}
}

// snapshot writes blocks (index → content, 512 KiB each) to a new completed snapshot in
// region, tagged with tags, through the EBS direct APIs.
func (e *env) snapshot(t *testing.T, region string, tags map[string]string, blocks map[int32]byte) string {
	t.Helper()
	ctx := context.Background()
	c := e.clients.EBS(region)
	var ts []ebstypes.Tag
	for k, v := range tags {
		ts = append(ts, ebstypes.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	s, err := c.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1), Tags: ts})
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks {
		data := bytes.Repeat([]byte{b}, 512<<10)
		sum := sha256.Sum256(data)
		_, err := c.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
			SnapshotId: s.SnapshotId, BlockIndex: aws.Int32(i), BlockData: bytes.NewReader(data),
			DataLength: aws.Int32(int32(len(data))), Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])),
			ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: s.SnapshotId, ChangedBlocksCount: aws.Int32(int32(len(blocks)))}); err != nil {
		t.Fatal(err)
	}
	return aws.ToString(s.SnapshotId)
}

// images returns the AMIs in region tagged key=value.
func (e *env) images(t *testing.T, region, key, value string) []types.Image {
	t.Helper()
	out, err := e.clients.EC2(region).DescribeImages(context.Background(), &ec2.DescribeImagesInput{
		Owners:  []string{"self"},
		Filters: []types.Filter{{Name: aws.String("tag:" + key), Values: []string{value}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Images
}

// snapshots returns the snapshots in region tagged key=value.
func (e *env) snapshots(t *testing.T, region, key, value string) []types.Snapshot {
	t.Helper()
	out, err := e.clients.EC2(region).DescribeSnapshots(context.Background(), &ec2.DescribeSnapshotsInput{
		OwnerIds: []string{"self"},
		Filters:  []types.Filter{{Name: aws.String("tag:" + key), Values: []string{value}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Snapshots
}

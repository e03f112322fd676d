package ami

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/layers/testenv"
)

const (
	home = "us-east-1"
	away = "eu-west-1"
)

// env is one test's AWS: a moto_server behind the EC2 recorder, and clients pointed at it.
type env struct {
	moto    *awsfake.Moto
	srv     *awsfake.Server
	fake    *awsfake.EC2
	clients *awsclient.Clients
	url     string
}

var (
	motoOnce sync.Once
	motoSrv  *awsfake.Moto
	motoErr  error
	motoMu   sync.Mutex // tests share one moto_server, one at a time
)

func TestMain(m *testing.M) {
	code := m.Run()
	if motoSrv != nil {
		motoSrv.Close()
	}
	os.Exit(code)
}

// newEnv resets the package's moto_server (started on first use) and puts a fresh recorder in
// front of it.
func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.Integration(t, "publishes AMIs to moto_server")
	testenv.Tools(t, "moto_server")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
	} {
		t.Setenv(k, v)
	}
	motoOnce.Do(func() { motoSrv, motoErr = awsfake.StartMoto(context.Background(), 2*time.Minute, nil) })
	if motoErr != nil {
		t.Fatal(motoErr)
	}
	motoMu.Lock()
	t.Cleanup(motoMu.Unlock)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := motoSrv.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	up, err := url.Parse(motoSrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	fake := &awsfake.EC2{Upstream: up}
	srv := &awsfake.Server{Upstream: up}
	srv.Use(fake)
	base, err := srv.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cfg, err := awsclient.Load(ctx, awsclient.Options{Region: home, EndpointURL: base, NoIMDS: true})
	if err != nil {
		t.Fatal(err)
	}
	return &env{moto: motoSrv, srv: srv, fake: fake, clients: awsclient.NewClients(cfg), url: base}
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

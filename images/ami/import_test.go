package ami

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestPublishImportSnapshot: --method import-snapshot goes through S3 and ImportSnapshot
// instead of the EBS direct APIs, and the AMI is registered from the imported snapshot.
func TestPublishImportSnapshot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	imp := &awsfake.ImportSnapshot{Upstream: e.moto.URL}
	e.srv.Use(imp)
	if _, err := e.clients.S3(home).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("disks")}); err != nil {
		t.Fatal(err)
	}
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	res, err := Publish(ctx, st, img, e.clients, fast(Options{Region: home, Method: publication.MethodImportSnapshot, Bucket: "disks"}))
	if err != nil {
		t.Fatalf("%v\n%s", err, e.moto.Log())
	}
	reqs := imp.Requests()
	if len(reqs) != 1 || reqs[0].Bucket != "disks" || reqs[0].Key != "imgctl/"+img.Digest().Encoded()+".raw" || reqs[0].Format != "RAW" {
		t.Errorf("ImportSnapshot requests %+v", reqs)
	}
	if n := len(e.fake.Calls("StartSnapshot")) + len(e.fake.Calls("PutSnapshotBlock")); n != 0 {
		t.Errorf("%d EBS direct calls with --method import-snapshot", n)
	}
	rec := res.Record
	if res.Reused || res.Upload != nil || rec.Method != publication.MethodImportSnapshot || rec.State != publication.StateAvailable ||
		rec.Snapshot.ID == "" || rec.Snapshot.BytesSent != diskSize || rec.Snapshot.VolumeSize != 1 {
		t.Errorf("result: reused %v, upload %v, record %+v", res.Reused, res.Upload, rec)
	}
	reg := e.fake.Calls("RegisterImage")
	if len(reg) != 1 || reg[0].Params.Get("BlockDeviceMapping.1.Ebs.SnapshotId") != rec.Snapshot.ID {
		t.Errorf("RegisterImage calls %+v", reg)
	}
	res, err = Publish(ctx, st, img, e.clients, fast(Options{Region: home, Method: publication.MethodImportSnapshot, Bucket: "disks"}))
	if err != nil || !res.Reused || len(imp.Requests()) != 1 {
		t.Errorf("rerun: %v, reused %v, %d imports", err, res.Reused, len(imp.Requests()))
	}
}

package awsfake

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// What moto answers (its templates, shortened): the state follows the ID in each item.
const (
	imagesReply = `<?xml version="1.0" encoding="utf-8"?>
<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><imagesSet>` +
		`<item><blockDeviceMapping><item><ebs><snapshotId>snap-1</snapshotId></ebs><deviceName>/dev/sda1</deviceName></item></blockDeviceMapping><name>a</name><imageId>ami-1</imageId><imageState>available</imageState></item>` +
		`<item><name>b</name><imageId>ami-2</imageId><imageState>available</imageState></item>` +
		`</imagesSet><requestId>r</requestId></DescribeImagesResponse>`
	snapshotsReply = `<?xml version="1.0" encoding="utf-8"?>
<DescribeSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><snapshotSet>` +
		`<item><tagSet/><snapshotId>snap-1</snapshotId><status>completed</status><volumeSize>1</volumeSize></item>` +
		`<item><tagSet/><snapshotId>snap-2</snapshotId><status>completed</status><volumeSize>1</volumeSize></item>` +
		`</snapshotSet><requestId>r</requestId></DescribeSnapshotsResponse>`
)

func TestEC2Overrides(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		q, _ := url.ParseQuery(string(b))
		w.Header().Set("Content-Type", "text/xml")
		switch q.Get("Action") {
		case "DescribeImages":
			io.WriteString(w, imagesReply)
		case "DescribeSnapshots":
			io.WriteString(w, snapshotsReply)
		default:
			io.WriteString(w, `<RegisterImageResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><imageId>ami-9</imageId></RegisterImageResponse>`)
		}
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	fake := &EC2{Upstream: u}
	s := &Server{Upstream: u}
	s.Use(fake)
	base, err := s.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	client := func(region string) *ec2.Client {
		return ec2.New(ec2.Options{Region: region, BaseEndpoint: aws.String(base),
			Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", "")})
	}
	east, west := client("us-east-1"), client("eu-west-1")
	images := func(c *ec2.Client) map[string]types.Image {
		out, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]types.Image{}
		for _, im := range out.Images {
			m[*im.ImageId] = im
		}
		return m
	}
	if got := images(west)["ami-2"].State; got != types.ImageStateAvailable {
		t.Errorf("without overrides: %s", got)
	}
	fake.SetImageState("eu-west-1", "", "pending", "")
	fake.SetImageState("eu-west-1", "ami-2", "failed", "copy <failed>")
	w := images(west)
	if w["ami-1"].State != types.ImageStatePending || w["ami-2"].State != types.ImageStateFailed {
		t.Errorf("eu-west-1 states: %s %s", w["ami-1"].State, w["ami-2"].State)
	}
	if r := w["ami-2"].StateReason; r == nil || aws.ToString(r.Message) != "copy <failed>" {
		t.Errorf("state reason: %+v", r)
	}
	if got := images(east)["ami-2"].State; got != types.ImageStateAvailable {
		t.Errorf("us-east-1 changed: %s", got)
	}

	fake.SetSnapshotState("us-east-1", "snap-2", "error", "the disk broke")
	out, err := east.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Snapshots) != 2 || out.Snapshots[0].State != types.SnapshotStateCompleted ||
		out.Snapshots[1].State != types.SnapshotStateError || aws.ToString(out.Snapshots[1].StateMessage) != "the disk broke" {
		t.Errorf("snapshots: %+v", out.Snapshots)
	}

	_, err = east.RegisterImage(ctx, &ec2.RegisterImageInput{Name: aws.String("n"), ImdsSupport: types.ImdsSupportValuesV20,
		BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"), Ebs: &types.EbsBlockDevice{VolumeType: types.VolumeTypeGp3}}}})
	if err != nil {
		t.Fatal(err)
	}
	reg := fake.Calls("RegisterImage")
	if len(reg) != 1 || reg[0].Region != "us-east-1" || reg[0].Service != "ec2" ||
		reg[0].Params.Get("ImdsSupport") != "v2.0" || reg[0].Params.Get("BlockDeviceMapping.1.Ebs.VolumeType") != "gp3" {
		t.Errorf("recorded %+v", reg)
	}
	if n := len(fake.Calls("")); n != 5 {
		t.Errorf("%d calls recorded, want 5", n)
	}

	fake.Fail("ModifyImageAttribute", "eu-west-1", http.StatusForbidden, "UnauthorizedOperation", "You are not authorized to perform this operation.")
	_, err = west.ModifyImageAttribute(ctx, &ec2.ModifyImageAttributeInput{ImageId: aws.String("ami-1")})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "UnauthorizedOperation" || ae.ErrorMessage() != "You are not authorized to perform this operation." {
		t.Errorf("injected fault: %v", err)
	}
	if _, err := east.ModifyImageAttribute(ctx, &ec2.ModifyImageAttributeInput{ImageId: aws.String("ami-1")}); err != nil {
		t.Errorf("fault in another region: %v", err)
	}
}

func TestEBSAction(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"POST", "/snapshots", "StartSnapshot"},
		{"PUT", "/snapshots/snap-1/blocks/7", "PutSnapshotBlock"},
		{"POST", "/snapshots/completion/snap-1", "CompleteSnapshot"},
		{"GET", "/snapshots/snap-1/blocks/7", "GetSnapshotBlock"},
		{"GET", "/snapshots/snap-1/blocks", "ListSnapshotBlocks"},
		{"GET", "/snapshots/snap-1/changedblocks", "ListChangedBlocks"},
		{"DELETE", "/x", "DELETE /x"},
	} {
		if got := ebsAction(c.method, c.path); got != c.want {
			t.Errorf("%s %s: %s, want %s", c.method, c.path, got, c.want)
		}
	}
}

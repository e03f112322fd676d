package ami

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/publication"
)

const account = "210987654321"

// TestStepsAgainstMoto walks the AWS steps of a publication one by one: find by tag,
// register (checked against the recorder: moto drops mappings and ImdsSupport), copy, share,
// SSM parameter.
func TestStepsAgainstMoto(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	img := digest.FromString("image one")
	tags := map[string]string{publication.TagImage: img.String(), publication.TagVersion: "v1"}

	if id, snap, st, err := Find(ctx, e.clients, home, img); err != nil || id != "" || snap != "" || st != "" {
		t.Fatalf("Find before anything: %q %q %q %v\n%s", id, snap, st, err, e.moto.Log())
	}
	snap := e.snapshot(t, home, map[string]string{publication.TagImage: img.String(), publication.TagState: publication.TagStateComplete}, map[int32]byte{0: 1})
	other := digest.FromString("other")
	left := e.snapshot(t, home, map[string]string{publication.TagImage: other.String(), publication.TagState: publication.TagStateUploading}, map[int32]byte{0: 2})
	if id, got, st, err := Find(ctx, e.clients, home, other); err != nil || id != "" || got != left || st != publication.StateUploading {
		t.Errorf("Find with an unfinished upload: %q %q %q %v, want %s uploading", id, got, st, err, left)
	}
	if id, got, st, err := Find(ctx, e.clients, home, img); err != nil || id != "" || got != snap || st != publication.StateSnapshot {
		t.Fatalf("Find with a snapshot: %q %q %q %v, want snapshot %s", id, got, st, err, snap)
	}

	id, err := register(ctx, e.clients.EC2(home), home, registration{Name: "imgctl-v1", Description: "d", SnapshotID: snap, VolumeGiB: 2, Tags: tags})
	if err != nil {
		t.Fatal(err)
	}
	calls := e.fake.Calls("RegisterImage")
	if len(calls) != 1 {
		t.Fatalf("%d RegisterImage calls", len(calls))
	}
	want := map[string]string{
		"Name": "imgctl-v1", "Architecture": "x86_64", "BootMode": "uefi", "EnaSupport": "true", "ImdsSupport": "v2.0",
		"VirtualizationType": "hvm", "RootDeviceName": "/dev/xvda",
		"BlockDeviceMapping.1.DeviceName": "/dev/xvda", "BlockDeviceMapping.1.Ebs.SnapshotId": snap,
		"BlockDeviceMapping.1.Ebs.VolumeType": "gp3", "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
		"BlockDeviceMapping.1.Ebs.VolumeSize": "2", "TagSpecification.1.ResourceType": "image",
	}
	for k, v := range want {
		if got := calls[0].Params.Get(k); got != v {
			t.Errorf("RegisterImage %s = %q, want %q", k, got, v)
		}
	}
	if got, gotSnap, st, err := Find(ctx, e.clients, home, img); err != nil || got != id || gotSnap != snap || st != publication.StateAvailable {
		t.Errorf("Find after register: %q %q %q %v, want %s %s available", got, gotSnap, st, err, id, snap)
	}
	if _, err := waitImage(ctx, e.clients.EC2(home), home, id, time.Second, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	cp, err := copyImage(ctx, e.clients.EC2(away), away, home, id, "imgctl-v1", "d", false, tags)
	if err != nil {
		t.Fatal(err)
	}
	cc := e.fake.Calls("CopyImage")
	if len(cc) != 1 || cc[0].Region != away || cc[0].Params.Get("SourceRegion") != home || cc[0].Params.Get("SourceImageId") != id ||
		!strings.HasPrefix(cc[0].Params.Get("ClientToken"), "imgctl-") {
		t.Errorf("CopyImage calls: %+v", cc)
	}
	cpSnap, err := waitImage(ctx, e.clients.EC2(away), away, cp, time.Second, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if got, gotSnap, st, err := Find(ctx, e.clients, away, img); err != nil || got != cp || gotSnap != cpSnap || st != publication.StateAvailable {
		t.Errorf("Find in %s: %q %q %q %v, want %s %s available", away, got, gotSnap, st, err, cp, cpSnap)
	}

	if err := share(ctx, e.clients.EC2(home), home, id, snap, []string{account}, true); err != nil {
		t.Fatal(err)
	}
	perm, err := e.clients.EC2(home).DescribeImageAttribute(ctx, &ec2.DescribeImageAttributeInput{ImageId: aws.String(id), Attribute: types.ImageAttributeNameLaunchPermission})
	if err != nil {
		t.Fatal(err)
	}
	var who []string
	for _, p := range perm.LaunchPermissions {
		who = append(who, aws.ToString(p.UserId)+string(p.Group))
	}
	if slices.Sort(who); !slices.Equal(who, []string{account, "all"}) {
		t.Errorf("launch permissions %v", who)
	}
	sp, err := e.clients.EC2(home).DescribeSnapshotAttribute(ctx, &ec2.DescribeSnapshotAttributeInput{SnapshotId: aws.String(snap), Attribute: types.SnapshotAttributeNameCreateVolumePermission})
	if err != nil {
		t.Fatal(err)
	}
	if len(sp.CreateVolumePermissions) != 1 || aws.ToString(sp.CreateVolumePermissions[0].UserId) != account {
		t.Errorf("createVolumePermission %+v", sp.CreateVolumePermissions)
	}

	if err := putParameter(ctx, e.clients.SSM(away), away, "/imgctl/nodes/v1/image_id", cp, "d"); err != nil {
		t.Fatal(err)
	}
	p, err := e.clients.SSM(away).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/imgctl/nodes/v1/image_id")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(p.Parameter.Value) != cp || aws.ToString(p.Parameter.DataType) != "aws:ec2:image" {
		t.Errorf("parameter %+v", p.Parameter)
	}
}

// TestWaitImageBounded: a copy stuck pending ends the wait after the bound with an error
// naming the region and AMI; a failed AMI's error carries AWS's reason.
func TestWaitImageBounded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	snap := e.snapshot(t, home, nil, map[int32]byte{0: 1})
	id, err := register(ctx, e.clients.EC2(home), home, registration{Name: "imgctl-v1", SnapshotID: snap, Tags: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	e.fake.SetImageState(home, id, "pending", "")
	start := time.Now()
	_, err = waitImage(ctx, e.clients.EC2(home), home, id, 300*time.Millisecond, 20*time.Millisecond)
	took := time.Since(start)
	if err == nil || !errors.Is(err, errWait) {
		t.Fatalf("stuck pending: %v", err)
	}
	if want := "AMI " + id + " in us-east-1 is still pending after 300ms (give it longer with --wait)"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if took > 2*time.Second {
		t.Errorf("wait took %s with a 300ms bound", took)
	}
	if n := len(e.fake.Calls("DescribeImages")); n < 3 {
		t.Errorf("polled %d times", n)
	}

	e.fake.SetImageState(home, id, "failed", "Snapshot is not valid")
	_, err = waitImage(ctx, e.clients.EC2(home), home, id, time.Minute, 20*time.Millisecond)
	if err == nil || errors.Is(err, errWait) || err.Error() != "AMI "+id+" in us-east-1 failed: Snapshot is not valid" {
		t.Errorf("failed AMI: %v", err)
	}
}

package ami

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

const diskSize = 4 << 20 // 8 blocks of 512 KiB

// diskImage stores an image named "node" at version whose disk.simg holds data in blocks 0,
// 1 and 5 (of 8), block 5 depending on change.
func diskImage(t *testing.T, st *store.Store, version string, epoch int64, change byte) store.Image {
	t.Helper()
	raw := make([]byte, diskSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 1 << 20 {
		raw[i] = byte(rng.Uint32())
	}
	copy(raw[5<<19:], bytes.Repeat([]byte{change, 0xa5}, 1000))
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var simg bytes.Buffer
	if _, err := sparse.Write(context.Background(), &simg, f, diskSize); err != nil {
		t.Fatal(err)
	}
	files := append(storetest.DefaultFiles(version), storetest.File{Name: DiskArtifact, MediaType: manifest.DiskSparseMediaType, Content: simg.Bytes()})
	return storetest.PutImage(t, st, storetest.Config(version, epoch), files)
}

func fast(o Options) Options {
	o.Wait, o.Poll = 5*time.Second, 20*time.Millisecond
	return o
}

// TestPublish publishes an image to us-east-1 with a copy to eu-west-1, shared with an
// account and public, with an SSM version parameter; then publishes it again, which finds
// everything by tag and changes nothing.
func TestPublish(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	o := fast(Options{Region: home, CopyTo: []string{away}, Share: []string{account}, Public: true, SSMPrefix: "/imgctl/test", Tool: "imgctl test"})
	res, err := Publish(ctx, st, img, e.clients, o)
	if err != nil {
		t.Fatalf("%v\n%s", err, e.moto.Log())
	}
	rec := res.Record
	if res.Reused || res.Upload == nil || res.Upload.Sent == 0 {
		t.Errorf("first publication: reused %v, upload %+v", res.Reused, res.Upload)
	}
	if rec.State != publication.StateAvailable || len(rec.Regions) != 2 || rec.Image != img.Digest() || rec.Snapshot.ID == "" {
		t.Fatalf("record %+v", rec)
	}
	ids := map[string]string{}
	for _, g := range rec.Regions {
		if g.State != publication.StateAvailable || g.ImageID == "" || g.Parameter != "/imgctl/test/v1/image_id" {
			t.Errorf("region %+v", g)
		}
		ids[g.Region] = g.ImageID
	}

	reg := e.fake.Calls("RegisterImage")
	if len(reg) != 1 {
		t.Fatalf("%d RegisterImage calls", len(reg))
	}
	for k, v := range map[string]string{
		"Name": "imgctl-v1", "BootMode": "uefi", "EnaSupport": "true", "ImdsSupport": "v2.0", "Architecture": "x86_64",
		"RootDeviceName": "/dev/xvda", "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
		"BlockDeviceMapping.1.Ebs.SnapshotId": rec.Snapshot.ID, "BlockDeviceMapping.1.Ebs.VolumeType": "gp3",
		"BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true", "BlockDeviceMapping.1.Ebs.VolumeSize": "1",
	} {
		if got := reg[0].Params.Get(k); got != v {
			t.Errorf("RegisterImage %s = %q, want %q", k, got, v)
		}
	}
	tagged := map[string]string{}
	for i := 1; reg[0].Params.Has(tagKey(i)); i++ {
		tagged[reg[0].Params.Get(tagKey(i))] = reg[0].Params.Get(strings.TrimSuffix(tagKey(i), "Key") + "Value")
	}
	for k, v := range map[string]string{publication.TagImage: img.Digest().String(), publication.TagName: "node",
		publication.TagVersion: "v1", publication.TagKubernetes: "1.21.13", publication.TagTool: "imgctl test"} {
		if tagged[k] != v {
			t.Errorf("RegisterImage tag %s = %q, want %q (all: %v)", k, tagged[k], v, tagged)
		}
	}
	if cp := e.fake.Calls("CopyImage"); len(cp) != 1 || cp[0].Region != away || cp[0].Params.Get("SourceImageId") != ids[home] {
		t.Errorf("CopyImage calls %+v", cp)
	}
	for _, r := range []string{home, away} {
		if got := e.images(t, r, publication.TagImage, img.Digest().String()); len(got) != 1 || aws.ToString(got[0].ImageId) != ids[r] {
			t.Errorf("%s: AMIs tagged with the image: %d", r, len(got))
		}
		perm, err := e.clients.EC2(r).DescribeImageAttribute(ctx, &ec2.DescribeImageAttributeInput{ImageId: aws.String(ids[r]), Attribute: types.ImageAttributeNameLaunchPermission})
		if err != nil {
			t.Fatal(err)
		}
		var who []string
		for _, p := range perm.LaunchPermissions {
			who = append(who, aws.ToString(p.UserId)+string(p.Group))
		}
		if slices.Sort(who); !slices.Equal(who, []string{account, "all"}) {
			t.Errorf("%s: launch permissions %v", r, who)
		}
		p, err := e.clients.SSM(r).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/imgctl/test/v1/image_id")})
		if err != nil || aws.ToString(p.Parameter.Value) != ids[r] {
			t.Errorf("%s: parameter %v %v, want %s", r, p, err, ids[r])
		}
	}
	sp, err := e.clients.EC2(home).DescribeSnapshotAttribute(ctx, &ec2.DescribeSnapshotAttributeInput{SnapshotId: aws.String(rec.Snapshot.ID), Attribute: types.SnapshotAttributeNameCreateVolumePermission})
	if err != nil || len(sp.CreateVolumePermissions) != 1 || aws.ToString(sp.CreateVolumePermissions[0].UserId) != account {
		t.Errorf("snapshot createVolumePermission %+v %v", sp, err)
	}
	snaps := e.snapshots(t, home, publication.TagImage, img.Digest().String())
	if len(snaps) != 1 || aws.ToString(snaps[0].SnapshotId) != rec.Snapshot.ID || tagValue(snaps[0].Tags, publication.TagState) != publication.TagStateComplete {
		t.Errorf("snapshots tagged with the image: %+v", snaps)
	}
	latest, err := publication.Latest(ctx, st, img.Digest(), away)
	if err != nil || latest == nil || latest.State != publication.StateAvailable {
		t.Fatalf("stored record: %+v %v", latest, err)
	}
	records, err := publication.List(ctx, st, img.Digest())
	if err != nil {
		t.Fatal(err)
	}
	var homeStates, states []publication.State
	for _, r := range slices.Backward(records) {
		g, _ := r.RegionState(home)
		homeStates = append(homeStates, g.State)
		states = append(states, r.State)
	}
	if !slices.Equal(slices.Compact(homeStates), []publication.State{publication.StateUploading, publication.StateSnapshot, publication.StateRegistered, publication.StateAvailable}) {
		t.Errorf("%s in the records stored, oldest first: %v", home, homeStates)
	}
	if i := slices.Index(states, publication.StateAvailable); i != len(states)-1 {
		t.Errorf("records stored, oldest first: %v (available before every region was)", states)
	}
	// Again: found by tag, nothing uploaded, registered or copied, no new record.
	calls := len(e.fake.Calls(""))
	res2, err := Publish(ctx, st, img, e.clients, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Reused || res2.Upload != nil || res2.Record.State != publication.StateAvailable {
		t.Errorf("rerun: reused %v, upload %+v, state %s", res2.Reused, res2.Upload, res2.Record.State)
	}
	for a, n := range map[string]int{"StartSnapshot": 1, "RegisterImage": 1, "CopyImage": 1, "PutSnapshotBlock": int(res.Upload.Sent)} {
		if got := len(e.fake.Calls(a)); got != n {
			t.Errorf("after the rerun: %d %s calls, want %d (the first run's)", got, a, n)
		}
	}
	if g, _ := res2.Record.RegionState(away); g.ImageID != ids[away] {
		t.Errorf("rerun's %s AMI %s, want %s", away, g.ImageID, ids[away])
	}
	if after, err := publication.List(ctx, st, img.Digest()); err != nil || len(after) != len(records) {
		t.Errorf("rerun stored %d records (had %d): %v", len(after), len(records), err)
	}
	t.Logf("%d AWS calls on the rerun", len(e.fake.Calls(""))-calls)

	// Once more without --copy-to: the copy stays in the record, which does not change.
	o.CopyTo = nil
	res3, err := Publish(ctx, st, img, e.clients, o)
	if err != nil {
		t.Fatal(err)
	}
	if g, ok := res3.Record.RegionState(away); !ok || g.ImageID != ids[away] || g.State != publication.StateAvailable || res3.Record.State != publication.StateAvailable {
		t.Errorf("rerun without --copy-to: %+v", res3.Record)
	}
	if after, err := publication.List(ctx, st, img.Digest()); err != nil || len(after) != len(records) {
		t.Errorf("rerun without --copy-to stored %d records (had %d): %v", len(after), len(records), err)
	}
}

func tagKey(i int) string {
	return "TagSpecification.1.Tag." + string(rune('0'+i)) + ".Key"
}

// TestPublishCopyStuck: a copy stuck pending. An interrupted run leaves a record saying how
// far it got; a run whose wait runs out fails naming the region and AMI and does not call
// the publication available; once the copy is available a rerun finishes without copying
// again.
func TestPublishCopyStuck(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	e.fake.SetImageState(away, "", "pending", "")
	o := fast(Options{Region: home, CopyTo: []string{away}})

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err := Publish(ctx, st, img, e.clients, o)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("interrupted: %v", err)
	}
	rec, err := publication.Latest(context.Background(), st, img.Digest(), away)
	if err != nil || rec == nil {
		t.Fatalf("no record after the interruption: %v", err)
	}
	h, _ := rec.RegionState(home)
	a, _ := rec.RegionState(away)
	if rec.State != publication.StateRegistered || h.State != publication.StateAvailable || a.State != publication.StateRegistered || a.ImageID == "" {
		t.Errorf("record after the interruption: %s, %+v, %+v", rec.State, h, a)
	}

	o.Wait = 300 * time.Millisecond
	res, err := Publish(context.Background(), st, img, e.clients, o)
	want := "AMI " + a.ImageID + " in eu-west-1 is still pending after 300ms (give it longer with --wait)"
	if err == nil || err.Error() != want {
		t.Fatalf("stuck copy: %v\nwant %s", err, want)
	}
	if !res.Reused || res.Record.State != publication.StateRegistered {
		t.Errorf("stuck copy: reused %v, state %s", res.Reused, res.Record.State)
	}
	if rec, _ := publication.Latest(context.Background(), st, img.Digest(), away); rec == nil || rec.State != publication.StateRegistered || !strings.Contains(rec.Message, "still pending") {
		t.Errorf("stored record after the bounded wait: %+v", rec)
	}

	e.fake.SetImageState(away, "", "available", "")
	res, err = Publish(context.Background(), st, img, e.clients, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Record.State != publication.StateAvailable || res.Record.Message != "" {
		t.Errorf("after the copy became available: %s %q", res.Record.State, res.Record.Message)
	}
	for a, n := range map[string]int{"StartSnapshot": 1, "RegisterImage": 1, "CopyImage": 1} {
		if got := len(e.fake.Calls(a)); got != n {
			t.Errorf("%d %s calls over three runs, want %d", got, a, n)
		}
	}
}

// TestPublishSnapshotError: a snapshot AWS fails: its message, a failed record, no AMI.
func TestPublishSnapshotError(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	e.fake.SetSnapshotState(home, "", "error", "the snapshot could not be created")
	res, err := Publish(context.Background(), st, img, e.clients, fast(Options{Region: home, CopyTo: []string{away}}))
	if err == nil {
		t.Fatal("published from a snapshot in error")
	}
	want := "snapshot " + res.Record.Snapshot.ID + " in us-east-1 failed on AWS's side: the snapshot could not be created (nothing registered)"
	if res.Record.Snapshot.ID == "" || err.Error() != want {
		t.Errorf("error %q\nwant %q", err, want)
	}
	if n := len(e.fake.Calls("RegisterImage")) + len(e.fake.Calls("CopyImage")); n != 0 {
		t.Errorf("%d RegisterImage/CopyImage calls", n)
	}
	rec, _ := publication.Latest(context.Background(), st, img.Digest(), home)
	if rec == nil || rec.State != publication.StateFailed || rec.Message != want {
		t.Errorf("stored record %+v", rec)
	}
	snaps := e.snapshots(t, home, publication.TagImage, img.Digest().String())
	if len(snaps) != 1 || tagValue(snaps[0].Tags, publication.TagState) != publication.TagStateUploading {
		t.Errorf("the failed snapshot is not left tagged %s=%s (for gc --aws): %+v", publication.TagState, publication.TagStateUploading, snaps)
	}
}

// TestPublishAfterInterruptedUpload: a snapshot an interrupted run left (tagged uploading)
// is not used: the disk is uploaded again and the AMI made of the new snapshot.
func TestPublishAfterInterruptedUpload(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	left := e.snapshot(t, home, map[string]string{publication.TagImage: img.Digest().String(), publication.TagState: publication.TagStateUploading}, map[int32]byte{0: 1})
	res, err := Publish(context.Background(), st, img, e.clients, fast(Options{Region: home}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || res.Upload == nil || res.Record.Snapshot.ID == left || res.Record.Snapshot.ID == "" {
		t.Errorf("reused %v, snapshot %s (the interrupted run's: %s)", res.Reused, res.Record.Snapshot.ID, left)
	}
	reg := e.fake.Calls("RegisterImage")
	if len(reg) != 1 || reg[0].Params.Get("BlockDeviceMapping.1.Ebs.SnapshotId") != res.Record.Snapshot.ID {
		t.Errorf("RegisterImage calls %+v", reg)
	}
}

// TestPublishIncremental: the next image of the same name sends only the changed block, on
// top of the previous snapshot.
func TestPublishIncremental(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	st := storetest.Open(t)
	v1 := diskImage(t, st, "v1", 1, 1)
	v2 := diskImage(t, st, "v2", 2, 2)
	r1, err := Publish(ctx, st, v1, e.clients, fast(Options{Region: home}))
	if err != nil {
		t.Fatal(err)
	}
	before := len(e.fake.Calls("PutSnapshotBlock"))
	r2, err := Publish(ctx, st, v2, e.clients, fast(Options{Region: home}))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Upload == nil || r2.Upload.Sent != 1 || r2.Record.Snapshot.Parent != r1.Record.Snapshot.ID || r2.Record.Snapshot.ParentFrom != v1.Digest().String() {
		t.Errorf("incremental: upload %+v, snapshot %+v", r2.Upload, r2.Record.Snapshot)
	}
	if n := len(e.fake.Calls("PutSnapshotBlock")) - before; n != 1 {
		t.Errorf("%d blocks put for one changed block", n)
	}
	start := e.fake.Calls("StartSnapshot")
	if len(start) != 2 {
		t.Fatalf("%d StartSnapshot calls", len(start))
	}
}

func TestPublishNoDisk(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.21.13-6.1.0-1", 1)
	_, err := Publish(context.Background(), st, img, nil, Options{Region: home})
	want := "image 1.21.13-6.1.0-1 has no raw disk (disk.simg): build it with --target raw or --target ami"
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant %s", err, want)
	}
}

func TestOptions(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{}, "publishing an AMI: no region (give --region)"},
		{Options{Region: "mars"}, `--region: "mars" is not an AWS region (expected a name like us-east-1)`},
		{Options{Region: home, CopyTo: []string{home}}, "--copy-to: region us-east-1 named twice or equal to --region"},
		{Options{Region: home, CopyTo: []string{away, away}}, "--copy-to: region eu-west-1 named twice or equal to --region"},
		{Options{Region: home, Share: []string{"123"}}, `--share: "123" is not an AWS account ID (expected 12 digits)`},
		{Options{Region: home, Method: "ftp"}, `--method "ftp": expected ebs-direct or import-snapshot`},
		{Options{Region: home, Method: publication.MethodImportSnapshot}, "--method import-snapshot needs --s3-bucket (the disk is uploaded there first)"},
		{Options{Region: home, SSMPrefix: "nodes"}, `--ssm-prefix: SSM prefix "nodes": must start with / and not end with one (expected a path like /imgctl/nodes)`},
		{Options{Region: home, Concurrency: -1}, "--concurrency -1: expected a positive number"},
		{Options{Region: home, KMSKeyID: "1234abcd-12ab-34cd-56ef-1234567890ab"}, `--kms-key-id "1234abcd-12ab-34cd-56ef-1234567890ab": the EBS direct APIs take the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)`},
		{Options{Region: home, Encrypted: true, Public: true}, "--public with --encrypted: AWS does not make encrypted AMIs public"},
		{Options{Region: home, Encrypted: true, Share: []string{account}}, "--share with --encrypted needs --kms-key-id: other accounts cannot use the default EBS key (give a customer managed key they may use)"},
	} {
		if _, err := c.o.withDefaults(); err == nil || err.Error() != c.want {
			t.Errorf("%+v: %v\nwant %s", c.o, err, c.want)
		}
	}
	o, err := Options{Region: home, KMSKeyID: "arn:aws:kms:us-east-1:210987654321:key/k", Share: []string{account, account}}.withDefaults()
	if err != nil || !o.Encrypted || o.Method != publication.MethodEBSDirect || o.NamePrefix != "imgctl-" ||
		o.Wait != DefaultWait || o.Poll != DefaultPoll || len(o.Share) != 1 || o.Logger == nil {
		t.Errorf("defaults: %+v %v", o, err)
	}
}

// TestPublishFailedAMI: an AMI AWS fails: its reason, a failed record, no copy. A rerun
// deregisters the failed AMI (it holds the name) and registers the snapshot again.
func TestPublishFailedAMI(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	e.fake.SetImageState(home, "", "failed", "InvalidSnapshot: the root volume is unreadable")
	o := fast(Options{Region: home, CopyTo: []string{away}})
	res, err := Publish(context.Background(), st, img, e.clients, o)
	g, _ := res.Record.RegionState(home)
	want := "AMI " + g.ImageID + " in us-east-1 failed: InvalidSnapshot: the root volume is unreadable"
	if err == nil || g.ImageID == "" || err.Error() != want {
		t.Fatalf("error %v\nwant %s", err, want)
	}
	if res.Record.State != publication.StateFailed || res.Record.Message != want || len(e.fake.Calls("CopyImage")) != 0 {
		t.Errorf("record %s %q, %d copies", res.Record.State, res.Record.Message, len(e.fake.Calls("CopyImage")))
	}
	if rec, _ := publication.Latest(context.Background(), st, img.Digest(), home); rec == nil || rec.State != publication.StateFailed {
		t.Errorf("stored record %+v", rec)
	}

	e.fake.SetImageState(home, "", "available", "")
	e.fake.SetImageState(home, g.ImageID, "failed", "still failed")
	res, err = Publish(context.Background(), st, img, e.clients, o)
	if err != nil {
		t.Fatal(err)
	}
	dereg := e.fake.Calls("DeregisterImage")
	if len(dereg) != 1 || dereg[0].Params.Get("ImageId") != g.ImageID {
		t.Errorf("DeregisterImage calls %+v", dereg)
	}
	g2, _ := res.Record.RegionState(home)
	if !res.Reused || res.Record.State != publication.StateAvailable || g2.ImageID == g.ImageID || len(e.fake.Calls("RegisterImage")) != 2 {
		t.Errorf("rerun: reused %v, state %s, AMI %s (failed one %s)", res.Reused, res.Record.State, g2.ImageID, g.ImageID)
	}
}

// TestPublishCopiesInParallel: copies to two regions are made and waited for at the same
// time, and the error of two stuck copies names both.
func TestPublishCopiesInParallel(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	const third = "us-west-2"
	e.fake.SetImageState(away, "", "pending", "")
	e.fake.SetImageState(third, "", "pending", "")
	o := fast(Options{Region: home, CopyTo: []string{away, third}})
	o.Wait = 500 * time.Millisecond
	res, err := Publish(context.Background(), st, img, e.clients, o)
	if err == nil {
		t.Fatal("published with two copies stuck pending")
	}
	for _, r := range []string{away, third} {
		g, _ := res.Record.RegionState(r)
		if g.ImageID == "" || !strings.Contains(err.Error(), "AMI "+g.ImageID+" in "+r+" is still pending") {
			t.Errorf("error %q does not name %s's copy %s", err, r, g.ImageID)
		}
	}
	// Both copies were started before either region's wait ended.
	calls := e.fake.Calls("")
	lastCopy, lastWait := -1, map[string]int{}
	for i, c := range calls {
		switch {
		case c.Action == "CopyImage":
			lastCopy = i
		case c.Action == "DescribeImages" && c.Region != home:
			lastWait[c.Region] = i
		}
	}
	if lastCopy < 0 || lastCopy > lastWait[away] || lastCopy > lastWait[third] {
		t.Errorf("copies one after the other: last CopyImage is call %d, last polls %v", lastCopy, lastWait)
	}
}

// TestPublishShareRefused: AWS refusing to share a copy: the error names the call, region and
// AMI, and the record keeps that region short of available with the reason.
func TestPublishShareRefused(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	e.fake.Fail("ModifyImageAttribute", away, http.StatusForbidden, "UnauthorizedOperation", "You are not authorized to perform this operation.")
	res, err := Publish(context.Background(), st, img, e.clients, fast(Options{Region: home, CopyTo: []string{away}, Share: []string{account}}))
	g, _ := res.Record.RegionState(away)
	if err == nil || g.ImageID == "" || !strings.HasPrefix(err.Error(), "sharing AMI "+g.ImageID+" in eu-west-1 (ec2:ModifyImageAttribute launchPermission): ") ||
		!strings.Contains(err.Error(), "UnauthorizedOperation") {
		t.Fatalf("error %v", err)
	}
	if g.State != publication.StateRegistered || g.Message != err.Error() || res.Record.State != publication.StateRegistered {
		t.Errorf("record %s, %s: %+v", res.Record.State, away, g)
	}
	if rec, _ := publication.Latest(context.Background(), st, img.Digest(), away); rec == nil || rec.Message != err.Error() {
		t.Errorf("stored record %+v", rec)
	}
}

// TestPublishCorruptDisk: a disk.simg blob that does not hash to its digest is not uploaded.
func TestPublishCorruptDisk(t *testing.T) {
	e := newEnv(t)
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	d, err := disk(img)
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.BlobPath(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	storetest.Corrupt(t, st, d.Digest, b)
	_, err = Publish(context.Background(), st, img, e.clients, fast(Options{Region: home}))
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.HasPrefix(err.Error(), "image v1: disk.simg: ") {
		t.Errorf("error %v", err)
	}
	if n := len(e.fake.Calls("StartSnapshot")); n != 0 {
		t.Errorf("%d StartSnapshot calls for a corrupt disk", n)
	}
}

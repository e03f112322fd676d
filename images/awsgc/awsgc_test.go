package awsgc

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
)

func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

func tags(kv ...string) []ec2types.Tag {
	var out []ec2types.Tag
	for i := 0; i < len(kv); i += 2 {
		out = append(out, ec2types.Tag{Key: aws.String(kv[i]), Value: aws.String(kv[i+1])})
	}
	return out
}

// world makes resources in moto.
type world struct {
	t   *testing.T
	c   *awsclient.Clients
	vol map[string]string
}

func (w *world) snapshot(region string, tg ...string) string {
	w.t.Helper()
	e := w.c.EC2(region)
	if w.vol[region] == "" {
		v, err := e.CreateVolume(w.t.Context(), &ec2.CreateVolumeInput{AvailabilityZone: aws.String(region + "a"), Size: aws.Int32(1)})
		if err != nil {
			w.t.Fatal(err)
		}
		w.vol[region] = aws.ToString(v.VolumeId)
	}
	s, err := e.CreateSnapshot(w.t.Context(), &ec2.CreateSnapshotInput{VolumeId: aws.String(w.vol[region])})
	if err != nil {
		w.t.Fatal(err)
	}
	if len(tg) > 0 {
		if _, err := e.CreateTags(w.t.Context(), &ec2.CreateTagsInput{Resources: []string{*s.SnapshotId}, Tags: tags(tg...)}); err != nil {
			w.t.Fatal(err)
		}
	}
	return aws.ToString(s.SnapshotId)
}

func (w *world) ami(region, name, snap string, tg ...string) string {
	w.t.Helper()
	e := w.c.EC2(region)
	im, err := e.RegisterImage(w.t.Context(), &ec2.RegisterImageInput{
		Name: aws.String(name), Architecture: ec2types.ArchitectureValuesX8664, RootDeviceName: aws.String("/dev/xvda"),
		BlockDeviceMappings: []ec2types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"), Ebs: &ec2types.EbsBlockDevice{SnapshotId: aws.String(snap)}}},
	})
	if err != nil {
		w.t.Fatal(err)
	}
	if len(tg) > 0 {
		if _, err := e.CreateTags(w.t.Context(), &ec2.CreateTagsInput{Resources: []string{*im.ImageId}, Tags: tags(tg...)}); err != nil {
			w.t.Fatal(err)
		}
	}
	return aws.ToString(im.ImageId)
}

func (w *world) param(region, name, value string) {
	w.t.Helper()
	_, err := w.c.SSM(region).PutParameter(w.t.Context(), &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(value), Type: ssmtypes.ParameterTypeString})
	if err != nil {
		w.t.Fatal(err)
	}
}

// exists lists which of ids still exist in region (AMIs and snapshots).
func (w *world) exists(region string, ids ...string) []string {
	w.t.Helper()
	e := w.c.EC2(region)
	var out []string
	ims, err := e.DescribeImages(w.t.Context(), &ec2.DescribeImagesInput{Owners: []string{"self"}})
	if err != nil {
		w.t.Fatal(err)
	}
	for _, im := range ims.Images {
		if slices.Contains(ids, *im.ImageId) {
			out = append(out, *im.ImageId)
		}
	}
	ss, err := e.DescribeSnapshots(w.t.Context(), &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
	if err != nil {
		w.t.Fatal(err)
	}
	for _, s := range ss.Snapshots {
		if slices.Contains(ids, *s.SnapshotId) {
			out = append(out, *s.SnapshotId)
		}
	}
	slices.Sort(out)
	return out
}

func ids(rs []Resource) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Region+"/"+r.ID)
	}
	slices.Sort(out)
	return out
}

func sorted(s ...string) []string {
	s = append([]string{}, s...)
	slices.Sort(s)
	return s
}

func TestCollect(t *testing.T) {
	c := awsfake.MotoForTest(t, "us-east-1").Clients
	w := &world{t: t, c: c, vol: map[string]string{}}
	const east, west, prefix = "us-east-1", "eu-west-1", "/imgctl/nodes"
	kept, gone, chan_ := digest.FromString("kept"), digest.FromString("gone"), digest.FromString("channel")
	img := func(d digest.Digest, version string, more ...string) []string {
		return append([]string{publication.TagImage, d.String(), publication.TagVersion, version}, more...)
	}

	// Old resources.
	snapKept := w.snapshot(east, img(kept, "v-kept", publication.TagState, publication.TagStateComplete)...)
	snapGone := w.snapshot(east, img(gone, "v-gone", publication.TagState, publication.TagStateComplete)...)
	snapUntagged := w.snapshot(east)
	snapOtherTags := w.snapshot(east, "team", "x")
	snapUploadOld := w.snapshot(east, img(kept, "v-kept", publication.TagState, publication.TagStateUploading)...)
	amiKept := w.ami(east, "imgctl-v-kept", snapKept, img(kept, "v-kept")...)
	amiGone := w.ami(east, "imgctl-v-gone", snapGone, img(gone, "v-gone")...)
	amiChannel := w.ami(east, "imgctl-v-chan", snapGone, img(chan_, "v-chan")...)
	amiUntagged := w.ami(east, "someone-else", snapUntagged)
	amiGoneWest := w.ami(west, "imgctl-v-gone", w.snapshot(west), img(gone, "v-gone")...)
	w.param(east, prefix+"/prod/image_id", amiChannel)
	w.param(east, prefix+"/v-chan/image_id", amiChannel)
	w.param(east, prefix+"/v-gone/image_id", amiGone)
	w.param(east, "/elsewhere/v-kept/image_id", amiKept)
	t1 := time.Now()
	time.Sleep(2100 * time.Millisecond)
	// Young ones.
	snapUploadYoung := w.snapshot(east, img(gone, "v-young", publication.TagState, publication.TagStateUploading)...)
	amiYoung := w.ami(east, "imgctl-v-young", snapUploadYoung, img(gone, "v-young")...)

	all := []string{snapKept, snapGone, snapUntagged, snapOtherTags, snapUploadOld, amiKept, amiGone, amiChannel, amiUntagged, snapUploadYoung, amiYoung}
	o := Options{
		Regions:     []string{east, west, east},
		Keep:        func(d digest.Digest) bool { return d == kept },
		OlderThan:   time.Hour,
		SSMPrefixes: []string{prefix},
		Now:         func() time.Time { return t1.Add(1050 * time.Millisecond).Add(time.Hour) },
		DryRun:      true,
	}
	wantImages := sorted(east+"/"+amiGone, west+"/"+amiGoneWest)
	wantSnaps := []string{east + "/" + snapGone, east + "/" + snapUploadOld}
	wantParams := []string{east + "/" + prefix + "/v-gone/image_id"}

	rep, err := Collect(t.Context(), c, o)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, rep Report) {
		t.Helper()
		if got := ids(rep.DeregisteredImages); !slices.Equal(got, wantImages) {
			t.Errorf("%s: deregistered %v, want %v", what, got, wantImages)
		}
		// moto makes a snapshot of its own for each AMI (it ignores the mappings given):
		// those of deregistered AMIs go too, and are not ours to name here.
		var snaps []string
		for _, s := range ids(rep.DeletedSnapshots) {
			if strings.Contains(strings.Join(all, " "), strings.TrimPrefix(s, east+"/")) {
				snaps = append(snaps, s)
			}
		}
		if !slices.Equal(snaps, sorted(wantSnaps...)) {
			t.Errorf("%s: deleted snapshots %v (all: %v), want %v", what, snaps, ids(rep.DeletedSnapshots), sorted(wantSnaps...))
		}
		if got := ids(rep.DeletedParameters); !slices.Equal(got, wantParams) {
			t.Errorf("%s: deleted parameters %v, want %v", what, got, wantParams)
		}
	}
	check("dry run", rep)
	if got := w.exists(east, all...); !slices.Equal(got, sorted(all...)) {
		t.Errorf("the dry run removed %v", slices.DeleteFunc(sorted(all...), func(s string) bool { return slices.Contains(got, s) }))
	}
	if got := w.exists(west, amiGoneWest); len(got) != 1 {
		t.Errorf("the dry run removed %s", amiGoneWest)
	}

	o.DryRun = false
	rep, err = Collect(t.Context(), c, o)
	if err != nil {
		t.Fatal(err)
	}
	check("collect", rep)
	left := sorted(snapKept, snapUntagged, snapOtherTags, amiKept, amiChannel, amiUntagged, snapUploadYoung, amiYoung)
	if got := w.exists(east, all...); !slices.Equal(got, left) {
		t.Errorf("left %v, want %v", got, left)
	}
	if got := w.exists(west, amiGoneWest); len(got) != 0 {
		t.Errorf("%s was not deregistered", amiGoneWest)
	}
	ps, err := c.SSM(east).GetParametersByPath(t.Context(), &ssm.GetParametersByPathInput{Path: aws.String(prefix), Recursive: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range ps.Parameters {
		names = append(names, *p.Name)
	}
	slices.Sort(names)
	if want := []string{prefix + "/prod/image_id", prefix + "/v-chan/image_id"}; !slices.Equal(names, want) {
		t.Errorf("parameters left %v, want %v", names, want)
	}

	// A second run finds nothing more to do.
	rep, err = Collect(t.Context(), c, o)
	if err != nil || len(rep.DeregisteredImages)+len(rep.DeletedSnapshots)+len(rep.DeletedParameters) != 0 {
		t.Errorf("second run: %+v, %v", rep, err)
	}
}

func TestCollectRefuses(t *testing.T) {
	c := awsclient.NewClients(aws.Config{Region: "us-east-1"})
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Regions: []string{"us-east-1"}}, "no Keep function"},
		{Options{Keep: func(digest.Digest) bool { return true }, OlderThan: -time.Second}, "must not be negative"},
		{Options{Keep: func(digest.Digest) bool { return true }, SSMPrefixes: []string{"imgctl"}}, `SSM prefix "imgctl"`},
		{Options{Keep: func(digest.Digest) bool { return true }, Regions: []string{"us-east-1;x"}}, "us-east-1;x"},
	} {
		if _, err := Collect(t.Context(), c, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Collect(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
}

// TestCollectErrorSnapshots: a snapshot in state error goes once older than the cutoff, even of
// an image still in the store; a young one stays.
func TestCollectErrorSnapshots(t *testing.T) {
	a := awsfake.MotoForTest(t, "us-east-1")
	w := &world{t: t, c: a.Clients, vol: map[string]string{}}
	kept := digest.FromString("kept")
	old := w.snapshot("us-east-1", publication.TagImage, kept.String(), publication.TagState, publication.TagStateComplete)
	t1 := time.Now()
	time.Sleep(2100 * time.Millisecond)
	young := w.snapshot("us-east-1", publication.TagImage, kept.String(), publication.TagState, publication.TagStateComplete)

	a.EC2.SetSnapshotState("us-east-1", "", "error", "disk on fire") // moto never fails a snapshot
	rep, err := Collect(t.Context(), a.Clients, Options{
		Regions: []string{"us-east-1"}, Keep: func(d digest.Digest) bool { return d == kept }, OlderThan: time.Hour,
		Now: func() time.Time { return t1.Add(1050 * time.Millisecond).Add(time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedSnapshots) != 1 || rep.DeletedSnapshots[0].ID != old || rep.DeletedSnapshots[0].Reason != ReasonError+": disk on fire" || rep.Kept != 1 {
		t.Errorf("report %+v, want %s deleted (%s: disk on fire), 1 kept", rep, old, ReasonError)
	}
	if got := w.exists("us-east-1", old, young); !slices.Equal(got, []string{young}) {
		t.Errorf("left %v, want %s", got, young)
	}
}

package ami

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestUnpublish publishes an image to two regions with version parameters, unpublishes the
// copy's region (its AMI, snapshot and parameter go; the upload region's stay; the record
// says the copy's region was unpublished), then the upload region, and an unrecorded upload an
// interrupted run left in a third region (found by its tag).
func TestUnpublish(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	st := storetest.Open(t)
	img := diskImage(t, st, "v1", 1, 1)
	d := img.Digest().String()
	o := fast(Options{Region: home, CopyTo: []string{away}, SSMPrefix: "/imgctl/test", Tool: "imgctl test"})
	res, err := Publish(ctx, st, img, e.clients, o)
	if err != nil {
		t.Fatalf("%v\n%s", err, e.moto.Log())
	}
	param, _ := res.Record.RegionState(away)
	if param.Parameter == "" {
		t.Fatalf("no version parameter in %s: %+v", away, res.Record)
	}
	paramExists := func(region, name string) bool {
		t.Helper()
		_, err := e.clients.SSM(region).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name)})
		var nf *ssmtypes.ParameterNotFound
		if errors.As(err, &nf) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	}

	if err := Unpublish(ctx, st, img, e.clients, []string{away}, nil); err != nil {
		t.Fatalf("Unpublish %s: %v", away, err)
	}
	if n, s := len(e.images(t, away, publication.TagImage, d)), len(e.snapshots(t, away, publication.TagImage, d)); n != 0 || s != 0 {
		t.Errorf("%s after Unpublish: %d AMIs, %d snapshots tagged with the image", away, n, s)
	}
	if paramExists(away, param.Parameter) {
		t.Errorf("%s: parameter %s is still there", away, param.Parameter)
	}
	if n := len(e.images(t, home, publication.TagImage, d)); n != 1 || !paramExists(home, param.Parameter) {
		t.Errorf("%s (not named): %d AMIs (want 1), parameter there: %v", home, n, paramExists(home, param.Parameter))
	}
	rec, err := publication.Latest(ctx, st, img.Digest(), "")
	if err != nil {
		t.Fatal(err)
	}
	g0, _ := rec.RegionState(home)
	g1, _ := rec.RegionState(away)
	if g0.State != publication.StateAvailable || g0.ImageID == "" || g1.State != publication.StateFailed || g1.ImageID != "" ||
		g1.Message != away+": "+UnpublishedMessage || rec.Snapshot.ID == "" {
		t.Errorf("record after unpublishing %s: %+v", away, rec)
	}

	// An upload an interrupted run never recorded, in a third region.
	third := "ap-south-1"
	orphan := e.snapshot(t, third, map[string]string{publication.TagImage: d, publication.TagState: publication.TagStateUploading}, map[int32]byte{0: 1})
	if err := Unpublish(ctx, st, img, e.clients, []string{home, third}, nil); err != nil {
		t.Fatalf("Unpublish %s, %s: %v", home, third, err)
	}
	for _, r := range []string{home, third} {
		if n, s := len(e.images(t, r, publication.TagImage, d)), len(e.snapshots(t, r, publication.TagImage, d)); n != 0 || s != 0 {
			t.Errorf("%s after Unpublish: %d AMIs, %d snapshots tagged with the image (orphan %s)", r, n, s, orphan)
		}
	}
	if paramExists(home, param.Parameter) {
		t.Errorf("%s: parameter %s is still there", home, param.Parameter)
	}
	rec, err = publication.Latest(ctx, st, img.Digest(), home)
	if err != nil {
		t.Fatal(err)
	}
	if g, _ := rec.RegionState(home); rec.State == publication.StateAvailable || g.ImageID != "" || rec.Snapshot.ID != "" {
		t.Errorf("record after unpublishing the upload region: %+v", rec)
	}
	// Unpublishing again finds nothing and succeeds.
	if err := Unpublish(ctx, st, img, e.clients, []string{home, away}, nil); err != nil {
		t.Errorf("second Unpublish: %v", err)
	}
}

package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
)

func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

// awsEnv is one test's AWS: moto_server (reset) behind the EC2 recorder, and clients for
// looking at what a build left there.
type awsEnv struct {
	fake    *awsfake.EC2
	url     string
	clients *awsclient.Clients
}

func newAWS(t *testing.T) *awsEnv {
	t.Helper()
	a := awsfake.MotoForTest(t, "us-east-1")
	return &awsEnv{fake: a.EC2, url: a.URL, clients: a.Clients}
}

// config is the ami target's fields for e.
func (e *awsEnv) config(extra map[string]any) map[string]any {
	c := map[string]any{
		"targets": []string{"ami"}, "region": "us-east-1", "ami_regions": []string{"eu-west-1"},
		"ssm_prefix": "/imgctl/test", "endpoint_url": e.url, "no_imds": true, "aws_wait": "30s",
	}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// left counts what is tagged with image d in region: AMIs, snapshots.
func (e *awsEnv) left(t *testing.T, region, d string) (amis, snaps int) {
	t.Helper()
	ctx := context.Background()
	tag := []ec2types.Filter{{Name: aws.String("tag:" + publication.TagImage), Values: []string{d}}}
	ims, err := e.clients.EC2(region).DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: tag})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := e.clients.EC2(region).DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, Filters: tag})
	if err != nil {
		t.Fatal(err)
	}
	return len(ims.Images), len(ss.Snapshots)
}

// snapshots returns the IDs of the snapshots in region (moto starts with many of its own).
func (e *awsEnv) snapshots(t *testing.T, region string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	p := ec2.NewDescribeSnapshotsPaginator(e.clients.EC2(region), &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Snapshots {
			out[aws.ToString(s.SnapshotId)] = true
		}
	}
	return out
}

// checkNothingLeft checks that a build that did not finish (how: failed, cancelled) left no
// AMI, no snapshot not in before and no version parameter in either region, and no
// output_directory.
func (e *awsEnv) checkNothingLeft(t *testing.T, b *build, before map[string]map[string]bool, how string) {
	t.Helper()
	for _, r := range []string{"us-east-1", "eu-west-1"} {
		ims, err := e.clients.EC2(r).DescribeImages(context.Background(), &ec2.DescribeImagesInput{Owners: []string{"self"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(ims.Images) != 0 || len(e.newSnapshots(t, r, before[r])) != 0 || len(e.parameters(t, r)) != 0 {
			t.Errorf("%s after the %s build: %d AMIs, new snapshots %v, parameters %v", r, how, len(ims.Images), e.newSnapshots(t, r, before[r]), e.parameters(t, r))
		}
	}
	if _, err := os.Stat(b.out()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("output_directory after the %s build: %v", how, err)
	}
}

// newSnapshots are the snapshots in region not in before.
func (e *awsEnv) newSnapshots(t *testing.T, region string, before map[string]bool) []string {
	t.Helper()
	var out []string
	for id := range e.snapshots(t, region) {
		if !before[id] {
			out = append(out, id)
		}
	}
	return out
}

// parameters lists the SSM parameters under /imgctl in region.
func (e *awsEnv) parameters(t *testing.T, region string) []ssmtypes.Parameter {
	t.Helper()
	out, err := e.clients.SSM(region).GetParametersByPath(context.Background(), &ssm.GetParametersByPathInput{Path: aws.String("/imgctl"), Recursive: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	return out.Parameters
}

// runAMI prepares and runs a build with the ami target.
func runAMI(t *testing.T, ctx context.Context, b *build, e *awsEnv, extra map[string]any) (packer.Artifact, error) {
	t.Helper()
	cfg := b.config(e.config(extra))
	bl := prepared(t, cfg)
	bl.config.amiPoll = 20 * time.Millisecond
	return bl.Run(ctx, &packer.MockUi{}, &packer.MockHook{})
}

// TestRunPublishesAMI: the ami target builds raw's files and publishes them; the artifact's
// ID is region:ami-… pairs like the amazon builders'; Destroy deregisters what the build
// published first and removes the files.
func TestRunPublishesAMI(t *testing.T) {
	e := newAWS(t)
	b := newBuild(t)
	before := map[string]map[string]bool{"us-east-1": e.snapshots(t, "us-east-1"), "eu-west-1": e.snapshots(t, "eu-west-1")}
	art, err := runAMI(t, context.Background(), b, e, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !regexp.MustCompile(`^eu-west-1:ami-[0-9a-f]+,us-east-1:ami-[0-9a-f]+$`).MatchString(art.Id()) {
		t.Errorf("artifact id %q, want eu-west-1:ami-…,us-east-1:ami-…", art.Id())
	}
	gen := art.State("generated_data").(map[string]any)
	d := gen["ImageDigest"].(string)
	if gen["AMIs"] != art.Id() || !strings.HasPrefix(d, "sha256:") {
		t.Errorf("generated_data = %v", gen)
	}
	if len(art.Files()) != 4 {
		t.Errorf("files %v, want raw's four (disk.raw, vmlinuz, initrd.img, rootfs.squashfs)", art.Files())
	}
	for _, r := range []string{"us-east-1", "eu-west-1"} {
		if amis, _ := e.left(t, r, d); amis != 1 || len(e.newSnapshots(t, r, before[r])) == 0 {
			t.Errorf("%s: %d AMIs of the image, new snapshots %v, want 1 and some", r, amis, e.newSnapshots(t, r, before[r]))
		}
		if len(e.parameters(t, r)) != 1 {
			t.Errorf("%s: parameters %v, want the version parameter", r, e.parameters(t, r))
		}
	}
	if err := art.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"us-east-1", "eu-west-1"} {
		if amis, _ := e.left(t, r, d); amis != 0 || len(e.newSnapshots(t, r, before[r])) != 0 || len(e.parameters(t, r)) != 0 {
			t.Errorf("%s after Destroy: %d AMIs, new snapshots %v, parameters %v", r, amis, e.newSnapshots(t, r, before[r]), e.parameters(t, r))
		}
	}
	for _, f := range art.Files() {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Destroy: %v", f, err)
		}
	}
}

// TestRunPublishFailureCleansUp: a copy AWS refuses fails the build after the upload region's
// AMI, snapshot and parameter exist: the cleanup removes all of them, the output directory,
// and restores the lock file the build had rewritten.
func TestRunPublishFailureCleansUp(t *testing.T) {
	e := newAWS(t)
	b := newBuild(t)
	// An earlier lock of the same sources, with another SOURCE_DATE_EPOCH: update_lock rewrites it.
	if _, err := prepared(t, b.config(map[string]any{"targets": []string{"rootfs"}, "output_directory": filepath.Join(b.dir, "first")})).
		Run(context.Background(), &packer.MockUi{}, &packer.MockHook{}); err != nil {
		t.Fatal(err)
	}
	lockPath := filepath.Join(b.dir, "imgctl.lock")
	first, err := os.ReadFile(lockPath)
	if err != nil {
		t.Fatal(err)
	}
	old := regexp.MustCompile(`"sourceDateEpoch": *[0-9]+`).ReplaceAll(first, []byte(`"sourceDateEpoch": 1600000000`))
	if string(old) == string(first) {
		t.Fatalf("no sourceDateEpoch in the lock:\n%s", first)
	}
	if err := os.WriteFile(lockPath, old, 0o644); err != nil {
		t.Fatal(err)
	}

	before := map[string]map[string]bool{"us-east-1": e.snapshots(t, "us-east-1"), "eu-west-1": e.snapshots(t, "eu-west-1")}
	e.fake.Fail("CopyImage", "eu-west-1", 403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
	art, err := runAMI(t, context.Background(), b, e, map[string]any{"update_lock": true})
	if err == nil || !strings.Contains(err.Error(), "UnauthorizedOperation") || art != nil {
		t.Fatalf("Run: %v (artifact %v), want the CopyImage failure", err, art)
	}
	if len(e.fake.Calls("RegisterImage")) != 1 {
		t.Fatalf("RegisterImage called %d times: the failure came too early to prove anything", len(e.fake.Calls("RegisterImage")))
	}
	e.checkNothingLeft(t, b, before, "failed")
	if got, _ := os.ReadFile(lockPath); string(got) != string(old) {
		t.Errorf("lock file not restored:\n%s\nwant\n%s", got, old)
	}
}

// TestRunPublishFailureKeepsEarlierAMIs: a rebuild of an image already published to the
// upload region fails copying to a new region: the cleanup removes only the new region's
// pieces; the earlier AMI and its parameter stay.
func TestRunPublishFailureKeepsEarlierAMIs(t *testing.T) {
	e := newAWS(t)
	b := newBuild(t)
	first, err := runAMI(t, context.Background(), b, e, map[string]any{"ami_regions": []string{}, "output_directory": filepath.Join(b.dir, "first")})
	if err != nil {
		t.Fatal(err)
	}
	d := first.State("generated_data").(map[string]any)["ImageDigest"].(string)
	before := e.snapshots(t, "eu-west-1")
	e.fake.Fail("CopyImage", "eu-west-1", 403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
	if _, err := runAMI(t, context.Background(), b, e, nil); err == nil || !strings.Contains(err.Error(), "UnauthorizedOperation") {
		t.Fatalf("Run: %v, want the CopyImage failure", err)
	}
	if amis, _ := e.left(t, "us-east-1", d); amis != 1 || len(e.parameters(t, "us-east-1")) != 1 {
		t.Errorf("us-east-1: %d AMIs, parameters %v: the earlier publication is gone", amis, e.parameters(t, "us-east-1"))
	}
	if amis, _ := e.left(t, "eu-west-1", d); amis != 0 || len(e.newSnapshots(t, "eu-west-1", before)) != 0 {
		t.Errorf("eu-west-1: %d AMIs, new snapshots %v", amis, e.newSnapshots(t, "eu-west-1", before))
	}
	if !strings.HasPrefix(first.Id(), "us-east-1:ami-") {
		t.Errorf("first build's id %q", first.Id())
	}
}

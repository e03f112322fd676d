package test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/testenv"
)

// amiImage is one image built for the AMI test: its digest and version in the store and the
// disk.raw --output exported (the oracle the AMI's bytes are compared with).
type amiImage struct {
	digest, version, disk string
}

// buildAMIImage builds the embedded default spec as target (raw, or ami with publish flags in
// extra) into dir's store and cache, with the boot test layer and a kubelet stand-in printing
// kubelet; images built in the same dir and work share everything but what the kubelet
// changes. For target ami it also returns what the build published.
func buildAMIImage(ctx context.Context, t *testing.T, work, dir, kubelet, target string, extra ...string) (amiImage, *published) {
	t.Helper()
	start := time.Now()
	bin := filepath.Join(work, "kubelet-"+kubelet)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho "+kubelet+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(work, "testlayer")
	if _, err := os.Stat(layer); err != nil {
		layer = testLayer(t, work)
	}
	out := filepath.Join(dir, "out-"+kubelet)
	res, err := imgctl(ctx, t, dir, append([]string{"-o", "json", "build", "--k8s", "1.21.13", "--target", target,
		"--lock", filepath.Join(work, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://" + bin + "#path=/usr/bin/kubelet&mode=0755",
		"--source", "extra=file://" + layer + "/"}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Digest string
		Config struct{ Version string }
		AMI    *published
	}
	if err := json.Unmarshal([]byte(res), &b); err != nil || b.Digest == "" || b.Config.Version == "" {
		t.Fatalf("imgctl -o json build: %v: %.500s", err, res)
	}
	if (b.AMI != nil) != (target == "ami") {
		t.Fatalf("imgctl -o json build --target %s: published %+v", target, b.AMI)
	}
	t.Logf("built %s (%s) as %s in %v", b.Config.Version, b.Digest, target, time.Since(start).Round(time.Second))
	return amiImage{digest: b.Digest, version: b.Config.Version, disk: filepath.Join(out, "disk.raw")}, b.AMI
}

// ebsWire records, on the wire between imgctl and moto, each StartSnapshot's request and the
// blocks PutSnapshotBlock wrote to each snapshot: what was really sent, not what imgctl
// reports.
type ebsWire struct {
	mu     sync.Mutex
	starts []startSnapshot
	puts   map[string]map[string]bool // snapshot ID → block indexes written (a retried block once)
}

type startSnapshot struct {
	ParentSnapshotID string `json:"ParentSnapshotId"`
	VolumeSize       int64
	Tags             []struct{ Key, Value string }
}

var putBlockPath = regexp.MustCompile(`^/snapshots/([^/]+)/blocks/([0-9]+)$`)

func (w *ebsWire) ServeAWS(_ http.ResponseWriter, r *http.Request, body []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/snapshots":
		var s startSnapshot
		if json.Unmarshal(body, &s) == nil {
			w.starts = append(w.starts, s)
		}
	case r.Method == http.MethodPut && putBlockPath.MatchString(r.URL.Path):
		m := putBlockPath.FindStringSubmatch(r.URL.Path)
		if w.puts == nil {
			w.puts = map[string]map[string]bool{}
		}
		if w.puts[m[1]] == nil {
			w.puts[m[1]] = map[string]bool{}
		}
		w.puts[m[1]][m[2]] = true
	}
	return false // moto serves it
}

// counts returns the StartSnapshot requests seen and the blocks written to each snapshot.
func (w *ebsWire) counts() (starts int, puts map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	puts = map[string]int{}
	for id, blocks := range w.puts {
		puts[id] = len(blocks)
	}
	return len(w.starts), puts
}

// startOf returns the StartSnapshot request whose imgctl:image tag is img.
func (w *ebsWire) startOf(t *testing.T, img string) startSnapshot {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var found []startSnapshot
	for _, s := range w.starts {
		for _, tag := range s.Tags {
			if tag.Key == publication.TagImage && tag.Value == img {
				found = append(found, s)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d StartSnapshot requests tagged %s=%s, want 1", len(found), publication.TagImage, img)
	}
	return found[0]
}

// published is what imgctl publish ami -o json prints: the record, whether it was reused,
// the upload's statistics.
type published struct {
	publication.Record
	Reused bool `json:"reused"`
	Upload *struct {
		Sent, DataBlocks int64
		Seconds          float64
	} `json:"upload"`
}

const (
	amiRegion = "us-east-1"
	amiCopy   = "eu-west-1"
	ssmPrefix = "/imgctl/e2e"
)

// TestAMIPublishPromoteBoot is the whole AMI flow through the CLI against moto_server: two
// images of one name published to us-east-1 and copied to eu-west-1 — the first with publish
// ami, the second (a kubelet change) with build --target ami, incrementally on the first's
// snapshot; the nightly channel promoted,
// promoted again and rolled back with its SSM parameter following in both regions; a
// parameter changed by someone else refuses a promotion until --force; a rerun of publish
// reuses everything. Then the second AMI's snapshot is read back block by block with
// GetSnapshotBlock (its parent's too), checked equal to the built disk byte for byte and
// booted in qemu (OVMF, TCG) to the init's mount-root line.
func TestAMIPublishPromoteBoot(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap", "moto_server")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	wire := &ebsWire{}
	env := awsfake.MotoForTest(t, "us-east-1", wire)
	// The test's own reads go to moto directly, not through wire.
	moto, endpoint, c := env.Moto, env.URL, awsfake.ClientsForTest(t, "us-east-1", env.Moto.URL)
	work, dir := t.TempDir(), t.TempDir()
	run := func(args ...string) (string, error) {
		return imgctl(ctx, t, dir, args...)
	}
	awsArgs := []string{"--endpoint-url", endpoint, "--no-imds"}
	publishArgs := append([]string{"--region", amiRegion, "--copy-to", amiCopy, "--ssm-prefix", ssmPrefix}, awsArgs...)
	publish := func(img amiImage) published {
		t.Helper()
		out, err := run(append([]string{"-o", "json", "publish", "ami", img.version}, publishArgs...)...)
		if err != nil {
			t.Fatalf("%v\nmoto:\n%s", err, moto.Log())
		}
		var p published
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatalf("publish ami -o json: %v: %.2000s", err, out)
		}
		checkPublished(ctx, t, c, img, p)
		return p
	}
	promote := func(args ...string) (string, error) {
		return run(append(args, awsArgs...)...)
	}
	// nightly checks PREFIX/nightly/image_id in both regions names p's AMIs there.
	nightly := func(p published, when string) {
		t.Helper()
		for _, g := range p.Regions {
			if got := parameter(ctx, t, c, g.Region, ssmPrefix+"/nightly/image_id"); got != g.ImageID {
				t.Errorf("%s: %s %s/nightly/image_id = %q, want %s (%s)", when, g.Region, ssmPrefix, got, g.ImageID, p.Version)
			}
		}
	}

	// v1: a full upload, copied, parameters written; promoted to nightly.
	v1, _ := buildAMIImage(ctx, t, work, dir, "kubelet-v1", "raw")
	if _, err := run("store", "aws", "--regions", amiRegion+","+amiCopy, "--ssm-prefix", ssmPrefix); err != nil {
		t.Fatal(err)
	}
	pubStart := time.Now()
	p1 := publish(v1)
	_, puts := wire.counts()
	if s := wire.startOf(t, v1.digest); s.ParentSnapshotID != "" {
		t.Errorf("v1's snapshot started on parent %s: there was no earlier image", s.ParentSnapshotID)
	}
	if p1.Snapshot.Parent != "" || p1.Snapshot.Sent != p1.Snapshot.DataBlocks || int64(puts[p1.Snapshot.ID]) != p1.Snapshot.Sent {
		t.Errorf("v1: parent %q, sent %d of %d data blocks, %d blocks written (PutSnapshotBlock); want a full upload of every data block",
			p1.Snapshot.Parent, p1.Snapshot.Sent, p1.Snapshot.DataBlocks, puts[p1.Snapshot.ID])
	}
	t.Logf("v1 published in %v: %d of %d blocks sent (%d bytes)", time.Since(pubStart).Round(time.Millisecond), p1.Snapshot.Sent, p1.Snapshot.Blocks, p1.Snapshot.BytesSent)
	if _, err := promote("promote", v1.version, "--to", "nightly"); err != nil {
		t.Fatal(err)
	}
	nightly(p1, "v1 promoted to nightly")

	// v2, a kubelet change, built and published in one command (build --target ami, as CI
	// does): incremental on v1's snapshot, few blocks sent.
	pubStart = time.Now()
	v2, built := buildAMIImage(ctx, t, work, dir, "kubelet-v2", "ami", publishArgs...)
	p2 := *built
	checkPublished(ctx, t, c, v2, p2)
	_, puts = wire.counts()
	if s := wire.startOf(t, v2.digest); s.ParentSnapshotID != p1.Snapshot.ID {
		t.Errorf("v2's StartSnapshot: ParentSnapshotId %q, want v1's snapshot %s", s.ParentSnapshotID, p1.Snapshot.ID)
	}
	if p2.Snapshot.Parent != p1.Snapshot.ID || p2.Snapshot.ParentFrom != v1.digest {
		t.Errorf("v2's record: parent %s from %s, want %s from %s", p2.Snapshot.Parent, p2.Snapshot.ParentFrom, p1.Snapshot.ID, v1.digest)
	}
	// The goal for a kubelet change: at most 15% of what a full upload sends (the
	// kubelet's and image.json's data are stored last in the root squashfs).
	if sent := int64(puts[p2.Snapshot.ID]); sent != p2.Snapshot.Sent || sent == 0 || sent*100 > 15*p1.Snapshot.Sent || sent >= p2.Snapshot.DataBlocks {
		t.Errorf("v2: %d blocks written (PutSnapshotBlock), record says %d sent; want some, at most 15%% of v1's %d and fewer than v2's %d data blocks",
			sent, p2.Snapshot.Sent, p1.Snapshot.Sent, p2.Snapshot.DataBlocks)
	}
	t.Logf("v2 built and published incrementally in %v: %d of %d data blocks sent (%.0f%%; v1 sent %d)", time.Since(pubStart).Round(time.Millisecond),
		p2.Snapshot.Sent, p2.Snapshot.DataBlocks, 100*float64(p2.Snapshot.Sent)/float64(p2.Snapshot.DataBlocks), p1.Snapshot.Sent)

	// Promote, roll back: the parameters follow the channel in both regions.
	if _, err := promote("promote", v2.version, "--to", "nightly"); err != nil {
		t.Fatal(err)
	}
	nightly(p2, "v2 promoted to nightly")
	if _, err := promote("rollback", "nightly"); err != nil {
		t.Fatal(err)
	}
	nightly(p1, "nightly rolled back")

	// Someone else points eu-west-1's parameter elsewhere: promotion is refused, nothing moves.
	other := foreignAMI(ctx, t, c, amiCopy)
	putParameter(ctx, t, c, amiCopy, ssmPrefix+"/nightly/image_id", other)
	out, err := promote("promote", v2.version, "--to", "nightly")
	if err == nil {
		t.Fatalf("promote over a parameter someone else changed succeeded:\n%s", out)
	}
	for _, want := range []string{amiCopy, ssmPrefix + "/nightly/image_id", other, "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refused promotion's error lacks %q: %v", want, err)
		}
	}
	t.Logf("refused: %s", lastLine(err.Error()))
	if got := parameter(ctx, t, c, amiRegion, ssmPrefix+"/nightly/image_id"); got != p1.Regions[0].ImageID {
		t.Errorf("a refused promotion changed %s's parameter to %s", amiRegion, got)
	}
	if got := parameter(ctx, t, c, amiCopy, ssmPrefix+"/nightly/image_id"); got != other {
		t.Errorf("a refused promotion overwrote someone else's value in %s with %s", amiCopy, got)
	}
	if head := channelHead(ctx, t, dir, "nightly"); head != v1.digest {
		t.Errorf("a refused promotion moved nightly to %s", head)
	}
	if _, err := promote("promote", v2.version, "--to", "nightly", "--force"); err != nil {
		t.Fatal(err)
	}
	nightly(p2, "v2 promoted with --force")

	// A rerun uploads, registers and copies nothing.
	starts, before := wire.counts()
	again := publish(v2)
	afterStarts, after := wire.counts()
	if !again.Reused || again.Upload != nil || afterStarts != starts || !maps.Equal(before, after) {
		t.Errorf("rerun: reused %v, StartSnapshot %d → %d, blocks %v → %v; want nothing sent", again.Reused, starts, afterStarts, before, after)
	}
	for i, g := range again.Regions {
		if g.ImageID != p2.Regions[i].ImageID {
			t.Errorf("rerun: %s AMI %s, first run's %s", g.Region, g.ImageID, p2.Regions[i].ImageID)
		}
	}
	// images inspect shows the AMIs the records hold.
	insp, err := run("-o", "json", "images", "inspect", v2.version)
	if err != nil {
		t.Fatal(err)
	}
	var shown struct{ Publications []publication.Region }
	if err := json.Unmarshal([]byte(insp), &shown); err != nil {
		t.Fatalf("images inspect -o json: %v", err)
	}
	amis := map[string]string{}
	for _, g := range shown.Publications {
		amis[g.Region] = g.ImageID
	}
	for _, g := range p2.Regions {
		if amis[g.Region] != g.ImageID {
			t.Errorf("images inspect %s: %s AMI %q, want %s (all: %v)", v2.version, g.Region, amis[g.Region], g.ImageID, shown.Publications)
		}
	}
	t.Logf("CLI flow done at %v", time.Since(start).Round(time.Second))

	// The bytes in v2's AMI: its snapshot and its parent's, block by block, reassembled.
	readStart := time.Now()
	chain, err := snapshotChain(ctx, c.EC2(amiRegion), p2.Snapshot.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != p1.Snapshot.ID {
		t.Fatalf("v2's snapshot chain (%s tags) %v, want [%s %s]", publication.TagParent, chain, p2.Snapshot.ID, p1.Snapshot.ID)
	}
	got := filepath.Join(work, "ami-disk.raw")
	read, err := reassemble(ctx, readBackEBS(c.EBS(amiRegion)), chain, got)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(read[0].Blocks)) != p2.Snapshot.Sent || int64(len(read[1].Blocks)) != p1.Snapshot.Sent {
		t.Errorf("read back %d blocks of v2's snapshot and %d of v1's; sent %d and %d", len(read[0].Blocks), len(read[1].Blocks), p2.Snapshot.Sent, p1.Snapshot.Sent)
	}
	if err := diskDiff(got, v2.disk); err != nil {
		t.Fatalf("the disk in v2's AMI is not the built disk: %v", err)
	}
	t.Logf("read back 2 snapshots, %d blocks, in %v", blocksRead(read), time.Since(readStart).Round(time.Second))
	bootToMountRoot(ctx, t, work, got)
	t.Logf("TestAMIPublishPromoteBoot: %v wall", time.Since(start).Round(time.Second))
}

// checkPublished checks a publication record against what moto holds: every region's AMI
// available and tagged with the image, the version parameter naming it.
func checkPublished(ctx context.Context, t *testing.T, c *awsclient.Clients, img amiImage, p published) {
	t.Helper()
	if p.Image != digest.Digest(img.digest) || p.Version != img.version || p.State != publication.StateAvailable || p.Region != amiRegion || p.Snapshot.ID == "" {
		t.Fatalf("publish ami: image %s version %s state %s region %s snapshot %q; want %s %s available %s",
			p.Image, p.Version, p.State, p.Region, p.Snapshot.ID, img.digest, img.version, amiRegion)
	}
	if len(p.Regions) != 2 || p.Regions[0].Region != amiRegion || p.Regions[1].Region != amiCopy {
		t.Fatalf("publish ami: regions %+v, want %s then %s", p.Regions, amiRegion, amiCopy)
	}
	for _, g := range p.Regions {
		d, err := c.EC2(g.Region).DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{
			{Name: aws.String("tag:" + publication.TagImage), Values: []string{img.digest}}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Images) != 1 || aws.ToString(d.Images[0].ImageId) != g.ImageID || d.Images[0].State != ec2types.ImageStateAvailable || g.State != publication.StateAvailable {
			t.Errorf("%s: record says %s %s; moto holds %d AMIs tagged with the image: %+v", g.Region, g.ImageID, g.State, len(d.Images), d.Images)
		}
		want, _ := publication.VersionParameter(ssmPrefix, img.version)
		if g.Parameter != want {
			t.Errorf("%s: version parameter %q, want %s", g.Region, g.Parameter, want)
		}
		if got := parameter(ctx, t, c, g.Region, want); got != g.ImageID {
			t.Errorf("%s: %s = %q, want %s", g.Region, want, got, g.ImageID)
		}
	}
	s, err := c.EC2(amiRegion).DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:" + publication.TagImage), Values: []string{img.digest}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Snapshots) != 1 || aws.ToString(s.Snapshots[0].SnapshotId) != p.Snapshot.ID || s.Snapshots[0].State != ec2types.SnapshotStateCompleted {
		t.Errorf("%s: snapshots tagged with %s: %+v, want the record's %s, completed", amiRegion, img.version, s.Snapshots, p.Snapshot.ID)
	}
}

func parameter(ctx context.Context, t *testing.T, c *awsclient.Clients, region, name string) string {
	t.Helper()
	p, err := c.SSM(region).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name)})
	if err != nil {
		var nf *ssmtypes.ParameterNotFound
		if errors.As(err, &nf) {
			return ""
		}
		t.Fatal(err)
	}
	return aws.ToString(p.Parameter.Value)
}

func putParameter(ctx context.Context, t *testing.T, c *awsclient.Clients, region, name, value string) {
	t.Helper()
	if _, err := c.SSM(region).PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(value),
		Type: ssmtypes.ParameterTypeString, Overwrite: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
}

// foreignAMI registers an AMI imgctl knows nothing of: someone else's image.
func foreignAMI(ctx context.Context, t *testing.T, c *awsclient.Clients, region string) string {
	t.Helper()
	r, err := c.EC2(region).RegisterImage(ctx, &ec2.RegisterImageInput{Name: aws.String("someone-elses-image"),
		Architecture: ec2types.ArchitectureValuesX8664, RootDeviceName: aws.String("/dev/xvda")})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(r.ImageId)
}

// channelHead returns the image digest a channel points to.
func channelHead(ctx context.Context, t *testing.T, dir, ch string) string {
	t.Helper()
	out, err := imgctl(ctx, t, dir, "-o", "json", "channel", "show", ch)
	if err != nil {
		t.Fatal(err)
	}
	var s struct{ Digest string }
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.Digest == "" {
		t.Fatalf("channel show -o json: %v: %s", err, out)
	}
	return s.Digest
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}

func blocksRead(r []snapshotBlocks) int {
	n := 0
	for _, s := range r {
		n += len(s.Blocks)
	}
	return n
}

// bootToMountRoot boots disk in qemu (OVMF, TCG, under the watchdog) until the init reports
// the root mounted from ROOT-A, then stops the guest.
func bootToMountRoot(ctx context.Context, t *testing.T, work, disk string) {
	t.Helper()
	vars := filepath.Join(work, "vars.fd")
	copyFile(t, ovmfVars, vars)
	bootCtx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	start := time.Now()
	vm := startVM(bootCtx, t, vmOptions{disk: disk, vars: vars, logFile: filepath.Join(work, "boot.log")})
	err := vm.waitFor(bootCtx, "step=mount-root status=ok")
	log := vm.console.String()
	vm.stop()
	if err != nil {
		t.Fatalf("booting the AMI's disk: %v\nconsole:\n%s", err, tail(log, 6000))
	}
	var line string
	for _, l := range stepLines(log) {
		if strings.Contains(l, "step=mount-root status=ok") {
			line = l
		}
	}
	if !strings.Contains(line, "label=ROOT-A") || !strings.Contains(line, "fstype=squashfs") {
		t.Errorf("mount-root: %q, want the squashfs root from ROOT-A", line)
	}
	t.Logf("the AMI's disk booted to mount-root in %v: %s", time.Since(start).Round(time.Second), line)
}

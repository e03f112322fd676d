package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

// testAWS sets the environment the AWS tests run in: test credentials (unless noCreds), no
// shared files, no instance metadata service.
func testAWS(t *testing.T, noCreds bool) {
	t.Helper()
	isolateAWS(t, "http://127.0.0.1:1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	if !noCreds {
		t.Setenv("AWS_ACCESS_KEY_ID", "testing")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	}
}

// storedImages lists the images in dir's store.
func storedImages(t *testing.T, dir string) []store.Image {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := st.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

// TestPublishAMIUsageErrors: bad input to publish ami and to build's AMI flags fails before
// anything is uploaded or built, with the flag and what was expected.
func TestPublishAMIUsageErrors(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 1)[0] // a rootfs-only image: no disk
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("AWS request %s %s: bad input must fail before any request", r.Method, r.URL)
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer dead.Close()
	spec := writeSpec(t, dir, "file://"+filepath.Join(dir, "content", "a")+"/")
	for _, tc := range []struct {
		noCreds bool
		args    []string
		want    string
	}{
		{false, []string{"publish", "ami", "--region", "us-east-1"}, "accepts 1 arg(s), received 0"},
		{false, []string{"publish", "ami", img, "--region", "useast1"}, `--region: "useast1" is not an AWS region (expected a name like us-east-1)`},
		{false, []string{"publish", "ami", img, "--region", "us-east-1", "--copy-to", "eu-west-1,EU"}, `--copy-to: "EU" is not an AWS region (expected a name like us-east-1)`},
		{false, []string{"publish", "ami", img, "--region", "us-east-1", "--share", "1234"}, `--share: "1234" is not an AWS account ID (expected 12 digits)`},
		{false, []string{"publish", "ami", img, "--region", "us-east-1", "--method", "import-snapshot"}, "--method import-snapshot uploads the disk to S3 first: give --s3-bucket BUCKET (a bucket in the upload region the caller can write)"},
		{false, []string{"publish", "ami", "sha256:" + strings.Repeat("0", 64), "--region", "us-east-1"}, "not found"},
		{true, []string{"publish", "ami", img, "--region", "us-east-1", "--no-imds"}, "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, give --profile or set AWS_PROFILE (the instance metadata service is not asked); looking for them: "},
		{false, []string{"publish", "ami", img}, "no AWS region: give --region or set AWS_REGION"},
		{false, []string{"-o", "yaml", "publish", "ami", img, "--region", "us-east-1"}, `--format "yaml": expected text or json`},
		{false, []string{"build", "-f", spec, "--target", "rootfs", "--region", "us-east-1"}, "--region is a flag of --target ami, which this build does not write (targets: rootfs)"},
		{false, []string{"build", "-f", spec, "--target", "raw", "--copy-to", "eu-west-1"}, "--copy-to is a flag of --target ami, which this build does not write (targets: raw)"},
		{true, []string{"build", "-f", spec, "--target", "raw,ami", "--region", "us-east-1", "--no-imds"}, "no AWS credentials found"},
		{false, []string{"build", "-f", spec, "--target", "ami", "--region", "us-east-1", "--share", "x"}, `--share: "x" is not an AWS account ID (expected 12 digits)`},
	} {
		testAWS(t, tc.noCreds)
		args := tc.args
		if tc.args[0] == "publish" || strings.Contains(strings.Join(tc.args, " "), "ami") { // never AWS's endpoints
			args = append(args[:len(args):len(args)], "--endpoint-url", dead.URL)
		}
		_, stderr, err := run(t, dir, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("imgctl %s:\n got %v\nwant %s\n%s", strings.Join(args, " "), err, tc.want, stderr)
		}
	}
	if imgs := storedImages(t, dir); len(imgs) != 1 {
		t.Errorf("the store holds %d images, want only the one built first: a refused build must not build", len(imgs))
	}
}

// bootSpec writes a spec file of f's sources (with WithBoot's kernel and bootloader), so the
// CLI can build the raw and ami targets in-process.
func bootSpec(t *testing.T, f *buildtest.Fixture, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "ami.yaml")
	if err := os.WriteFile(p, f.SpecYAML("ami-test", 1700000000), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBuildAMIPublishFails: build --target ami stores the image (the same image as --target
// raw), and when publishing fails the command fails saying the image is built, still printing
// it; the image stays in the store.
func TestBuildAMIPublishFails(t *testing.T) {
	testAWS(t, false)
	var requests int
	denied := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Amzn-ErrorType", "AccessDeniedException")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"__type":"AccessDeniedException","message":"User is not authorized to perform: ebs:StartSnapshot"}`)
	}))
	defer denied.Close()
	dir := t.TempDir()
	f := buildtest.NewFixture(t)
	agent := f.WithBoot(t, buildtest.BootOptions{})
	sp := bootSpec(t, f, dir)
	lock := filepath.Join(dir, "imgctl.lock")
	stdout, stderr, err := run(t, dir, "-q", "build", "-f", sp, "--lock", lock, "--node-agent", agent, "--target", "ami",
		"--region", "us-east-1", "--endpoint-url", denied.URL, "--no-imds", "--wait", "1m")
	if err == nil {
		t.Fatalf("build --target ami succeeded against an endpoint that denies everything\n%s", stderr)
	}
	imgs := storedImages(t, dir)
	if len(imgs) != 1 {
		t.Fatalf("the store holds %d images, want the built one", len(imgs))
	}
	img := imgs[0]
	want := "image " + img.Config.Version + " (" + string(img.Digest()) + ") is built and stored, but target ami could not publish it: "
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %v\nwant it to start %q", err, want)
	}
	if requests == 0 {
		t.Error("publishing asked nothing of AWS")
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if lines[len(lines)-1] != string(img.Digest()) {
		t.Errorf("stdout does not end with the built image's digest:\n%s", stdout)
	}
	// The same image as --target raw: publish ami can publish it later.
	stdout, stderr, err = run(t, dir, "-q", "build", "-f", sp, "--lock", lock, "--node-agent", agent, "--target", "raw")
	if err != nil {
		t.Fatalf("build --target raw: %v\n%s", err, stderr)
	}
	if !strings.HasSuffix(strings.TrimSpace(stdout), string(img.Digest())) {
		t.Errorf("--target raw built another image than --target ami:\n%s", stdout)
	}
}

// TestPublishAMIMoto: publish ami end to end against moto_server: a small raw image is
// uploaded, registered in us-east-1, copied to eu-west-1, shared and named in SSM; -o json
// prints the record with the upload statistics; a rerun finds the AMIs by tag and uploads
// nothing; an image without a disk is refused saying which target to build; build --target ami
// publishes what it built.
func TestPublishAMIMoto(t *testing.T) {
	env := awsfake.MotoForTest(t, "us-east-1")
	moto := env.Moto

	dir := t.TempDir()
	f := buildtest.NewFixture(t)
	agent := f.WithBoot(t, buildtest.BootOptions{})
	sp := bootSpec(t, f, dir)
	lock := filepath.Join(dir, "imgctl.lock")
	stdout, stderr, err := run(t, dir, "-q", "build", "-f", sp, "--lock", lock, "--node-agent", agent, "--target", "raw")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	img := lastLine(stdout)
	aws := []string{"--region", "us-east-1", "--endpoint-url", moto.URL, "--no-imds", "--wait", "5m"}
	publish := func(args ...string) (stdout, stderr string, err error) {
		return run(t, dir, append(append([]string{"-o", "json", "publish", "ami", img}, aws...), args...)...)
	}
	type result struct {
		publication.Record
		Reused bool
		Upload *uploadJSON
	}
	parse := func(out string) result {
		t.Helper()
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("publish -o json: %v\n%s", err, out)
		}
		return r
	}
	stdout, stderr, err = publish("--copy-to", "eu-west-1", "--share", "123456789012", "--ssm-prefix", "/imgctl/test")
	if err != nil {
		t.Fatalf("publish ami: %v\n%s\nmoto:\n%s", err, stderr, moto.Log())
	}
	// Progress (stderr is no terminal here: log lines) names the upload and the waits.
	for _, want := range []string{"✓ upload snapshot us-east-1", "✓ wait for AMI "} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	first := parse(stdout)
	if first.State != publication.StateAvailable || first.Image.String() != img || first.Reused || first.Upload == nil || first.Upload.Sent == 0 ||
		len(first.Regions) != 2 || first.Regions[0].Region != "us-east-1" || first.Regions[1].Region != "eu-west-1" {
		t.Fatalf("first publish: %s", stdout)
	}
	if first.Upload.Sent != first.Upload.DataBlocks || first.Upload.Sent >= first.Upload.Blocks {
		t.Errorf("sent %d blocks of %d (%d with data): zero blocks must not be sent", first.Upload.Sent, first.Upload.Blocks, first.Upload.DataBlocks)
	}
	ctx, c := t.Context(), env.Clients
	for _, g := range first.Regions {
		out, err := c.EC2(g.Region).DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{{Name: ptr("tag:" + publication.TagImage), Values: []string{img}}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Images) != 1 || *out.Images[0].ImageId != g.ImageID {
			t.Errorf("%s: AMIs tagged with the image: %d, want %s", g.Region, len(out.Images), g.ImageID)
		}
		p, err := c.SSM(g.Region).GetParameter(ctx, &ssm.GetParameterInput{Name: ptr(g.Parameter)})
		if err != nil || *p.Parameter.Value != g.ImageID {
			t.Errorf("%s: SSM %s: %v, want %s", g.Region, g.Parameter, err, g.ImageID)
		}
	}

	// A rerun uploads nothing and finds the same AMIs.
	stdout, stderr, err = publish("--copy-to", "eu-west-1", "--share", "123456789012", "--ssm-prefix", "/imgctl/test")
	if err != nil {
		t.Fatalf("publish ami again: %v\n%s", err, stderr)
	}
	again := parse(stdout)
	if !again.Reused || again.Upload != nil || again.Regions[0].ImageID != first.Regions[0].ImageID || again.Regions[1].ImageID != first.Regions[1].ImageID {
		t.Errorf("rerun: %s", stdout)
	}
	// Text output: one line per region.
	stdout, stderr, err = run(t, dir, append([]string{"-q", "publish", "ami", img}, aws...)...)
	if err != nil {
		t.Fatalf("publish ami (text): %v\n%s", err, stderr)
	}
	for _, want := range []string{first.Regions[0].ImageID, "found by its imgctl:image tag, nothing uploaded", "state     available"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("text output lacks %q:\n%s", want, stdout)
		}
	}

	// An image without a disk.
	rootfsImg := buildImages(t, dir, 1)[0]
	_, _, err = run(t, dir, append([]string{"-q", "publish", "ami", rootfsImg}, aws...)...)
	if err == nil || !strings.Contains(err.Error(), "has no raw disk (disk.simg): build it with --target raw or --target ami") {
		t.Errorf("publishing an image without a disk: %v", err)
	}

	// build --target ami: the same image, published (found by tag: already there).
	stdout, stderr, err = run(t, dir, append([]string{"-q", "build", "-f", sp, "--lock", lock, "--node-agent", agent, "--target", "ami"}, aws...)...)
	if err != nil {
		t.Fatalf("build --target ami: %v\n%s", err, stderr)
	}
	if lastLine(stdout) != img || !strings.Contains(stdout, "ami      us-east-1      "+first.Regions[0].ImageID+" available") {
		t.Errorf("build --target ami:\n%s", stdout)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func ptr[T any](v T) *T { return &v }

// TestPublishAMIPartial: when a region does not become available in time, publish ami fails
// naming it, and still prints how far the publication got (-o json: the record), so CI can
// see which regions are done; a rerun then finds everything by tag.
func TestPublishAMIPartial(t *testing.T) {
	a := awsfake.MotoForTest(t, "us-east-1")
	fake, endpoint := a.EC2, a.URL
	fake.SetImageState("eu-west-1", "", "pending", "") // the copy never becomes available

	dir := t.TempDir()
	f := buildtest.NewFixture(t)
	agent := f.WithBoot(t, buildtest.BootOptions{})
	stdout, stderr, err := run(t, dir, "-q", "build", "-f", bootSpec(t, f, dir), "--lock", filepath.Join(dir, "imgctl.lock"), "--node-agent", agent, "--target", "raw")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	img := lastLine(stdout)
	args := []string{"-q", "-o", "json", "publish", "ami", img, "--region", "us-east-1", "--copy-to", "eu-west-1", "--endpoint-url", endpoint, "--no-imds", "--wait", "2s"}
	stdout, _, err = run(t, dir, args...)
	if err == nil || !strings.Contains(err.Error(), "eu-west-1") {
		t.Fatalf("publish with a stuck copy: err = %v, want it to name eu-west-1", err)
	}
	var rec publication.Record
	if jerr := json.Unmarshal([]byte(stdout), &rec); jerr != nil {
		t.Fatalf("no record on stdout after a partial publish (%v):\n%s", jerr, stdout)
	}
	home, _ := rec.RegionState("us-east-1")
	away, _ := rec.RegionState("eu-west-1")
	if rec.State == publication.StateAvailable || home.State != publication.StateAvailable || home.ImageID == "" || away.State == publication.StateAvailable || away.ImageID == "" {
		t.Errorf("partial record: %s", stdout)
	}
	// Text output says the same.
	stdout, _, err = run(t, dir, append([]string{"-q"}, args[3:]...)...)
	if err == nil || !strings.Contains(stdout, "eu-west-1  "+away.ImageID) || !strings.Contains(stdout, "state     "+string(rec.State)) {
		t.Errorf("text output of a partial publish (%v):\n%s", err, stdout)
	}
	// build --target ami prints the image and how far publishing got, then fails saying so.
	stdout, _, err = run(t, dir, "-q", "build", "-f", filepath.Join(dir, "ami.yaml"), "--lock", filepath.Join(dir, "imgctl.lock"), "--node-agent", agent, "--target", "ami",
		"--region", "us-east-1", "--copy-to", "eu-west-1", "--endpoint-url", endpoint, "--no-imds", "--wait", "2s")
	if err == nil || !strings.Contains(err.Error(), "is built and stored, but target ami could not publish it") || !strings.Contains(err.Error(), "eu-west-1") {
		t.Errorf("build --target ami with a stuck copy: err = %v", err)
	}
	if lastLine(stdout) != img || !strings.Contains(stdout, "ami      us-east-1      "+home.ImageID+" available") || !strings.Contains(stdout, "ami      eu-west-1      "+away.ImageID+" ") {
		t.Errorf("build --target ami with a stuck copy:\n%s", stdout)
	}
}

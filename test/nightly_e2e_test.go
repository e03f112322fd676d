package test

import (
	"context"
	"encoding/json"
	"io"
	stdlog "log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	gcrname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/testenv"
)

const nightlySSMPrefix = "/imgctl/e2e-nightly"

// TestNightlyPipeline runs scripts/nightly end to end against local services only: moto_server
// (AMIs, SSM) and go-containerregistry's registry on loopback. A real build (the embedded
// default spec, the real kubelet from .cache/tools) passes the real boot check (the unmodified
// image in qemu, NodeConfig from the fake IMDS) and is signed, published as an AMI with the
// nightly SSM parameter, moved into nightly and pushed with the nightly tag. A source change
// with the lock enforced fails the build naming the change; an image whose kubelet cannot
// start fails the boot check, and nothing of it is signed, published, promoted or pushed.
// Promotion to staging is refused without a signature by nightly's check key and accepted with
// it; prod waits for staging's check (STAGING_CHECK_CMD) to pass.
func TestNightlyPipeline(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap", "moto_server")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	k8s := kubernetesTools(t)
	env := awsfake.MotoForTest(t, "us-east-1") // also sets the static test credentials the script's imgctl uses
	moto, c := env.Moto, env.Clients
	reg := httptest.NewServer(registry.New(registry.Logger(stdlog.New(io.Discard, "", 0))))
	defer reg.Close()
	repo := strings.TrimPrefix(reg.URL, "http://") + "/nodes"
	work, dir := t.TempDir(), t.TempDir()
	for _, k := range []string{"nightly", "staging"} {
		if _, err := imgctl(ctx, t, dir, "key", "generate", "--dir", filepath.Join(work, k)); err != nil {
			t.Fatal(err)
		}
	}
	key := func(stage, ext string) string { return filepath.Join(work, stage, "imgctl."+ext) }
	broken := filepath.Join(work, "broken-kubelet")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'kubelet: broken on purpose' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sources := func(kubelet string) string {
		return "kubelet=file://" + kubelet + "#path=/usr/bin/kubelet&mode=0755\n" +
			"kubelet=file://" + filepath.Join(k8s, "kubeadm") + "#path=/usr/bin/kubeadm&mode=0755\n"
	}
	good, bad := sources(filepath.Join(k8s, "kubelet")), sources(broken)
	store := filepath.Join(dir, "store")
	base := []string{
		"IMGCTL=" + imgctlBin, "NIGHTLY_STORE=" + store, "NIGHTLY_CACHE=" + filepath.Join(dir, "cache"),
		"NIGHTLY_LOCK_FILE=" + filepath.Join(work, "imgctl.lock"), "NIGHTLY_NODE_AGENT=" + nodeAgent(t),
		"NIGHTLY_CHECK_KEY=" + key("nightly", "key"), "NIGHTLY_CHECK_PUB=" + key("nightly", "pub"),
		"STAGING_CHECK_KEY=" + key("staging", "key"), "STAGING_CHECK_PUB=" + key("staging", "pub"),
		"REGISTRY=" + repo, "AMI_REGION=" + amiRegion, "AMI_SSM_PREFIX=" + nightlySSMPrefix,
		"AWS_ENDPOINT_URL=" + moto.URL, "AMI_NO_IMDS=1", "SOURCE_DATE_EPOCH=1764115200",
		"NIGHTLY_BOOT_TIMEOUT=10m",
	}
	script, err := filepath.Abs("../scripts/nightly")
	if err != nil {
		t.Fatal(err)
	}
	nightly := func(env []string, args ...string) (string, error) {
		t.Helper()
		start := time.Now()
		cmd := exec.CommandContext(ctx, script, args...)
		cmd.Dir = dir
		cmd.Env = append(append(os.Environ(), base...), env...)
		out, err := cmd.CombinedOutput()
		t.Logf("scripts/nightly %s (%v): %v\n%s", strings.Join(args, " "), time.Since(start).Round(time.Second), err, tail(string(out), 4000))
		return string(out), err
	}
	channel := func(name string) string {
		t.Helper()
		out, err := imgctl(ctx, t, dir, "channel", "show", name)
		if err != nil {
			return ""
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[len(lines)-1]
	}
	signedBy := func(img, stage string) bool {
		_, err := imgctl(ctx, t, dir, "verify", img, "--key", key(stage, "pub"))
		return err == nil
	}
	tag := func(name string) string { // the digest tag name points to in the registry, or ""
		t.Helper()
		ref, err := gcrname.ParseReference(repo + ":" + name)
		if err != nil {
			t.Fatal(err)
		}
		d, err := remote.Head(ref)
		if err != nil {
			return ""
		}
		return d.Digest.String()
	}
	amis := func(img string) []ec2types.Image {
		t.Helper()
		d, err := c.EC2(amiRegion).DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{
			{Name: aws.String("tag:" + publication.TagImage), Values: []string{img}}}})
		if err != nil {
			t.Fatal(err)
		}
		return d.Images
	}
	channelParam := func(ch string) string {
		return parameter(ctx, t, c, amiRegion, nightlySSMPrefix+"/"+ch+"/image_id")
	}
	builtDigest := regexp.MustCompile(`nightly: built (sha256:[0-9a-f]{64})`)

	// 1. The nightly build passes.
	out, err := nightly([]string{"NIGHTLY_LOCK=update", "NIGHTLY_SOURCES=" + good, "NIGHTLY_WORK=" + filepath.Join(work, "run1")}, "build")
	if err != nil {
		t.Fatalf("scripts/nightly build: %v", err)
	}
	m := regexp.MustCompile(`nightly: (sha256:[0-9a-f]{64}) is the nightly image`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("scripts/nightly build did not name the nightly image")
	}
	a := m[1]
	console, err := os.ReadFile(filepath.Join(work, "run1", "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"step=kubelet-healthy status=ok", `source="` + imdsSource + `"`, "step=hostname status=ok"} {
		if !consoleContains(string(console), want) {
			t.Errorf("the boot check's console lacks %q; its end:\n%s", want, tail(string(console), 3000))
		}
	}
	if got := channel("nightly"); got != a {
		t.Errorf("channel nightly = %q, want %s", got, a)
	}
	if !signedBy(a, "nightly") {
		t.Errorf("%s carries no signature by nightly's check key", a)
	}
	if got := tag("nightly"); got != a {
		t.Errorf("registry %s:nightly = %q, want %s", repo, got, a)
	}
	ami := amis(a)
	if len(ami) != 1 || ami[0].State != ec2types.ImageStateAvailable {
		t.Fatalf("AMIs of %s: %+v, want one, available", a, ami)
	}
	amiA := aws.ToString(ami[0].ImageId)
	if got := channelParam("nightly"); got != amiA {
		t.Errorf("%s/nightly/image_id = %q, want %s", nightlySSMPrefix, got, amiA)
	}
	lock, err := os.ReadFile(filepath.Join(work, "imgctl.lock"))
	if err != nil {
		t.Fatal(err)
	}

	// 2. A source changed while the lock is enforced (the default): the build fails naming it.
	out, err = nightly([]string{"NIGHTLY_SOURCES=" + bad}, "build")
	if err == nil {
		t.Fatal("scripts/nightly build --locked with a changed source passed")
	}
	for _, want := range []string{"nightly: build failed", "the lock file is out of date", "file://" + broken} {
		if !strings.Contains(out, want) {
			t.Errorf("the locked build's output lacks %q", want)
		}
	}
	if now, _ := os.ReadFile(filepath.Join(work, "imgctl.lock")); string(now) != string(lock) {
		t.Error("the locked build changed the lock file")
	}

	// 3. An image whose kubelet cannot start: the boot check fails, nothing else happens.
	out, err = nightly([]string{"NIGHTLY_LOCK=update", "NIGHTLY_SOURCES=" + bad, "NIGHTLY_WORK=" + filepath.Join(work, "run3")}, "build")
	if err == nil {
		t.Fatal("scripts/nightly build of an image with a broken kubelet passed")
	}
	m = builtDigest.FindStringSubmatch(out)
	if m == nil || m[1] == a {
		t.Fatalf("the broken build's image: %q", m)
	}
	b := m[1]
	if !regexp.MustCompile(`nightly: boot-check failed: ` + b + ` did not boot to a healthy kubelet`).MatchString(out) {
		t.Errorf("the output lacks the boot check's failure line for %s", b)
	}
	if !strings.Contains(out, "step=kubelet-healthy status=fail") {
		t.Errorf("the output does not name the failed step")
	}
	for _, stage := range []string{"== sign", "== publish-ami", "== promote-nightly", "== push"} {
		if strings.Contains(out, stage) {
			t.Errorf("after the failed boot check the pipeline ran %q", stage)
		}
	}
	if got := channel("nightly"); got != a {
		t.Errorf("channel nightly = %q after the failed run, want %s still", got, a)
	}
	if signedBy(b, "nightly") {
		t.Errorf("the image that failed its boot check (%s) is signed", b)
	}
	if got := tag("nightly"); got != a {
		t.Errorf("registry nightly = %q after the failed run, want %s still", got, a)
	}
	if v := imageVersion(ctx, t, dir, b); tag(strings.ReplaceAll(v, "+", "_")) != "" {
		t.Errorf("the failed image %s (%s) was pushed", b, v)
	}
	if n := amis(b); len(n) != 0 {
		t.Errorf("the failed image has AMIs: %+v", n)
	}
	if got := channelParam("nightly"); got != amiA {
		t.Errorf("%s/nightly/image_id = %q after the failed run, want %s still", nightlySSMPrefix, got, amiA)
	}

	// 4. The gate: staging takes only an image signed by nightly's check key.
	out, err = nightly([]string{"NIGHTLY_CHECK_PUB=" + key("staging", "pub")}, "promote", "--to", "staging")
	if err == nil || !strings.Contains(out, "nightly: promote-staging failed: "+a+" (channel nightly) carries no valid signature by nightly's check key") {
		t.Errorf("promote --to staging of an image without nightly's check signature: %v", err)
	}
	if got := channel("staging"); got != "" {
		t.Errorf("channel staging = %q after a refused promotion", got)
	}
	if _, err := nightly(nil, "promote", "--to", "staging"); err != nil {
		t.Fatalf("promote --to staging: %v", err)
	}
	if got := channel("staging"); got != a {
		t.Errorf("channel staging = %q, want %s", got, a)
	}
	if got := tag("staging"); got != a {
		t.Errorf("registry staging = %q, want %s", got, a)
	}
	if got := channelParam("staging"); got != amiA {
		t.Errorf("%s/staging/image_id = %q, want %s", nightlySSMPrefix, got, amiA)
	}

	// 5. prod waits for staging's checks.
	out, err = nightly(nil, "promote", "--to", "prod")
	if err == nil || !strings.Contains(out, "by staging's check key") {
		t.Errorf("promote --to prod before staging's checks: %v", err)
	}
	out, err = nightly([]string{"STAGING_CHECK_CMD=exit 3"}, "check", "staging")
	if err == nil || !strings.Contains(out, "nightly: check-staging failed: STAGING_CHECK_CMD failed on "+a) {
		t.Errorf("check staging with a failing check: %v", err)
	}
	if signedBy(a, "staging") {
		t.Error("a failed staging check signed the image")
	}
	checked := filepath.Join(work, "staging-checked")
	if _, err := nightly([]string{`STAGING_CHECK_CMD=echo "$IMGCTL_IMAGE $IMGCTL_VERSION $IMGCTL_AMI_SSM" > ` + checked}, "check", "staging"); err != nil {
		t.Fatalf("check staging: %v", err)
	}
	want := a + " " + imageVersion(ctx, t, dir, a) + " " + nightlySSMPrefix + "/staging/image_id\n"
	if got, _ := os.ReadFile(checked); string(got) != want {
		t.Errorf("STAGING_CHECK_CMD saw %q, want %q", got, want)
	}
	if _, err := nightly(nil, "promote", "--to", "prod"); err != nil {
		t.Fatalf("promote --to prod: %v", err)
	}
	if got := channel("prod"); got != a {
		t.Errorf("channel prod = %q, want %s", got, a)
	}
	if got := channelParam("prod"); got != amiA {
		t.Errorf("%s/prod/image_id = %q, want %s", nightlySSMPrefix, got, amiA)
	}
	if got := tag("prod"); got != a {
		t.Errorf("registry prod = %q, want %s", got, a)
	}
}

// imageVersion returns the version of the image digest in dir's store.
func imageVersion(ctx context.Context, t *testing.T, dir, digest string) string {
	t.Helper()
	out, err := imgctl(ctx, t, dir, "-o", "json", "images", "list")
	if err != nil {
		t.Fatal(err)
	}
	var list []struct{ Digest, Version string }
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	for _, i := range list {
		if i.Digest == digest {
			return i.Version
		}
	}
	t.Fatalf("image %s not in the store", digest)
	return ""
}

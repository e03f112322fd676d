package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/imgctl/imgctl/images/awschannel"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

func TestStoreAWS(t *testing.T) {
	dir := t.TempDir()
	out, _, err := run(t, dir, "store", "aws")
	if err != nil || !strings.Contains(out, "no AWS settings") {
		t.Fatalf("store aws without settings: %v\n%s", err, out)
	}
	if _, _, err := run(t, dir, "store", "aws", "--share", "123456789012"); err == nil || !strings.Contains(err.Error(), "regions") {
		t.Fatalf("settings without regions: %v", err)
	}
	if _, _, err := run(t, dir, "store", "aws", "--regions", "us-east-1,eu-west-1", "--ssm-prefix", "/imgctl/nodes"); err != nil {
		t.Fatal(err)
	}
	// Flags not given keep their value.
	out, _, err = run(t, dir, "store", "aws", "--share", "123456789012,210987654321")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"us-east-1, eu-west-1", "/imgctl/nodes", "123456789012, 210987654321"} {
		if !strings.Contains(out, w) {
			t.Errorf("store aws output lacks %q:\n%s", w, out)
		}
	}
	out, _, err = run(t, dir, "-o", "json", "store", "aws")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Store string               `json:"store"`
		AWS   *awschannel.Settings `json:"aws"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.AWS == nil || got.AWS.SSMPrefix != "/imgctl/nodes" || len(got.AWS.Regions) != 2 || len(got.AWS.Share) != 2 {
		t.Fatalf("store aws -o json: %v\n%s", err, out)
	}
	// A bad value is refused, naming the flag's field and the value; nothing changes.
	_, _, err = run(t, dir, "store", "aws", "--regions", "us-east-1,EU")
	if err == nil || !strings.Contains(err.Error(), "regions[1]") || !strings.Contains(err.Error(), `"EU"`) {
		t.Fatalf("bad region: %v", err)
	}
	if s, err := awschannel.LoadSettings(filepath.Join(dir, "store")); err != nil || len(s.Regions) != 2 {
		t.Fatalf("after a refused change: %+v, %v", s, err)
	}
	if _, _, err := run(t, dir, "store", "aws", "--clear", "--share", "123456789012"); err == nil {
		t.Fatal("--clear with other flags accepted")
	}
	if _, _, err := run(t, dir, "store", "aws", "--clear"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "store", awschannel.SettingsFile)); !os.IsNotExist(err) {
		t.Fatalf("--clear left the settings: %v", err)
	}
}

// TestPromoteMirrorsToSSM: with AWS settings, promote and rollback move PREFIX/CH/image_id in
// every region (against moto), refuse a parameter someone else changed unless --force, and
// refuse an image not published in every region.
func TestPromoteMirrorsToSSM(t *testing.T) {
	ctx := t.Context()
	a := awsfake.MotoForTest(t, "us-east-1")
	moto, c := a.Moto, a.Clients
	regions := []string{"us-east-1", "eu-west-1"}

	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// publish registers an AMI of version v in regions and records it.
	publish := func(v string, epoch int64, regions ...string) map[string]string {
		img := storetest.PutVersion(t, st, v, epoch)
		rec := publication.Record{Image: img.Digest(), Method: publication.MethodEBSDirect, Region: regions[0], State: publication.StateAvailable}
		amis := map[string]string{}
		for _, r := range regions {
			out, err := c.EC2(r).RegisterImage(ctx, &ec2.RegisterImageInput{Name: aws.String("imgctl-" + v)})
			if err != nil {
				t.Fatal(err)
			}
			amis[r] = aws.ToString(out.ImageId)
			rec.Regions = append(rec.Regions, publication.Region{Region: r, ImageID: amis[r], State: publication.StateAvailable})
		}
		if _, err := publication.Put(ctx, st, rec); err != nil {
			t.Fatal(err)
		}
		return amis
	}
	a1, a2 := publish("1.0.1", 1000, regions...), publish("1.0.2", 1001, regions...)
	publish("1.0.3", 1002, "us-east-1")
	param := func(r string) string {
		out, err := c.SSM(r).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/imgctl/nodes/nightly/image_id")})
		if err != nil {
			return err.Error()
		}
		return aws.ToString(out.Parameter.Value)
	}
	want := func(amis map[string]string) {
		t.Helper()
		for _, r := range regions {
			if got := param(r); got != amis[r] {
				t.Fatalf("%s: nightly parameter %q, want %q", r, got, amis[r])
			}
		}
	}
	awsArgs := []string{"--endpoint-url", moto.URL, "--no-imds"}
	if _, _, err := run(t, dir, "store", "aws", "--regions", strings.Join(regions, ","), "--ssm-prefix", "/imgctl/nodes"); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.0.1", "1.0.2"} {
		if _, stderr, err := run(t, dir, append([]string{"promote", v, "--to", "nightly"}, awsArgs...)...); err != nil {
			t.Fatalf("promote %s: %v\n%s", v, err, stderr)
		}
	}
	want(a2)
	if _, _, err := run(t, dir, append([]string{"rollback", "nightly"}, awsArgs...)...); err != nil {
		t.Fatal(err)
	}
	want(a1)

	_, _, err = run(t, dir, append([]string{"promote", "1.0.3", "--to", "nightly"}, awsArgs...)...)
	if err == nil || !strings.Contains(err.Error(), "not published in eu-west-1") {
		t.Fatalf("promoting an image missing in eu-west-1: %v", err)
	}

	if _, err := c.SSM("eu-west-1").PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/imgctl/nodes/nightly/image_id"),
		Value: aws.String("ami-0123456789abcdef0"), Type: ssmtypes.ParameterTypeString, Overwrite: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, dir, append([]string{"promote", "1.0.2", "--to", "nightly"}, awsArgs...)...)
	if !errors.Is(err, awschannel.ErrParameterChanged) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("promoting over someone else's parameter: %v", err)
	}
	want(map[string]string{"us-east-1": a1["us-east-1"], "eu-west-1": "ami-0123456789abcdef0"})
	if _, _, err := run(t, dir, append([]string{"rollback", "nightly", "--to", "1.0.2", "--force"}, awsArgs...)...); err != nil {
		t.Fatal(err)
	}
	want(a2)
}

// TestPromoteWithAWSSettingsNeedsCredentials: with AWS settings and no credentials, promote
// fails before moving the channel, naming the settings file and how to stop mirroring.
func TestPromoteWithAWSSettingsNeedsCredentials(t *testing.T) {
	for k, v := range map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": "", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "", "AWS_WEB_IDENTITY_TOKEN_FILE": ""} {
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	storetest.PutVersion(t, st, "1.0.1", 1000)
	if _, _, err := run(t, dir, "store", "aws", "--regions", "us-east-1", "--ssm-prefix", "/imgctl/nodes"); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, dir, "promote", "1.0.1", "--to", "nightly", "--no-imds")
	if !errors.Is(err, awsclient.ErrNoCredentials) || !strings.Contains(err.Error(), filepath.Join(dir, "store", "aws.json")) ||
		!strings.Contains(err.Error(), "imgctl store aws --clear") {
		t.Fatalf("promote without credentials: %v", err)
	}
	if out, _, err := run(t, dir, "channel", "list"); err != nil || !strings.Contains(out, "nightly  -") {
		t.Fatalf("nightly moved without AWS: %v\n%s", err, out)
	}
}

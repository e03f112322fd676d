package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/imgctl/imgctl/images/awschannel"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestGCAWS: gc --aws cleans the regions of the store's records (read before the store gc
// removes them with their images), of its AWS channel settings and of --region, removing the
// AMIs of the images the store gc removed, keeping those of kept images and those a channel
// parameter (under a record's or the settings' SSM prefix) names.
func TestGCAWS(t *testing.T) {
	a := awsfake.MotoForTest(t, "us-east-1") // also unsets AWS_REGION: gc --aws must be told its regions
	m, c := a.Moto, a.Clients

	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "/imgctl/nodes"
	kept := storetest.PutVersion(t, st, "v1", 100)
	gone := storetest.PutVersion(t, st, "v2", 200)
	for _, r := range []publication.Record{
		{Image: kept.Digest(), Region: "us-east-1", State: publication.StateAvailable, SSMPrefix: prefix},
		{Image: gone.Digest(), Region: "eu-west-1", State: publication.StateAvailable},
	} {
		if _, err := publication.Put(t.Context(), st, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := run(t, dir, "promote", "v1", "--to", "nightly"); err != nil {
		t.Fatal(err)
	}
	ami := func(region, version string, tagged bool) string {
		t.Helper()
		e := c.EC2(region)
		im, err := e.RegisterImage(t.Context(), &ec2.RegisterImageInput{Name: aws.String("imgctl-" + version + "-" + region), RootDeviceName: aws.String("/dev/xvda")})
		if err != nil {
			t.Fatal(err)
		}
		if tagged {
			d := gone.Digest()
			if version == "v1" {
				d = kept.Digest()
			}
			_, err = e.CreateTags(t.Context(), &ec2.CreateTagsInput{Resources: []string{*im.ImageId}, Tags: []ec2types.Tag{
				{Key: aws.String(publication.TagImage), Value: aws.String(d.String())},
				{Key: aws.String(publication.TagVersion), Value: aws.String(version)},
			}})
			if err != nil {
				t.Fatal(err)
			}
		}
		return *im.ImageId
	}
	keptEast := ami("us-east-1", "v1", true)
	goneWest := ami("eu-west-1", "v2", true)
	channelWest := ami("eu-west-1", "v2", true)
	untaggedWest := ami("eu-west-1", "v2", false)
	goneSouth := ami("ap-south-1", "v2", true)
	goneNorth := ami("eu-north-1", "v2", true) // no record nor --region names eu-north-1
	// The store's AWS channel settings name eu-central-1 and a prefix whose channel parameter
	// names channelEast.
	if err := awschannel.SaveSettings(t.Context(), st.Dir(), awschannel.Settings{Regions: []string{"eu-central-1"}, SSMPrefix: "/imgctl/chan"}); err != nil {
		t.Fatal(err)
	}
	goneCentral := ami("eu-central-1", "v2", true)
	channelEast := ami("us-east-1", "v2", true)
	if _, err := c.SSM("us-east-1").PutParameter(t.Context(), &ssm.PutParameterInput{
		Name: aws.String("/imgctl/chan/staging/image_id"), Value: aws.String(channelEast), Type: ssmtypes.ParameterTypeString,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SSM("eu-west-1").PutParameter(t.Context(), &ssm.PutParameterInput{
		Name: aws.String(prefix + "/prod/image_id"), Value: aws.String(channelWest), Type: ssmtypes.ParameterTypeString,
	}); err != nil {
		t.Fatal(err)
	}
	amis := func(region string) []string {
		t.Helper()
		out, err := c.EC2(region).DescribeImages(t.Context(), &ec2.DescribeImagesInput{Owners: []string{"self"}})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, im := range out.Images {
			ids = append(ids, *im.ImageId)
		}
		slices.Sort(ids)
		return ids
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	before := map[string][]string{}
	for _, r := range []string{"us-east-1", "eu-west-1", "ap-south-1", "eu-north-1", "eu-central-1"} {
		before[r] = amis(r)
	}

	args := []string{"gc", "--older-than", "0", "--aws", "--region", "ap-south-1", "--endpoint-url", m.URL, "--no-imds"}
	out, _, err := run(t, dir, append(args, "--dry-run")...)
	if err != nil {
		t.Fatalf("gc --aws --dry-run: %v\n%s", err, out)
	}
	// (moto makes a snapshot for each AMI, named in its mappings: those of the two AMIs go.)
	for _, want := range []string{
		"would deregister AMI " + goneWest + " (eu-west-1): image not in the store\n",
		"would deregister AMI " + goneSouth + " (ap-south-1): image not in the store\n",
		"would deregister AMI " + goneCentral + " (eu-central-1): image not in the store\n",
		"AWS (ap-south-1, eu-central-1, eu-west-1, us-east-1): would deregister 3 AMIs, delete 3 snapshots and 0 parameters; kept 3\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("gc --aws --dry-run output lacks %q:\n%s", want, out)
		}
	}
	for r, ids := range before {
		if got := amis(r); !slices.Equal(got, ids) {
			t.Errorf("the dry run changed %s: %v, then %v", r, ids, got)
		}
	}

	out, _, err = run(t, dir, append([]string{"-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("gc --aws: %v\n%s", err, out)
	}
	var doc struct {
		Regions []string
		AWS     struct{ DeregisteredImages []struct{ Region, ID string } }
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !slices.Equal(doc.Regions, []string{"ap-south-1", "eu-central-1", "eu-west-1", "us-east-1"}) || len(doc.AWS.DeregisteredImages) != 3 {
		t.Errorf("gc --aws -o json:\n%s", out)
	}
	for r, want := range map[string][]string{
		"us-east-1": sorted(keptEast, channelEast), "eu-west-1": sorted(channelWest, untaggedWest), "ap-south-1": nil, "eu-north-1": {goneNorth},
		"eu-central-1": nil,
	} {
		if got := amis(r); !slices.Equal(got, want) {
			t.Errorf("AMIs left in %s: %v, want %v", r, got, want)
		}
	}

	// Nothing names a region: a clear error.
	empty := t.TempDir()
	if _, _, err := run(t, empty, "gc", "--aws", "--endpoint-url", m.URL, "--no-imds"); err == nil || !strings.Contains(err.Error(), "no AWS region to clean: give --region") {
		t.Errorf("gc --aws with no region: %v", err)
	}
	if _, _, err := run(t, empty, "gc", "--region", "us-east-1"); err == nil || !strings.Contains(err.Error(), "--region needs --aws") {
		t.Errorf("gc --region without --aws: %v", err)
	}
}

// TestGCAWSNoCredentialsDeletesNothing: gc --aws checks the AWS configuration before the store
// gc, so a machine without credentials fails with nothing deleted.
func TestGCAWSNoCredentialsDeletesNothing(t *testing.T) {
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "", "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_WEB_IDENTITY_TOKEN_FILE": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": "", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
	} {
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := storetest.PutVersion(t, st, "v1", 100)
	_, _, err = run(t, dir, "gc", "--older-than", "0", "--aws", "--region", "us-east-1", "--no-imds")
	if !errors.Is(err, awsclient.ErrNoCredentials) {
		t.Fatalf("gc --aws without credentials: %v", err)
	}
	if _, err := st.Resolve(t.Context(), img.Digest().String()); err != nil {
		t.Errorf("gc --aws without credentials deleted the image: %v", err)
	}
}

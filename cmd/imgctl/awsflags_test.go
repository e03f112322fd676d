package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/imgctl/imgctl/images/ami"
)

// parseAMIFlags parses args as publish ami's flags and checks them.
func parseAMIFlags(t *testing.T, args ...string) (awsFlags, amiFlags, error) {
	t.Helper()
	var aws awsFlags
	var ami amiFlags
	fs := pflag.NewFlagSet("publish ami", pflag.ContinueOnError)
	aws.add(fs)
	ami.add(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	err := aws.check()
	if err == nil {
		err = ami.check(aws.region)
	}
	return aws, ami, err
}

// TestAMIFlagErrors: each bad flag fails before anything is loaded or uploaded, with a message
// naming the flag, the value and what was expected.
func TestAMIFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--region", "US-East-1"}, `--region: "US-East-1" is not an AWS region (expected a name like us-east-1)`},
		{[]string{"--region", "us-east-1", "--copy-to", "eu-west-1,mars"}, `--copy-to: "mars" is not an AWS region (expected a name like us-east-1)`},
		{[]string{"--region", "us-east-1", "--copy-to", "us-east-1"}, `--copy-to us-east-1: that is the region the AMI is registered in (--region); list only the other regions`},
		{[]string{"--region", "us-east-1", "--share", "123456789012,12345"}, `--share: "12345" is not an AWS account ID (expected 12 digits)`},
		{[]string{"--region", "us-east-1", "--share", "all"}, `--share: "all" is not an AWS account ID (expected 12 digits)`},
		{[]string{"--region", "us-east-1", "--method", "import-snapshot"}, `--method import-snapshot uploads the disk to S3 first: give --s3-bucket BUCKET (a bucket in the upload region the caller can write)`},
		{[]string{"--region", "us-east-1", "--method", "import-snapshot", "--s3-bucket", "My_Bucket"}, `--s3-bucket: "My_Bucket" is not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)`},
		{[]string{"--region", "us-east-1", "--s3-bucket", "images"}, `--s3-bucket is used only with --method import-snapshot (--method is ebs-direct)`},
		{[]string{"--region", "us-east-1", "--method", "scp"}, `--method "scp": expected ebs-direct or import-snapshot`},
		{[]string{"--region", "us-east-1", "--concurrency", "0"}, `--concurrency 0: expected 1 to 1024 blocks in flight`},
		{[]string{"--region", "us-east-1", "--wait", "0s"}, `--wait 0s: expected a positive duration like 45m`},
		{[]string{"--region", "us-east-1", "--ssm-prefix", "imgctl/nodes"}, `--ssm-prefix: SSM prefix "imgctl/nodes": must start with / and not end with one (expected a path like /imgctl/nodes)`},
		{[]string{"--region", "us-east-1", "--ssm-prefix", "/aws/nodes"}, `--ssm-prefix: SSM prefix "/aws/nodes": /aws and /ssm are reserved by AWS (expected a path like /imgctl/nodes)`},
		{[]string{"--region", "us-east-1", "--name-prefix", "nodes#"}, `--name-prefix "nodes#": AMI name "nodes#1.21.13-6.1.0-28-20261126.3f9a1c2b": '#' is not allowed (letters, digits and ( ) [ ] space . / - ' @ _)`},
		{[]string{"--endpoint-url", "localhost:5000"}, `--endpoint-url: endpoint URL "localhost:5000": expected http(s)://HOST[:PORT][/PATH]`},
	} {
		_, _, err := parseAMIFlags(t, tc.args...)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\n got %v\nwant %s", tc.args, err, tc.want)
		}
	}
}

// TestAMIFlagsNormalize: --kms-key-id implies --encrypted; --public and --share together are
// allowed; repeats count once; the defaults are the plan's.
func TestAMIFlagsNormalize(t *testing.T) {
	_, ami, err := parseAMIFlags(t, "--region", "us-east-1", "--copy-to", "eu-west-1, eu-west-1", "--copy-to", "ap-south-1",
		"--share", "123456789012,123456789012", "--public")
	if err != nil {
		t.Fatal(err)
	}
	if _, enc, err := parseAMIFlags(t, "--region", "us-east-1", "--kms-key-id", "arn:aws:kms:us-east-1:210987654321:key/k"); err != nil || !enc.encrypted {
		t.Errorf("--kms-key-id: encrypted %v, err %v", enc.encrypted, err)
	}
	if ami.encrypted || !ami.public || !slices.Equal(ami.copyTo, []string{"eu-west-1", "ap-south-1"}) || !slices.Equal(ami.share, []string{"123456789012"}) {
		t.Errorf("flags = %+v", ami)
	}
	_, ami, err = parseAMIFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	if ami.method != "ebs-direct" || ami.concurrency != 64 || ami.wait.Minutes() != 45 || ami.namePrefix != "imgctl-" || ami.encrypted {
		t.Errorf("defaults = %+v", ami)
	}
}

// isolateAWS points the SDK at no shared files and no environment credentials, and its
// instance metadata service at imds (a loopback server counting requests).
func isolateAWS(t *testing.T, imds string) {
	t.Helper()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_EC2_METADATA_DISABLED"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)  // unset, not empty: moto_server (a child) reads AWS_PROFILE="" as a profile
	}
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
}

// TestAWSFlagsNoIMDS: without credentials the error says what to set; with --no-imds (or
// AWS_EC2_METADATA_DISABLED=true) the instance metadata service is never asked, without it
// the SDK asks (so the test can tell).
func TestAWSFlagsNoIMDS(t *testing.T) {
	var hits atomic.Int64
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "no", http.StatusNotFound)
	}))
	defer imds.Close()
	isolateAWS(t, imds.URL)
	ctx := context.Background()
	f := awsFlags{region: "us-east-1", noIMDS: true}
	_, err := f.clients(ctx, nil)
	want := "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, give --profile or set AWS_PROFILE (the instance metadata service is not asked); looking for them: "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("--no-imds: err = %v\nwant %s", err, want)
	}
	if hits.Load() != 0 {
		t.Errorf("--no-imds: the metadata service got %d requests", hits.Load())
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	f.noIMDS = false
	if _, err := f.clients(ctx, nil); err == nil || hits.Load() != 0 {
		t.Errorf("AWS_EC2_METADATA_DISABLED: err = %v, %d metadata requests", err, hits.Load())
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "")
	if _, err := f.clients(ctx, nil); err == nil || hits.Load() == 0 {
		t.Errorf("with the metadata service allowed: err = %v, %d metadata requests (want > 0: else this test proves nothing)", err, hits.Load())
	}

	// Credentials but no region.
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	f = awsFlags{noIMDS: true}
	if _, err := f.clients(ctx, nil); err == nil || err.Error() != "no AWS region: give --region or set AWS_REGION" {
		t.Errorf("no region: err = %v", err)
	}
}

// TestAMIFlagsToOptions: every publish flag reaches ami.Publish's options.
func TestAMIFlagsToOptions(t *testing.T) {
	_, af, err := parseAMIFlags(t, "--region", "us-east-1", "--copy-to", "eu-west-1", "--share", "123456789012",
		"--name-prefix", "nodes-", "--method", "import-snapshot", "--s3-bucket", "disks", "--kms-key-id", "alias/nodes",
		"--concurrency", "16", "--wait", "10m", "--ssm-prefix", "/imgctl/nodes")
	if err != nil {
		t.Fatal(err)
	}
	o := af.options("us-east-1")
	want := ami.Options{Region: "us-east-1", CopyTo: []string{"eu-west-1"}, Share: []string{"123456789012"},
		NamePrefix: "nodes-", Method: "import-snapshot", Bucket: "disks", Encrypted: true, KMSKeyID: "alias/nodes",
		Concurrency: 16, Wait: 10 * time.Minute, SSMPrefix: "/imgctl/nodes", Tool: "imgctl " + version}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("options\n got %+v\nwant %+v", o, want)
	}
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
)

// awsFlags are how a command reaches AWS: --region, --endpoint-url, --profile, --no-imds. Every
// AWS command shares them (publish ami, build --target ami, promote and rollback with AWS
// channels, gc --aws).
type awsFlags struct {
	region, endpointURL, profile string
	noIMDS                       bool
}

// add adds all four flags.
func (f *awsFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.region, "region", "", "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's region)")
	f.addConnection(fs, "")
}

// addConnection adds the flags of a command whose regions come from elsewhere (the store's AWS
// settings or publication records): --endpoint-url, --profile, --no-imds. when, if not "",
// starts each help text ("with --aws: ").
func (f *awsFlags) addConnection(fs *pflag.FlagSet, when string) {
	fs.StringVar(&f.endpointURL, "endpoint-url", "", when+"send every AWS request to this URL (a VPC endpoint, or a test endpoint like moto_server)")
	fs.StringVar(&f.profile, "profile", "", when+"AWS shared-config profile (default: AWS_PROFILE, else default)")
	fs.BoolVar(&f.noIMDS, "no-imds", false, when+"never ask the EC2 instance metadata service for credentials or the region (also AWS_EC2_METADATA_DISABLED=true)")
}

// connectionSet names the first connection flag given, or "".
func (f *awsFlags) connectionSet() string {
	switch {
	case f.endpointURL != "":
		return "--endpoint-url"
	case f.profile != "":
		return "--profile"
	case f.noIMDS:
		return "--no-imds"
	}
	return ""
}

// check checks the flags' grammar, so that a typo fails before any work starts.
func (f *awsFlags) check() error {
	if f.region != "" {
		if err := awsclient.CheckRegion(f.region); err != nil {
			return fmt.Errorf("--region: %w", err)
		}
	}
	if f.endpointURL != "" {
		if err := awsclient.CheckEndpointURL(f.endpointURL); err != nil {
			return fmt.Errorf("--endpoint-url: %w", err)
		}
	}
	return nil
}

// clients loads the AWS configuration (credentials and region must be there) and returns the
// clients every AWS package takes.
func (f *awsFlags) clients(ctx context.Context, log *slog.Logger) (*awsclient.Clients, error) {
	return f.clientsIn(ctx, log, f.region)
}

// clientsIn is clients with region as the default region (a command whose regions come from
// the store, not from --region).
func (f *awsFlags) clientsIn(ctx context.Context, log *slog.Logger, region string) (*awsclient.Clients, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	cfg, err := awsclient.Load(ctx, awsclient.Options{Region: region, Profile: f.profile, EndpointURL: f.endpointURL, NoIMDS: f.noIMDS, Logger: log})
	if err != nil {
		return nil, err
	}
	return awsclient.NewClients(cfg), nil
}

// amiFlags are the publish options of imgctl publish ami and imgctl build --target ami.
type amiFlags struct {
	copyTo, share []string
	public        bool
	namePrefix    string
	encrypted     bool
	kmsKeyID      string
	method        string
	bucket        string
	concurrency   int
	wait          time.Duration
	ssmPrefix     string
}

func (f *amiFlags) add(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.copyTo, "copy-to", nil, "also copy the AMI to these regions, in parallel (comma-separated or repeated)")
	fs.StringSliceVar(&f.share, "share", nil, "give these AWS accounts (12 digits) launch permission on the AMIs and volume permission on their snapshots")
	fs.BoolVar(&f.public, "public", false, "make the AMIs public (launch permission for everyone)")
	fs.StringVar(&f.namePrefix, "name-prefix", publication.DefaultNamePrefix, "AMI names are PREFIX + the image version")
	fs.BoolVar(&f.encrypted, "encrypted", false, "encrypt the snapshot (with --kms-key-id, else the account's default EBS key)")
	fs.StringVar(&f.kmsKeyID, "kms-key-id", "", "KMS key (ID, ARN or alias) to encrypt the snapshot with (implies --encrypted)")
	fs.StringVar(&f.method, "method", publication.MethodEBSDirect, "how to upload the disk: "+publication.MethodEBSDirect+" (EBS direct APIs: only the blocks with data, incremental) or "+publication.MethodImportSnapshot+" (S3 upload + ImportSnapshot, where the EBS direct APIs are blocked; needs --s3-bucket)")
	fs.StringVar(&f.bucket, "s3-bucket", "", "--method "+publication.MethodImportSnapshot+": the S3 bucket to upload the disk to (in --region)")
	fs.IntVar(&f.concurrency, "concurrency", ami.DefaultConcurrency, "snapshot blocks in flight (EBS direct)")
	fs.DurationVar(&f.wait, "wait", ami.DefaultWait, "bound on each wait for AWS: the snapshot completing, each AMI becoming available")
	fs.StringVar(&f.ssmPrefix, "ssm-prefix", "", "write the AMI ID to the SSM parameter PREFIX/VERSION/image_id in every region (e.g. /imgctl/nodes)")
}

// check checks the publish options against each other and region, the upload region, and
// normalizes them (--kms-key-id implies --encrypted; repeated regions and accounts count
// once): images/ami's checks, with the flags' names.
func (f *amiFlags) check(region string) error {
	o := f.options(region)
	if err := o.Check(ami.FlagName); err != nil {
		return err
	}
	f.copyTo, f.share, f.encrypted = o.CopyTo, o.Share, o.Encrypted
	return nil
}

// Package awsclient loads the AWS configuration every imgctl AWS command shares: the standard
// credential chain (environment, shared files and profiles, SSO, web identity, container and
// instance roles), the region, an endpoint override (a VPC endpoint, or moto in tests), and
// clear errors when credentials or the region are missing. It also holds the grammars of the
// AWS identifiers imgctl takes from users (regions, account IDs).
package awsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// Options choose how to reach AWS.
type Options struct {
	// Region is the default region ("" = AWS_REGION, AWS_DEFAULT_REGION or the profile's).
	Region string
	// Profile is a shared-config profile ("" = AWS_PROFILE or default).
	Profile string
	// EndpointURL sends every service's requests to this URL (like the AWS CLI's
	// --endpoint-url): a VPC endpoint, or moto_server in tests. "" = AWS's endpoints.
	EndpointURL string
	// NoIMDS never asks the EC2 instance metadata service for credentials or the region (also
	// set by AWS_EC2_METADATA_DISABLED=true): outside EC2 the probe only adds a delay.
	NoIMDS bool
	// CredentialsTimeout bounds finding credentials (default 20 s).
	CredentialsTimeout time.Duration
	Logger             *slog.Logger // nil: discard
}

// Errors of Load (test with errors.Is).
var (
	ErrNoCredentials = errors.New("no AWS credentials found")
	ErrNoRegion      = errors.New("no AWS region")
)

// Load returns the configuration for o and checks that credentials and a region are there,
// so that a misconfigured machine fails before any work starts with a message saying what to
// set, not on its first request.
func Load(ctx context.Context, o Options) (aws.Config, error) {
	if o.Region != "" {
		if err := CheckRegion(o.Region); err != nil {
			return aws.Config{}, err
		}
	}
	var opts []func(*config.LoadOptions) error
	if o.Region != "" {
		opts = append(opts, config.WithRegion(o.Region))
	}
	if o.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(o.Profile))
	}
	if o.NoIMDS {
		opts = append(opts, config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	if o.EndpointURL != "" {
		if err := CheckEndpointURL(o.EndpointURL); err != nil {
			return aws.Config{}, err
		}
		opts = append(opts, config.WithBaseEndpoint(o.EndpointURL))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return aws.Config{}, fmt.Errorf("%w: give --region or set AWS_REGION", ErrNoRegion)
	}
	if err := CheckRegion(cfg.Region); err != nil {
		return aws.Config{}, err
	}
	timeout := o.CredentialsTimeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if cfg.Credentials == nil {
		return aws.Config{}, fmt.Errorf("%w: %s", ErrNoCredentials, credentialHint(o))
	}
	if _, err := cfg.Credentials.Retrieve(cctx); err != nil {
		if ctx.Err() != nil {
			return aws.Config{}, ctx.Err()
		}
		return aws.Config{}, fmt.Errorf("%w: %s; looking for them: %w", ErrNoCredentials, credentialHint(o), err)
	}
	return cfg, nil
}

func credentialHint(o Options) string {
	hint := "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, give --profile or set AWS_PROFILE"
	if o.NoIMDS || strings.EqualFold(os.Getenv("AWS_EC2_METADATA_DISABLED"), "true") {
		return hint + " (the instance metadata service is not asked)"
	}
	return hint + ", or run with an instance role"
}

// InRegion returns cfg for region r: the configuration every per-region client is made from.
func InRegion(cfg aws.Config, r string) aws.Config {
	c := cfg.Copy()
	c.Region = r
	return c
}

// CheckRegion accepts AWS region names: lowercase letters and digits in dash-separated parts,
// ending in a number, such as us-east-1, eu-central-2, us-gov-west-1 or cn-north-1.
func CheckRegion(r string) error {
	parts := strings.Split(r, "-")
	ok := len(r) <= 32 && len(parts) >= 3
	for i, p := range parts {
		if !ok {
			break
		}
		switch {
		case p == "":
			ok = false
		case i == len(parts)-1:
			ok = allIn(p, "0123456789")
		default:
			ok = allIn(p, "abcdefghijklmnopqrstuvwxyz")
		}
	}
	if !ok {
		return fmt.Errorf("%q is not an AWS region (expected a name like us-east-1)", r)
	}
	return nil
}

// CheckAccount accepts an AWS account ID: 12 digits.
func CheckAccount(a string) error {
	if len(a) != 12 || !allIn(a, "0123456789") {
		return fmt.Errorf("%q is not an AWS account ID (expected 12 digits)", a)
	}
	return nil
}

// CheckEndpointURL accepts an absolute http or https URL with a host and no credentials.
func CheckEndpointURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("endpoint URL %q: expected http(s)://HOST[:PORT][/PATH]", s)
	}
	return nil
}

func allIn(s, set string) bool {
	for _, c := range s {
		if !strings.ContainsRune(set, c) {
			return false
		}
	}
	return s != ""
}

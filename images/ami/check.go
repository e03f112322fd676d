package ami

import (
	"fmt"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
)

// Bounds and defaults of the publish options a front end offers (imgctl's flags, the Packer
// plugin's fields).
const (
	DefaultConcurrency = 64
	MaxConcurrency     = 1024
)

// exampleVersion is as long as an image version gets, for checking NamePrefix before the
// image (and so its version) exists.
const exampleVersion = "1.21.13-6.1.0-28-20261126.3f9a1c2b"

// FlagName names an option as imgctl's command-line flag: "copy-to" → "--copy-to".
func FlagName(option string) string { return "--" + option }

// Check checks the options a person gave, before anything is built or uploaded, against each
// other and o.Region (the upload region; "" when not known yet), and normalizes them: regions
// and accounts are trimmed and count once, KMSKeyID implies Encrypted. Unlike Publish, it
// takes no zero value as a default: Concurrency and Wait must be set. Errors name the option
// through name, given the option's flag name without dashes ("copy-to"): FlagName for the
// command line, a front end's own field names otherwise.
func (o *Options) Check(name func(option string) string) error {
	if o.Region != "" {
		if err := awsclient.CheckRegion(o.Region); err != nil {
			return fmt.Errorf("%s: %w", name("region"), err)
		}
	}
	for i, r := range o.CopyTo {
		r = strings.TrimSpace(r)
		if err := awsclient.CheckRegion(r); err != nil {
			return fmt.Errorf("%s: %w", name("copy-to"), err)
		}
		if r == o.Region {
			return fmt.Errorf("%s %s: that is the region the AMI is registered in (%s); list only the other regions", name("copy-to"), r, name("region"))
		}
		o.CopyTo[i] = r
	}
	o.CopyTo = dedupe(o.CopyTo)
	for i, a := range o.Share {
		a = strings.TrimSpace(a)
		if err := awsclient.CheckAccount(a); err != nil {
			return fmt.Errorf("%s: %w", name("share"), err)
		}
		o.Share[i] = a
	}
	o.Share = dedupe(o.Share)
	if _, err := publication.AMIName(o.NamePrefix, exampleVersion); err != nil {
		return fmt.Errorf("%s %q: %w", name("name-prefix"), o.NamePrefix, err)
	}
	switch o.Method {
	case publication.MethodEBSDirect:
		if o.Bucket != "" {
			return fmt.Errorf("%s is used only with %s %s (%s is %s)", name("s3-bucket"), name("method"), publication.MethodImportSnapshot, name("method"), o.Method)
		}
	case publication.MethodImportSnapshot:
		if o.Bucket == "" {
			return fmt.Errorf("%s %s uploads the disk to S3 first: give %s BUCKET (a bucket in the upload region the caller can write)", name("method"), publication.MethodImportSnapshot, name("s3-bucket"))
		}
		if err := checkBucket(o.Bucket); err != nil {
			return fmt.Errorf("%s: %w", name("s3-bucket"), err)
		}
	default:
		return fmt.Errorf("%s %q: expected %s or %s", name("method"), o.Method, publication.MethodEBSDirect, publication.MethodImportSnapshot)
	}
	if o.KMSKeyID != "" {
		o.Encrypted = true
	}
	if err := checkEncryption(*o, name); err != nil {
		return err
	}
	if o.Concurrency < 1 || o.Concurrency > MaxConcurrency {
		return fmt.Errorf("%s %d: expected 1 to %d blocks in flight", name("concurrency"), o.Concurrency, MaxConcurrency)
	}
	if o.Wait <= 0 {
		return fmt.Errorf("%s %s: expected a positive duration like 45m", name("wait"), o.Wait)
	}
	if o.SSMPrefix != "" {
		if err := publication.CheckSSMPrefix(o.SSMPrefix); err != nil {
			return fmt.Errorf("%s: %w", name("ssm-prefix"), err)
		}
	}
	return nil
}

// checkEncryption checks the encryption options against the method and the sharing.
func checkEncryption(o Options, name func(string) string) error {
	if o.KMSKeyID != "" && o.Method == publication.MethodEBSDirect && !strings.HasPrefix(o.KMSKeyID, "arn:") {
		return fmt.Errorf("%s %q: the EBS direct APIs take the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)", name("kms-key-id"), o.KMSKeyID)
	}
	switch {
	case o.Encrypted && o.Public:
		return fmt.Errorf("%s with %s: AWS does not make encrypted AMIs public", name("public"), name("encrypted"))
	case o.Encrypted && o.KMSKeyID == "" && len(o.Share) > 0:
		return fmt.Errorf("%s with %s needs %s: other accounts cannot use the default EBS key (give a customer managed key they may use)", name("share"), name("encrypted"), name("kms-key-id"))
	}
	return nil
}

// checkBucket accepts S3 bucket names: 3 to 63 lowercase letters, digits, dots and hyphens,
// starting and ending with a letter or digit.
func checkBucket(b string) error {
	ok := len(b) >= 3 && len(b) <= 63 && strings.Trim(b, "abcdefghijklmnopqrstuvwxyz0123456789.-") == "" &&
		!strings.ContainsAny(b[:1]+b[len(b)-1:], ".-") && !strings.Contains(b, "..")
	if !ok {
		return fmt.Errorf("%q is not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)", b)
	}
	return nil
}

// dedupe drops repeats, keeping the first of each.
func dedupe(list []string) []string {
	var out []string
	for _, s := range list {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

//go:generate go tool packer-sdc mapstructure-to-hcl2 -type Config

package builder

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/imgctl/imgctl/builders"
	amitarget "github.com/imgctl/imgctl/builders/ami"
	"github.com/imgctl/imgctl/builders/raw"
	"github.com/imgctl/imgctl/builders/squashfs"
	"github.com/imgctl/imgctl/builders/targets"
	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/cache"
)

// Config is the builder's HCL2 configuration. The fields are the imgctl CLI's flags of
// imgctl build (and imgctl publish ami for the AMI fields), named like the amazon builders'
// fields where those have one.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// The NodeImage spec file (imgctl build -f). Exactly one of spec_file and k8s_version.
	SpecFile string `mapstructure:"spec_file"`
	// Kubernetes version of the embedded default spec (imgctl build --k8s).
	K8sVersion string `mapstructure:"k8s_version"`
	// Variant of the embedded default spec (--flavor; only with k8s_version).
	Flavor string `mapstructure:"flavor"`
	// Replace a role's sources: ROLE=URI (--source).
	Sources []string `mapstructure:"sources"`
	// Targets to write: raw, pxe, rootfs, ami (default ["raw"]).
	Targets []string `mapstructure:"targets"`
	// The image store (--store; default .imgctl/store).
	Store string `mapstructure:"store"`
	// The download and layer cache (--cache; default $XDG_CACHE_HOME/imgctl).
	CacheDir string `mapstructure:"cache_dir"`
	// The lock file (--lock; default imgctl.lock).
	LockFile string `mapstructure:"lock_file"`
	// Fail instead of changing the lock file (--locked).
	Locked bool `mapstructure:"locked"`
	// Resolve every source again (--update-lock).
	UpdateLock bool `mapstructure:"update_lock"`
	// Where the artifact files are written (default output-BUILDNAME).
	OutputDirectory string `mapstructure:"output_directory"`
	// The static imgctl-node binary (--node-agent).
	NodeAgent string `mapstructure:"node_agent"`
	// URL prefix rewrites FROM=TO (--mirror).
	Mirrors []string `mapstructure:"mirrors"`
	// Only the cache, never the network (--offline).
	Offline bool `mapstructure:"offline"`
	// OpenPGP keyring for Debian repositories (--keyring).
	Keyring string `mapstructure:"keyring"`
	// Raw disk size, e.g. 3GiB (--disk-size).
	DiskSize string `mapstructure:"disk_size"`
	// Size of each root partition, e.g. 1GiB (--root-size).
	RootSize string `mapstructure:"root_size"`
	// Root squashfs compressor (--compression; default zstd).
	Compression string `mapstructure:"compression"`
	// Compressor level (--compression-level).
	CompressionLevel int `mapstructure:"compression_level"`
	// Sign the built image with this private key (--sign-key).
	SignKey string `mapstructure:"sign_key"`

	// AMI upload region (--region; default the AWS configuration's).
	Region string `mapstructure:"region"`
	// Regions the AMI is copied to (--copy-to).
	AMIRegions []string `mapstructure:"ami_regions"`
	// Accounts given launch permission (--share).
	AMIUsers []string `mapstructure:"ami_users"`
	// Only ["all"]: make the AMIs public (--public).
	AMIGroups []string `mapstructure:"ami_groups"`
	// AMI names are PREFIX + the image version (--name-prefix).
	AMINamePrefix string `mapstructure:"ami_name_prefix"`
	// Write PREFIX/VERSION/image_id in SSM in every region (--ssm-prefix).
	SSMPrefix string `mapstructure:"ssm_prefix"`
	// Encrypt the snapshot (--encrypted).
	EncryptBoot bool `mapstructure:"encrypt_boot"`
	// KMS key ARN to encrypt with (--kms-key-id).
	KMSKeyID string `mapstructure:"kms_key_id"`
	// ebs-direct or import-snapshot (--method).
	UploadMethod string `mapstructure:"upload_method"`
	// The S3 bucket of import-snapshot (--s3-bucket).
	S3Bucket string `mapstructure:"s3_bucket"`
	// Snapshot blocks in flight (--concurrency).
	UploadConcurrency int `mapstructure:"upload_concurrency"`
	// Send every AWS request to this URL (--endpoint-url).
	EndpointURL string `mapstructure:"endpoint_url"`
	// AWS shared-config profile (--profile).
	Profile string `mapstructure:"profile"`
	// Never ask the instance metadata service (--no-imds).
	NoIMDS bool `mapstructure:"no_imds"`
	// Bound on each wait for AWS, e.g. 45m (--wait).
	AWSWait string `mapstructure:"aws_wait"`

	ctx interpolate.Context

	// Checked and derived in Prepare.
	targetNames []string // the targets, split; ami replaced by raw (the AMI step publishes)
	publishAMI  bool
	topts       targets.Options
	amiOpts     ami.Options
	amiPoll     time.Duration // how often AWS states are asked for (tests; 0 = images/ami's default)
}

// Defaults of the fields that have one.
const (
	defaultLockFile = "imgctl.lock"
)

// prepare decodes raws into c, fills in the defaults and checks every field; errors name the
// field.
func (c *Config) prepare(raws ...any) error {
	err := config.Decode(c, &config.DecodeOpts{
		PluginType:         BuilderID,
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...)
	if err != nil {
		return err
	}
	var errs []error
	add := func(err error) { errs = append(errs, err) }

	switch {
	case c.SpecFile != "" && c.K8sVersion != "":
		add(errors.New("spec_file and k8s_version: give one of them, not both"))
	case c.SpecFile == "" && c.K8sVersion == "":
		add(errors.New("spec_file or k8s_version: give one of them (a NodeImage spec file, or the Kubernetes version of the embedded default spec)"))
	case c.SpecFile != "" && c.Flavor != "":
		add(errors.New("flavor chooses a variant of the embedded default spec: give it with k8s_version, not with spec_file"))
	}
	if _, err := builders.ParseSourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
		add(err) // the environment's, not a field's
	} else if oneSpec := (c.SpecFile != "") != (c.K8sVersion != ""); oneSpec {
		if _, _, err := c.setup().Check(); err != nil {
			add(fieldError(c, err))
		}
	}

	if len(c.Targets) == 0 {
		c.Targets = []string{raw.Name}
	}
	c.targetNames, c.publishAMI = nil, false
	for _, list := range c.Targets {
		for _, n := range strings.Split(list, ",") {
			n = strings.TrimSpace(n)
			switch {
			case !slices.Contains(targets.Names(), n):
				add(fmt.Errorf("targets: unknown target %q (supported: %s)", n, strings.Join(targets.Names(), ", ")))
			case n == amitarget.Name:
				c.publishAMI = true
				n = raw.Name // the AMI step publishes what raw writes
			}
			if !slices.Contains(c.targetNames, n) {
				c.targetNames = append(c.targetNames, n)
			}
		}
	}
	if c.Store == "" {
		c.Store = store.DefaultDir
	}
	if c.CacheDir == "" {
		dir, err := cache.DefaultDir()
		if err != nil {
			add(fmt.Errorf("cache_dir: %w", err))
		}
		c.CacheDir = dir
	}
	if c.LockFile == "" {
		c.LockFile = defaultLockFile
	}
	if c.Locked && c.UpdateLock {
		add(errors.New("locked and update_lock: give one of them, not both (locked fails when the lock would change; update_lock changes it)"))
	}
	if c.OutputDirectory == "" {
		c.OutputDirectory = "output-" + c.PackerBuildName
	}
	if c.OutputDirectory, err = filepath.Abs(c.OutputDirectory); err != nil {
		add(fmt.Errorf("output_directory: %w", err))
	}
	if c.topts.DiskSize, err = targets.ParseSize(c.DiskSize); err != nil {
		add(fmt.Errorf("disk_size: %w", err))
	}
	if c.topts.RootSize, err = targets.ParseSize(c.RootSize); err != nil {
		add(fmt.Errorf("root_size: %w", err))
	}
	sq, err := builders.SquashfsOptions{Compression: c.Compression, Level: c.CompressionLevel}.Normalize()
	switch {
	case err != nil && (c.Compression == "" || slices.Contains(squashfs.Compressors(), c.Compression)):
		add(fmt.Errorf("compression_level: %w", err))
	case err != nil:
		add(fmt.Errorf("compression: %w", err))
	}
	c.topts.Squashfs = sq
	if c.SignKey != "" {
		if _, err := sign.LoadPrivateKey(c.SignKey); err != nil {
			add(fmt.Errorf("sign_key: %w", err))
		}
	}
	errs = append(errs, c.prepareAMI()...)
	return errors.Join(errs...)
}

// setup is the build's setup from the config (without the logger), with SOURCE_DATE_EPOCH
// from the environment as imgctl build takes it.
func (c *Config) setup() builders.Setup {
	s := builders.Setup{SpecFile: c.SpecFile, Sources: c.Sources, SourceDateEpoch: os.Getenv("SOURCE_DATE_EPOCH"), Env: builders.EnvConfig{
		CacheDir: c.CacheDir, Offline: c.Offline, Mirrors: c.Mirrors, Keyring: c.Keyring, NodeAgent: c.NodeAgent,
	}}
	if c.SpecFile == "" {
		s.Kubernetes, s.Flavor = c.K8sVersion, c.Flavor
	}
	return s
}

// fieldError names the config field of an error of builders.Setup.Check.
func fieldError(c *Config, err error) error {
	var fe *builders.FieldError
	if errors.As(err, &fe) {
		field := map[string]string{"source": "sources", "mirror": "mirrors"}[fe.Field]
		if field == "" {
			field = fe.Field
		}
		return fmt.Errorf("%s %q: %w", field, fe.Value, fe.Err)
	}
	switch {
	case c.SpecFile != "":
		return fmt.Errorf("spec_file: %w", err)
	default:
		if c.Flavor != "" {
			return fmt.Errorf("k8s_version %q, flavor %q: %w", c.K8sVersion, c.Flavor, err)
		}
		return fmt.Errorf("k8s_version %q: %w", c.K8sVersion, err)
	}
}

// amiFields are the fields of the ami target, for the error when it is not among the targets.
func (c *Config) amiFields() []string {
	var set []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"region", c.Region != ""}, {"ami_regions", len(c.AMIRegions) > 0}, {"ami_users", len(c.AMIUsers) > 0},
		{"ami_groups", len(c.AMIGroups) > 0}, {"ami_name_prefix", c.AMINamePrefix != ""}, {"ssm_prefix", c.SSMPrefix != ""},
		{"encrypt_boot", c.EncryptBoot}, {"kms_key_id", c.KMSKeyID != ""}, {"upload_method", c.UploadMethod != ""},
		{"s3_bucket", c.S3Bucket != ""}, {"upload_concurrency", c.UploadConcurrency != 0}, {"endpoint_url", c.EndpointURL != ""},
		{"profile", c.Profile != ""}, {"no_imds", c.NoIMDS}, {"aws_wait", c.AWSWait != ""},
	} {
		if f.set {
			set = append(set, f.name)
		}
	}
	return set
}

// amiFieldNames are the fields named like images/ami's options (imgctl's flags).
var amiFieldNames = map[string]string{
	"region": "region", "copy-to": "ami_regions", "share": "ami_users", "public": "ami_groups",
	"name-prefix": "ami_name_prefix", "encrypted": "encrypt_boot", "kms-key-id": "kms_key_id",
	"method": "upload_method", "s3-bucket": "s3_bucket", "concurrency": "upload_concurrency",
	"wait": "aws_wait", "ssm-prefix": "ssm_prefix",
}

// amiFieldName names an option of images/ami by its field.
func amiFieldName(option string) string {
	if f, ok := amiFieldNames[option]; ok {
		return f
	}
	return option
}

// prepareAMI checks the AMI fields into c.amiOpts, with images/ami's checks (the CLI's).
func (c *Config) prepareAMI() []error {
	if !c.publishAMI {
		if set := c.amiFields(); len(set) > 0 {
			return []error{fmt.Errorf("%s: a field of the ami target, which this build does not write (targets: %s)", set[0], strings.Join(c.Targets, ","))}
		}
		return nil
	}
	o := ami.Options{
		Region: c.Region, CopyTo: slices.Clone(c.AMIRegions), Share: slices.Clone(c.AMIUsers),
		NamePrefix: cmp.Or(c.AMINamePrefix, publication.DefaultNamePrefix), SSMPrefix: c.SSMPrefix,
		Encrypted: c.EncryptBoot, KMSKeyID: c.KMSKeyID, Method: cmp.Or(c.UploadMethod, publication.MethodEBSDirect),
		Bucket: c.S3Bucket, Concurrency: cmp.Or(c.UploadConcurrency, ami.DefaultConcurrency), Wait: ami.DefaultWait,
	}
	for _, g := range c.AMIGroups {
		if g != "all" {
			return []error{fmt.Errorf("ami_groups %q: the only group is \"all\" (everyone: public AMIs)", g)}
		}
		o.Public = true
	}
	if c.AWSWait != "" {
		d, err := time.ParseDuration(c.AWSWait)
		if err != nil {
			return []error{fmt.Errorf("aws_wait %q: expected a duration like 45m", c.AWSWait)}
		}
		o.Wait = d
	}
	if c.EndpointURL != "" {
		if err := awsclient.CheckEndpointURL(c.EndpointURL); err != nil {
			return []error{fmt.Errorf("endpoint_url: %w", err)}
		}
	}
	if err := o.Check(amiFieldName); err != nil {
		return []error{err}
	}
	c.amiOpts = o
	return nil
}

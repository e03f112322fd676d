// Package ami publishes a stored image as AMIs: it uploads the image's sparse disk
// (disk.simg) to an EBS snapshot (EBS direct APIs, incremental on top of the previous
// publication of the same image name; or S3 + ImportSnapshot), registers it (UEFI, ENA,
// IMDSv2 only), copies the AMI to other regions in parallel, shares it, writes
// PREFIX/VERSION/image_id in SSM, and records every step with the image in the store. A rerun
// finds what an earlier run made by its imgctl:image tag instead of uploading again.
package ami

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

// Defaults of Options.
const (
	DefaultWait = 45 * time.Minute
	DefaultPoll = 10 * time.Second
)

// DiskArtifact is the artifact Publish uploads: the raw target's sparse disk.
const DiskArtifact = "disk.simg"

// Options say where and how to publish.
type Options struct {
	Region string   // where the disk is uploaded and the AMI registered
	CopyTo []string // other regions the AMI is copied to
	Share  []string // accounts given launch permission (and createVolumePermission on the snapshots)
	Public bool     // launch permission for everyone (group "all")
	// NamePrefix starts the AMI name, PREFIX+VERSION (default publication.DefaultNamePrefix).
	NamePrefix string
	// Method is publication.MethodEBSDirect (default) or publication.MethodImportSnapshot.
	Method string
	Bucket string // import-snapshot: the S3 bucket the disk goes through (required then)
	// Encrypted encrypts the snapshot, with KMSKeyID (a key ID or ARN; implies Encrypted) or
	// the account's default EBS key. Copies use their region's default EBS key.
	Encrypted   bool
	KMSKeyID    string
	Concurrency int // blocks in flight (ebssnap's default when 0)
	// SSMPrefix, if set, is where PREFIX/VERSION/image_id is written in every region.
	SSMPrefix string
	// Wait bounds each wait (snapshot completed, each AMI available; default DefaultWait);
	// Poll is how often states are asked for (default DefaultPoll).
	Wait, Poll time.Duration
	Tool       string // "imgctl VERSION", tagged on the snapshot and AMIs
	Logger     *slog.Logger
}

// withDefaults checks o and fills in its defaults.
func (o Options) withDefaults() (Options, error) {
	if o.Region == "" {
		return o, errors.New("publishing an AMI: no region (give --region)")
	}
	if err := awsclient.CheckRegion(o.Region); err != nil {
		return o, fmt.Errorf("--region: %w", err)
	}
	seen := map[string]bool{o.Region: true}
	for _, r := range o.CopyTo {
		if err := awsclient.CheckRegion(r); err != nil {
			return o, fmt.Errorf("--copy-to: %w", err)
		}
		if seen[r] {
			return o, fmt.Errorf("--copy-to: region %s named twice or equal to --region", r)
		}
		seen[r] = true
	}
	for _, a := range o.Share {
		if err := awsclient.CheckAccount(a); err != nil {
			return o, fmt.Errorf("--share: %w", err)
		}
	}
	o.Share = slices.Compact(slices.Sorted(slices.Values(o.Share)))
	if o.NamePrefix == "" {
		o.NamePrefix = publication.DefaultNamePrefix
	}
	switch o.Method {
	case "":
		o.Method = publication.MethodEBSDirect
	case publication.MethodEBSDirect:
	case publication.MethodImportSnapshot:
		if o.Bucket == "" {
			return o, errors.New("--method import-snapshot needs --s3-bucket (the disk is uploaded there first)")
		}
	default:
		return o, fmt.Errorf("--method %q: expected %s or %s", o.Method, publication.MethodEBSDirect, publication.MethodImportSnapshot)
	}
	if o.KMSKeyID != "" {
		o.Encrypted = true
	}
	if err := checkEncryption(o, FlagName); err != nil {
		return o, err
	}
	if o.SSMPrefix != "" {
		if err := publication.CheckSSMPrefix(o.SSMPrefix); err != nil {
			return o, fmt.Errorf("--ssm-prefix: %w", err)
		}
	}
	if o.Concurrency < 0 {
		return o, fmt.Errorf("--concurrency %d: expected a positive number", o.Concurrency)
	}
	if o.Wait <= 0 {
		o.Wait = DefaultWait
	}
	if o.Poll <= 0 {
		o.Poll = DefaultPoll
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// disk returns the image's disk.simg artifact, or an error saying which target makes one.
func disk(img store.Image) (manifest.Artifact, error) {
	for _, l := range img.Manifest.Layers {
		if l.MediaType == manifest.DiskSparseMediaType || l.Annotations[manifest.AnnotationTitle] == DiskArtifact {
			if l.MediaType != manifest.DiskSparseMediaType {
				return manifest.Artifact{}, fmt.Errorf("image %s: artifact %s has media type %q, expected %q", img.Config.Version, DiskArtifact, l.MediaType, manifest.DiskSparseMediaType)
			}
			return manifest.Artifact{Name: DiskArtifact, MediaType: l.MediaType, Digest: l.Digest, Size: l.Size, Annotations: l.Annotations}, nil
		}
	}
	return manifest.Artifact{}, fmt.Errorf("image %s has no raw disk (%s): build it with --target raw or --target ami", img.Config.Version, DiskArtifact)
}

// identityTags are the tags of the image's snapshot and AMIs: the image digest (what reruns
// and gc --aws find them by) and its versions.
func identityTags(img store.Image, tool string) map[string]string {
	t := map[string]string{
		publication.TagImage:   img.Digest().String(),
		publication.TagName:    img.Config.Name,
		publication.TagVersion: img.Config.Version,
	}
	if img.Config.Kubernetes != "" {
		t[publication.TagKubernetes] = img.Config.Kubernetes
	}
	if img.Config.Kernel != "" {
		t[publication.TagKernel] = img.Config.Kernel
	}
	if tool != "" {
		t[publication.TagTool] = tool
	}
	return t
}

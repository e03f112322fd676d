// Package ami is the AMI target: it writes exactly what the raw target writes (disk.simg, the
// kernel and the initrd), so "--target ami" stores the same image as "--target raw", and once
// the image is stored it publishes it as an AMI (builders.Publisher). Publishing itself is
// images/ami's; the target runs it with the settings the command line (or a plugin) gave.
package ami

import (
	"context"
	"errors"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/raw"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
)

// Name is the target's name on the command line and in specs.
const Name = "ami"

// PublishFunc publishes a stored image as an AMI and returns what was published (for
// imgctl: the publication record and upload statistics of images/ami.Publish).
type PublishFunc func(ctx context.Context, st *store.Store, img store.Image) (any, error)

// Options configure the AMI target.
type Options struct {
	Raw raw.Options // the disk, as the raw target writes it
	// Publish is called once the image is stored: images/ami.Publish with the AWS clients and
	// publish options, which are loaded and checked before the build starts.
	Publish PublishFunc
}

// Target writes the raw disk and publishes it.
type Target struct {
	raw     *raw.Target
	publish PublishFunc
}

// New returns the AMI target with o.
func New(o Options) (*Target, error) {
	if o.Publish == nil {
		return nil, errors.New("target ami publishes to AWS and needs its settings (imgctl build --target ami --region REGION …; see imgctl publish ami --help)")
	}
	return &Target{raw: raw.New(o.Raw), publish: o.Publish}, nil
}

// Name implements builders.Target.
func (*Target) Name() string { return Name }

// Write implements builders.Target: the raw target's artifacts, unchanged.
func (t *Target) Write(ctx context.Context, s builders.Steps) ([]manifest.Artifact, error) {
	return t.raw.Write(ctx, s)
}

// Publish implements builders.Publisher.
func (t *Target) Publish(ctx context.Context, st *store.Store, img store.Image) (any, error) {
	return t.publish(ctx, st, img)
}

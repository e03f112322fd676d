// Package rootfs is the rootfs target: the canonical rootfs tar itself, for tools that build
// their own formats from it.
package rootfs

import (
	"context"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/images/manifest"
)

// Name is the target's name on the command line and in specs.
const Name = "rootfs"

// Target publishes rootfs.tar.
type Target struct{}

// New returns the rootfs target.
func New() *Target { return &Target{} }

// Name implements builders.Target.
func (*Target) Name() string { return Name }

// StoresRootfs implements builders.RootfsStorer: this target publishes the tar.
func (*Target) StoresRootfs() bool { return true }

// Write implements builders.Target.
func (*Target) Write(ctx context.Context, s builders.Steps) ([]manifest.Artifact, error) {
	r, err := s.StoredRootfs(ctx)
	if err != nil {
		return nil, err
	}
	return []manifest.Artifact{{Name: "rootfs.tar", MediaType: manifest.RootfsMediaType, Digest: r.Digest, Size: r.Size}}, nil
}

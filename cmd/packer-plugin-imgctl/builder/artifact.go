package builder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/store"
)

// Artifact is a build's result: the files in output_directory, the image in the store and
// the AMIs published.
type Artifact struct {
	Digest  string            // the image manifest's digest, sha256:…
	Version string            // the image's readable version
	AMIs    map[string]string // region → AMI ID
	files   []string

	// What Destroy needs to unpublish the regions this build published to first.
	unpublish []string
	store     *store.Store
	image     store.Image
	clients   *awsclient.Clients
	log       *slog.Logger
}

// BuilderId implements packer.Artifact.
func (*Artifact) BuilderId() string { return BuilderID }

// Files implements packer.Artifact: the files written into output_directory.
func (a *Artifact) Files() []string { return slices.Clone(a.files) }

// Id implements packer.Artifact: region:ami-… pairs sorted by region, comma-separated (as
// the amazon builders' artifacts), or without AMIs the image digest.
func (a *Artifact) Id() string {
	if len(a.AMIs) == 0 {
		return a.Digest
	}
	return a.amiList()
}

// amiList is "region:ami-…,…" sorted by region; "" without AMIs.
func (a *Artifact) amiList() string {
	var parts []string
	for _, r := range slices.Sorted(maps.Keys(a.AMIs)) {
		parts = append(parts, r+":"+a.AMIs[r])
	}
	return strings.Join(parts, ",")
}

// String implements packer.Artifact.
func (a *Artifact) String() string {
	s := fmt.Sprintf("imgctl image %s (%s)", a.Version, a.Digest)
	if len(a.files) > 0 {
		s += fmt.Sprintf("\nfiles: %s", strings.Join(a.files, ", "))
	}
	if len(a.AMIs) > 0 {
		s += "\nAMIs: " + a.amiList()
	}
	return s
}

// State implements packer.Artifact: "generated_data" is the build's generated variables.
func (a *Artifact) State(name string) any {
	if name == "generated_data" {
		return a.generatedData()
	}
	return nil
}

func (a *Artifact) generatedData() map[string]any {
	return map[string]any{GeneratedImageDigest: a.Digest, GeneratedImageVersion: a.Version, GeneratedAMIs: a.amiList()}
}

// Destroy implements packer.Artifact: it removes the files and, in the regions this build
// published to first, the AMIs, their snapshots and version parameters (as the amazon
// builders' artifacts deregister their AMIs). The image stays in the store (imgctl gc removes
// images no channel needs).
func (a *Artifact) Destroy() error {
	var errs []error
	if len(a.unpublish) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := ami.Unpublish(ctx, a.store, a.image, a.clients, a.unpublish, a.log); err != nil {
			errs = append(errs, err)
		} else {
			for _, r := range a.unpublish {
				delete(a.AMIs, r)
			}
			a.unpublish = nil
		}
	}
	for _, f := range a.files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

package builders

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/layers/spec"
	"github.com/imgctl/imgctl/layers/tarentry"
)

// volatileRoles are the layers a routine update changes on its own: a kubelet patch release,
// a new bootstrap agent. The root squashfs stores their files' data (and image.json's, which
// every build regenerates) after all other data, so such an update leaves the bytes before it
// unchanged and an incremental upload of the disk (AMI snapshots) sends little more than them.
var volatileRoles = []spec.Role{spec.RoleKubelet, spec.RoleBootstrap}

// lateFilesLocked returns, sorted, the rootfs paths (like "usr/bin/kubelet") whose data the
// root squashfs stores last: image.json and the regular files of the volatile layers, read
// from the layer tars' headers. A file a volatile layer puts behind a symlinked directory
// (bin/kubelet with /bin -> usr/bin) is not recognized and stays in path order. Call with
// b.mu held.
func (b *Build) lateFilesLocked(ctx context.Context) ([]string, error) {
	if b.late != nil {
		return b.late, nil
	}
	late := []string{strings.TrimPrefix(imageinfo.Path, "/")}
	for _, l := range b.layers {
		if !slices.Contains(volatileRoles, l.Role) {
			continue
		}
		f, err := b.opts.Env.Cache.Open(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("listing the %s layer's files (stored last in the squashfs): %w", l.Role, err)
		}
		err = tarentry.Each(ctx, io.NewSectionReader(f, 0, l.Size), func(hdr *tar.Header, _ io.Reader) error {
			if hdr.Typeflag != tar.TypeReg {
				return nil
			}
			name, err := tarentry.CleanName(hdr.Name)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(path.Base(name), ".wh.") {
				late = append(late, name)
			}
			return nil
		})
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("listing the %s layer's files (stored last in the squashfs): layer %s: %w", l.Role, l.Digest, err)
		}
	}
	slices.Sort(late)
	b.late = slices.Compact(late)
	return b.late, nil
}

// lateKey identifies a late file set in the squashfs cache key.
func lateKey(late []string) string {
	h := sha256.New()
	for _, p := range late {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return "late sha256:" + hex.EncodeToString(h.Sum(nil))
}

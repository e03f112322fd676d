package builders

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/layers/assemble"
	"github.com/imgctl/imgctl/layers/compose"
	"github.com/imgctl/imgctl/layers/spec"
)

// The root squashfs stores the data of some layers' files after all other data, in groups
// (squashfs.Options.Late), each starting at a 4 KiB boundary, the least often changed first:
//
//  1. the kernel layer's files: a kernel upgrade changes them all (new release directory),
//     rarely, and they are big; in path order (/boot, /usr/lib/modules) they would move every
//     file after them by an amount that is not a multiple of 4 KiB;
//  2. the runtime layer's (containerd, runc: Debian security updates);
//  3. the extra layers' (site files, baked configuration);
//  4. the files a routine update changes on its own: a kubelet patch release, a new bootstrap
//     agent;
//  5. image.json, last: every build regenerates it (an extra executable changes its size), and
//     in path order etc/imgctl/image.json comes before usr/bin/kubelet.
//
// So an update of one of them leaves the data before its group as it was and moves the data
// after it by whole 4 KiB blocks: a node updating in place reuses those blocks of its running
// root by hash (images/update.PlanBlocks) and an incremental upload of the disk (AMI snapshots)
// sends little more than the changed group. A base layer change still moves the base files
// after it (they stay in path order), but none of the groups' blocks.
var lateGroups = map[spec.Role]int{spec.RoleKernel: 1, spec.RoleRuntime: 2, spec.RoleExtra: 3, spec.RoleKubelet: 4, spec.RoleBootstrap: 4}

// imageInfoGroup is image.json's late group.
const imageInfoGroup = 5

// lateFile is a rootfs path (like "usr/bin/kubelet") whose data the root squashfs stores in a
// late group.
type lateFile struct {
	path  string
	group int
}

// lateFilesLocked returns, sorted by path, the late files of the build: image.json and the
// regular files the layers of lateGroups supply to the rootfs, by their canonical paths (a
// kernel's lib/modules/... is usr/lib/modules/... behind merged /usr's symlink), read from the
// layer tars' headers the way composing the rootfs places them. Call with b.mu held.
func (b *Build) lateFilesLocked(ctx context.Context) ([]lateFile, error) {
	if b.late != nil {
		return b.late, nil
	}
	inputs, closeInputs, err := openLayers(b.opts.Env, b.layers)
	if err != nil {
		return nil, fmt.Errorf("listing the layers' files (the squashfs stores some last): %w", err)
	}
	defer closeInputs()
	files, err := compose.Index(ctx, inputs)
	if err != nil {
		return nil, fmt.Errorf("listing the layers' files (the squashfs stores some last): %w", err)
	}
	late := []lateFile{{strings.TrimPrefix(imageinfo.Path, "/"), imageInfoGroup}}
	err = files.Walk(func(f compose.File) error {
		if g := lateGroups[b.layers[f.Input].Role]; g != 0 && f.Size > 0 {
			late = append(late, lateFile{f.Path, g})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(late, func(x, y lateFile) int { return strings.Compare(x.path, y.path) })
	b.late = slices.CompactFunc(late, func(x, y lateFile) bool { return x.path == y.path })
	return b.late, nil
}

// lateGroupOf is path's late group in late (sorted by path), 0 if it has none.
func lateGroupOf(late []lateFile, path string) int {
	i, ok := slices.BinarySearchFunc(late, path, func(f lateFile, p string) int { return strings.Compare(f.path, p) })
	if !ok {
		return 0
	}
	return late[i].group
}

// lateKey identifies the late groups in the squashfs cache key without listing them (which
// reads every layer's headers): they follow from the layers' roles and contents, in order, and
// lateGroups.
func lateKey(layers []assemble.Layer) string {
	h := sha256.New()
	for _, r := range spec.Roles() {
		fmt.Fprintf(h, "%s=%d\n", r, lateGroups[r])
	}
	fmt.Fprintf(h, "image.json=%d\n", imageInfoGroup)
	for _, l := range layers {
		fmt.Fprintf(h, "%s %s\n", l.Role, l.Digest)
	}
	return "late-groups sha256:" + hex.EncodeToString(h.Sum(nil))
}

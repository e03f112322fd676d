// Package imagediff tells what an upgrade from image A to image B changes: the layers by role,
// the boot artifacts, the files of the root filesystem, the root's 4 KiB blocks, and how many
// bytes a disk node's update from A to B fetches (imgctl images diff).
package imagediff

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
)

const rootArtifact = manifest.RootSquashfsArtifact

// Kinds of a layer's or artifact's change besides Added, Removed and Changed.
const Same = "same"

// Image names one side of the diff.
type Image struct {
	Digest     string `json:"digest"`
	Version    string `json:"version"`
	Kubernetes string `json:"kubernetes,omitempty"`
	Kernel     string `json:"kernel,omitempty"`
}

// Version is one side of a layer.
type Version struct {
	Digest  string `json:"digest"`
	Version string `json:"version,omitempty"`
	Size    int64  `json:"size"`
}

// Layer is one composed layer, matched by role (the n-th layer of a role in A with the n-th of
// that role in B).
type Layer struct {
	Role   string   `json:"role"`
	Change string   `json:"change"` // same, changed, added, removed
	Old    *Version `json:"old,omitempty"`
	New    *Version `json:"new,omitempty"`
}

// Blob is one side of a boot artifact.
type Blob struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// Artifact is one boot artifact (vmlinuz, initrd.img, rootfs.squashfs) of the two images.
type Artifact struct {
	Name   string `json:"name"`
	Change string `json:"change"` // same, changed, added, removed
	Old    *Blob  `json:"old,omitempty"`
	New    *Blob  `json:"new,omitempty"`
}

// Report is the difference between two images.
type Report struct {
	A      Image      `json:"a"`
	B      Image      `json:"b"`
	Layers []Layer    `json:"layers"`
	Boot   []Artifact `json:"boot"`
	// Files is nil when either image has no root squashfs; FilesMissing says why.
	Files        *Files `json:"files,omitempty"`
	FilesMissing string `json:"filesMissing,omitempty"`
	// Blocks and Update are nil when either image has no root squashfs; BlocksMissing says why.
	Blocks        *Blocks `json:"blocks,omitempty"`
	Update        *Update `json:"update,omitempty"`
	BlocksMissing string  `json:"blocksMissing,omitempty"`
}

// Options configure Diff.
type Options struct {
	// NoFiles skips the files comparison (it reads and hashes both roots).
	NoFiles bool
	Logger  *slog.Logger
}

// Diff compares images a and b of st.
func Diff(ctx context.Context, st *store.Store, a, b store.Image, o Options) (*Report, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Report{A: imageOf(a), B: imageOf(b), Layers: diffLayers(a.Config.Layers, b.Config.Layers)}
	artA, artB := artifacts(a), artifacts(b)
	for _, name := range []string{manifest.KernelArtifact, manifest.InitrdArtifact, rootArtifact} {
		r.Boot = append(r.Boot, diffArtifact(name, artA[name], artB[name]))
	}
	rootA, errA := rootOf(st, a, artA)
	rootB, errB := rootOf(st, b, artB)
	missing := ""
	switch {
	case errA != nil:
		missing = errA.Error()
	case errB != nil:
		missing = errB.Error()
	}
	if missing != "" {
		r.FilesMissing, r.BlocksMissing = missing, missing
		return r, nil
	}
	if !o.NoFiles {
		start := time.Now()
		f, err := diffFiles(ctx, rootA.squash(), rootB.squash())
		if err != nil {
			return nil, err
		}
		r.Files = f
		o.Logger.Debug("compared the root filesystems", "changes", len(f.Changes), "unchanged", f.Unchanged, "took", time.Since(start))
	} else {
		r.FilesMissing = "not compared (--no-files)"
	}
	start := time.Now()
	blocks, err := diffBlocks(ctx, rootA, rootB)
	if err != nil {
		return nil, err
	}
	r.Blocks = blocks
	r.Update = updateCost(blocks, rootB, r.Boot)
	o.Logger.Debug("compared the root blocks", "blocks", blocks.Blocks, "fetch", blocks.Fetch, "took", time.Since(start))
	return r, nil
}

func imageOf(i store.Image) Image {
	return Image{Digest: i.Digest().String(), Version: i.Config.Version, Kubernetes: i.Config.Kubernetes, Kernel: i.Config.Kernel}
}

func artifacts(i store.Image) map[string]manifest.Artifact {
	out := map[string]manifest.Artifact{}
	for _, a := range manifest.Artifacts(i.Manifest) {
		out[a.Name] = a
	}
	return out
}

func diffArtifact(name string, a, b manifest.Artifact) Artifact {
	out := Artifact{Name: name}
	if a.Digest != "" {
		out.Old = &Blob{Digest: a.Digest.String(), Size: a.Size}
	}
	if b.Digest != "" {
		out.New = &Blob{Digest: b.Digest.String(), Size: b.Size}
	}
	out.Change = change(out.Old != nil, out.New != nil, a.Digest == b.Digest)
	return out
}

func change(inA, inB, equal bool) string {
	switch {
	case inA && !inB:
		return Removed
	case !inA && inB:
		return Added
	case equal:
		return Same
	}
	return Changed
}

// diffLayers matches layers by role, in order within a role, listed in B's order then the
// layers only A has.
func diffLayers(a, b []manifest.Layer) []Layer {
	byRole := func(ls []manifest.Layer) map[string][]manifest.Layer {
		m := map[string][]manifest.Layer{}
		for _, l := range ls {
			m[l.Role] = append(m[l.Role], l)
		}
		return m
	}
	ra, rb := byRole(a), byRole(b)
	out := []Layer{}
	seen := map[string]int{}
	add := func(role string, la, lb *manifest.Layer) {
		l := Layer{Role: role}
		if la != nil {
			l.Old = &Version{Digest: la.Digest.String(), Version: la.Version, Size: la.Size}
		}
		if lb != nil {
			l.New = &Version{Digest: lb.Digest.String(), Version: lb.Version, Size: lb.Size}
		}
		l.Change = change(la != nil, lb != nil, la != nil && lb != nil && la.Digest == lb.Digest)
		out = append(out, l)
	}
	for _, lb := range b {
		i := seen[lb.Role]
		seen[lb.Role]++
		if i < len(ra[lb.Role]) {
			add(lb.Role, &ra[lb.Role][i], &lb)
		} else {
			add(lb.Role, nil, &lb)
		}
	}
	for _, la := range a {
		i := seen["a:"+la.Role]
		seen["a:"+la.Role]++
		if i >= len(rb[la.Role]) {
			add(la.Role, &la, nil)
		}
	}
	return out
}

// root is an image's root blob: the squashfs and, after it, its dm-verity hash area (if any).
type root struct {
	name   string // "rootfs.squashfs of image VERSION"
	path   string
	blob   manifest.Artifact
	verity verityParams
}

func (r root) squash() squashRoot {
	size := r.blob.Size
	if r.verity.ok {
		size = r.verity.offset
	}
	return squashRoot{name: r.name, path: r.path, size: size}
}

func rootOf(st *store.Store, img store.Image, arts map[string]manifest.Artifact) (root, error) {
	a, ok := arts[rootArtifact]
	if !ok {
		return root{}, fmt.Errorf("image %s (%s) has %w (build it with imgctl's raw or pxe target)", img.Config.Version, img.Digest(), errNoRoot)
	}
	p, err := st.BlobPath(a.Digest)
	if err != nil {
		return root{}, fmt.Errorf("image %s: %s: %w", img.Config.Version, rootArtifact, err)
	}
	v, err := verityOf(a)
	if err != nil {
		return root{}, fmt.Errorf("image %s: %s: %w", img.Config.Version, rootArtifact, err)
	}
	return root{name: fmt.Sprintf("%s of image %s", rootArtifact, img.Config.Version), path: p, blob: a, verity: v}, nil
}

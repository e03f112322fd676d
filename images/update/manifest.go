package update

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/images/boot/verity"
)

// The parts of an imgctl image manifest a node reads to install it in place. images/manifest
// writes them (and re-exports these names); they are here so that the node agent, which may not
// import images/manifest, reads the same keys.
const (
	// OCIManifestMediaType is the media type of an OCI image manifest.
	OCIManifestMediaType = "application/vnd.oci.image.manifest.v1+json"
	// ArtifactType is the artifactType of every imgctl image manifest.
	ArtifactType = "application/vnd.imgctl.image.v1"

	AnnotationTitle             = "org.opencontainers.image.title"   // a layer's artifact name
	AnnotationVersion           = "org.opencontainers.image.version" // the image's readable version
	AnnotationKubernetesVersion = "dev.imgctl.kubernetes.version"    // the image's Kubernetes version
	AnnotationArchitecture      = "dev.imgctl.architecture"          // the image's architecture, a GOARCH name (amd64)
	AnnotationKernelCmdline     = "dev.imgctl.kernel.cmdline"        // the spec's kernel command line, space-separated
	AnnotationRootDigest        = "dev.imgctl.root.digest"           // the root blob's digest, sha256:HEX
	AnnotationRootSize          = "dev.imgctl.root.size"             // the root blob's size in bytes
	// AnnotationVerityRootHash is the root blob's dm-verity root hash (64 lower-case hex).
	AnnotationVerityRootHash = "dev.imgctl.root.verity.roothash"
	// AnnotationVerityOffset is where in the root blob its verity superblock starts (bytes; the
	// squashfs's size rounded up to 4 KiB).
	AnnotationVerityOffset = "dev.imgctl.root.verity.offset"

	KernelArtifact = "vmlinuz"
	InitrdArtifact = "initrd.img"
	RootArtifact   = "rootfs.squashfs"
)

// BlockSize is the unit of the block plan: dm-verity's data block.
const BlockSize = verity.BlockSize

// MaxManifestBytes bounds a manifest a node reads.
const MaxManifestBytes = 4 << 20

// Blob is a content-addressed blob of an image.
type Blob struct {
	Digest string // sha256:HEX
	Size   int64
}

// Image is what a node needs to install an image in place, read from its manifest.
type Image struct {
	Digest       string // the manifest's digest
	Version      string
	Kubernetes   string
	Architecture string
	// Root is rootfs.squashfs: the squashfs, padded to 4 KiB, followed by its dm-verity hash area
	// (superblock + tree) from VerityOffset on. A slot holds these bytes.
	Root, Kernel, Initrd Blob
	VerityRootHash       string // 64 lower-case hex
	VerityOffset         int64  // bytes: the data the tree covers, a multiple of BlockSize
	Cmdline              []string
}

// DataBlocks is the number of 4 KiB blocks the verity tree covers.
func (im Image) DataBlocks() uint64 { return uint64(im.VerityOffset / BlockSize) }

// ociManifest is the part of an OCI image manifest ParseManifest reads.
type ociManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Layers        []ociDescriptor   `json:"layers"`
	Annotations   map[string]string `json:"annotations"`
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// ParseManifest reads an imgctl image manifest whose digest must be digest: the sha256 of data
// is checked first, so nothing else of an unverified manifest is believed. It requires what an
// in-place update needs — the root, kernel and initrd layers (found by their titles), the root's
// verity root hash and offset, the image's architecture — and names the missing or malformed
// field. Errors wrap ErrInvalid.
func ParseManifest(data []byte, digest string) (Image, error) {
	if err := CheckDigest(digest); err != nil {
		return Image{}, fmt.Errorf("%w: manifest: %w", ErrInvalid, err)
	}
	if len(data) > MaxManifestBytes {
		return Image{}, fmt.Errorf("%w: manifest %s is larger than %d bytes", ErrInvalid, digest, MaxManifestBytes)
	}
	sum := sha256.Sum256(data)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != digest {
		return Image{}, fmt.Errorf("%w: manifest %s: its bytes hash to %s", ErrInvalid, digest, got)
	}
	bad := func(format string, args ...any) (Image, error) {
		return Image{}, fmt.Errorf("%w: manifest %s: %s", ErrInvalid, digest, fmt.Sprintf(format, args...))
	}
	var m ociManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return bad("%v", err)
	}
	switch {
	case m.SchemaVersion != 2:
		return bad("schemaVersion %d, want 2", m.SchemaVersion)
	case m.MediaType != "" && m.MediaType != OCIManifestMediaType:
		return bad("mediaType %q, want %q", clip(m.MediaType), OCIManifestMediaType)
	case m.ArtifactType != ArtifactType:
		return bad("artifactType %q, want %q (not an imgctl image)", clip(m.ArtifactType), ArtifactType)
	}
	im := Image{
		Digest:       digest,
		Version:      m.Annotations[AnnotationVersion],
		Kubernetes:   m.Annotations[AnnotationKubernetesVersion],
		Architecture: m.Annotations[AnnotationArchitecture],
	}
	for _, f := range []struct{ key, v string }{
		{AnnotationVersion, im.Version}, {AnnotationKubernetesVersion, im.Kubernetes}, {AnnotationArchitecture, im.Architecture},
	} {
		if f.v == "" || len(f.v) > 128 || strings.ContainsFunc(f.v, isControl) {
			return bad("annotation %s %q: want 1 to 128 printable characters", f.key, clip(f.v))
		}
	}
	layers := make(map[string]ociDescriptor, len(m.Layers))
	for i, l := range m.Layers {
		title := l.Annotations[AnnotationTitle]
		if title == "" {
			continue
		}
		if _, dup := layers[title]; dup {
			return bad("layers[%d]: a second layer titled %q", i, clip(title))
		}
		layers[title] = l
	}
	blob := func(title string) (Blob, error) {
		l, ok := layers[title]
		if !ok {
			return Blob{}, fmt.Errorf("%w: manifest %s: no layer titled %q (%s)", ErrInvalid, digest, title, AnnotationTitle)
		}
		if err := CheckDigest(l.Digest); err != nil {
			return Blob{}, fmt.Errorf("%w: manifest %s: layer %q: digest: %w", ErrInvalid, digest, title, err)
		}
		if l.Size <= 0 {
			return Blob{}, fmt.Errorf("%w: manifest %s: layer %q: size %d", ErrInvalid, digest, title, l.Size)
		}
		return Blob{Digest: l.Digest, Size: l.Size}, nil
	}
	var err error
	if im.Root, err = blob(RootArtifact); err != nil {
		return Image{}, err
	}
	if im.Kernel, err = blob(KernelArtifact); err != nil {
		return Image{}, err
	}
	if im.Initrd, err = blob(InitrdArtifact); err != nil {
		return Image{}, err
	}
	root := layers[RootArtifact].Annotations
	badRoot := func(key, format string, args ...any) (Image, error) {
		return bad("layer %q: annotation %s: %s", RootArtifact, key, fmt.Sprintf(format, args...))
	}
	if d, ok := root[AnnotationRootDigest]; ok && d != im.Root.Digest {
		return badRoot(AnnotationRootDigest, "%q, but the layer's digest is %s", clip(d), im.Root.Digest)
	}
	if s, ok := root[AnnotationRootSize]; ok && s != strconv.FormatInt(im.Root.Size, 10) {
		return badRoot(AnnotationRootSize, "%q, but the layer's size is %d", clip(s), im.Root.Size)
	}
	im.VerityRootHash = root[AnnotationVerityRootHash]
	if _, err := verity.ParseRootHash(im.VerityRootHash); err != nil {
		return badRoot(AnnotationVerityRootHash, "%v (an image without a dm-verity tree cannot be installed in place)", err)
	}
	off, ok := root[AnnotationVerityOffset]
	if !ok {
		return badRoot(AnnotationVerityOffset, "missing (an image without a dm-verity tree cannot be installed in place)")
	}
	im.VerityOffset, err = strconv.ParseInt(off, 10, 64)
	switch {
	case err != nil:
		return badRoot(AnnotationVerityOffset, "%q is not a number of bytes", clip(off))
	case im.VerityOffset <= 0 || im.VerityOffset%BlockSize != 0:
		return badRoot(AnnotationVerityOffset, "%d: want a positive multiple of %d", im.VerityOffset, BlockSize)
	case im.VerityOffset >= im.Root.Size:
		return badRoot(AnnotationVerityOffset, "%d: not inside the %d-byte root (no room for the hash area)", im.VerityOffset, im.Root.Size)
	}
	im.Cmdline = strings.Fields(root[AnnotationKernelCmdline])
	return im, nil
}

// Package storetest makes small, valid imgctl images in a store for the tests of packages that
// read stores (channels, the netboot server), so they need not hand-build manifests.
package storetest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
)

// Open opens a new store in a temporary directory removed when the test ends.
func Open(tb testing.TB) *store.Store {
	tb.Helper()
	s, err := store.Open(context.Background(), filepath.Join(tb.TempDir(), "store"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// Config is a valid config for version, created at epoch, whose digests derive from version.
func Config(version string, epoch int64) manifest.Config {
	return manifest.Config{
		SchemaVersion:   manifest.SchemaVersion,
		Name:            "node",
		Version:         version,
		SpecDigest:      digest.FromString("spec " + version),
		Kubernetes:      "1.21.13",
		Kernel:          "6.1.0-56-cloud-amd64",
		Bootstrap:       "0.1.0",
		Imgctl:          "test",
		SourceDateEpoch: epoch,
		Layers: []manifest.Layer{
			{Role: "base", Version: "test", Digest: digest.FromString("base " + version), Size: 1},
		},
		Rootfs: manifest.Rootfs{Digest: digest.FromString("rootfs " + version), Size: 1, Entries: 1},
	}
}

// File is one artifact's content.
type File struct {
	Name        string
	MediaType   string
	Content     []byte
	Annotations map[string]string
}

// DefaultFiles are a rootfs, a kernel and an initrd whose bytes derive from version.
func DefaultFiles(version string) []File {
	return []File{
		{Name: "rootfs.tar", MediaType: manifest.RootfsMediaType, Content: []byte("rootfs of " + version)},
		{Name: "vmlinuz", MediaType: manifest.KernelMediaType, Content: []byte("kernel of " + version)},
		{Name: "initrd", MediaType: manifest.InitrdMediaType, Content: []byte("initrd of " + version)},
	}
}

// PutImage stores files as blobs and an image of them made from cfg, and returns the image.
func PutImage(tb testing.TB, s *store.Store, cfg manifest.Config, files []File) store.Image {
	tb.Helper()
	ctx := context.Background()
	arts := make([]manifest.Artifact, 0, len(files))
	for _, f := range files {
		d, n, err := s.WriteBlob(ctx, bytes.NewReader(f.Content), int64(len(f.Content)), "")
		if err != nil {
			tb.Fatal(err)
		}
		arts = append(arts, manifest.Artifact{Name: f.Name, MediaType: f.MediaType, Digest: d, Size: n, Annotations: f.Annotations})
	}
	desc, err := s.PutImage(ctx, cfg, arts)
	if err != nil {
		tb.Fatal(err)
	}
	img, err := s.Resolve(ctx, desc.Digest.String())
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// PutVersion stores Config(version, epoch) with DefaultFiles(version).
func PutVersion(tb testing.TB, s *store.Store, version string, epoch int64) store.Image {
	tb.Helper()
	return PutImage(tb, s, Config(version, epoch), DefaultFiles(version))
}

// PutUpdatable stores an image a disk node can install in place (images/update.ParseManifest
// accepts it): Config(version, epoch) with architecture amd64, a kernel, an initrd and a
// rootfs.squashfs of two 4 KiB blocks (not a squashfs) followed by its dm-verity hash area, with
// the root hash and offset annotations.
func PutUpdatable(tb testing.TB, s *store.Store, version string, epoch int64) store.Image {
	tb.Helper()
	data := bytes.Repeat([]byte("root of "+version+"\n"), 2*verity.BlockSize)[:2*verity.BlockSize]
	tree, err := verity.Build(context.Background(), bytes.NewReader(data), int64(len(data)))
	if err != nil {
		tb.Fatal(err)
	}
	root := File{Name: manifest.RootSquashfsArtifact, MediaType: manifest.SquashfsMediaType, Content: append(data, tree.HashArea()...),
		Annotations: map[string]string{
			manifest.AnnotationRootVerityRootHash: tree.RootHashHex(),
			manifest.AnnotationRootVerityOffset:   strconv.Itoa(len(data)),
		}}
	cfg := Config(version, epoch)
	cfg.Architecture = "amd64"
	return PutImage(tb, s, cfg, []File{
		{Name: manifest.KernelArtifact, MediaType: manifest.KernelMediaType, Content: []byte("kernel of " + version)},
		{Name: manifest.InitrdArtifact, MediaType: manifest.InitrdMediaType, Content: []byte("initrd of " + version)},
		root,
	})
}

// Corrupt overwrites blob d in place with content that does not hash to d (as a bad disk or a
// write through a hard link would), or removes it if content is nil.
func Corrupt(tb testing.TB, s *store.Store, d digest.Digest, content []byte) {
	tb.Helper()
	p, err := s.BlobPath(d)
	if err != nil {
		tb.Fatal(err)
	}
	if content == nil {
		if err := os.Remove(p); err != nil {
			tb.Fatal(err)
		}
		return
	}
	if err := os.Chmod(p, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, content, 0o644); err != nil {
		tb.Fatal(err)
	}
}

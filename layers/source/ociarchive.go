package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgctl/imgctl/layers/limits"
)

// AnnotationContainerdImageName is the index.json annotation containerd's importer
// (ctr images import) takes an image's name from, as it is: no prefix, no normalization.
const AnnotationContainerdImageName = "io.containerd.image.name"

// isArchive reports whether u keeps an image whole, as an OCI archive file.
func (u URI) isArchive() bool { return u.Kind == KindOCIArchive || u.Kind == KindOCILayoutArchive }

// archiveMTime is the modification time of every entry of an image archive: SOURCE_DATE_EPOCH,
// or the Unix epoch when none is set (tools that inspect a single source).
func (e *Env) archiveMTime() time.Time {
	if e.MTime.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return e.MTime.Truncate(time.Second).UTC()
}

// archiveBlob is one file under blobs/sha256/ of an image archive.
type archiveBlob struct {
	digest digest.Digest
	data   []byte // the manifest, kept in memory; the other blobs are read from the cache
}

// ociArchive writes the pinned image — the image itself, or the linux/amd64 image of a pinned
// index, as the flattened kinds select it — as an OCI image layout tar ("oci-archive") to a
// temporary file: oci-layout, index.json naming the image u.ImageName, and blobs/sha256/ with
// the manifest, the config and every layer blob exactly as the registry or layout holds them.
// Blobs are verified against their digests and cached, so the same pin gives the same bytes.
func (e *Env) ociArchive(ctx context.Context, u URI) (*input, error) {
	img, err := e.ociImage(ctx, u)
	if err != nil {
		return nil, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading the image manifest: %w", err)
	}
	md := digest.FromBytes(raw)
	if err := checkPinnedManifest(u, md); err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", md, err)
	}
	mediaType := m.MediaType
	if mediaType == "" {
		if mediaType, err = img.MediaType(); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", md, err)
		}
	}
	if mediaType != types.OCIManifestSchema1 && mediaType != types.DockerManifestSchema2 {
		return nil, fmt.Errorf("manifest %s has media type %q, expected %s or %s", md, mediaType, types.OCIManifestSchema1, types.DockerManifestSchema2)
	}

	if err := e.checkImageSize(md, int64(len(raw)), append([]v1.Descriptor{m.Config}, m.Layers...)); err != nil {
		return nil, err
	}

	blobs := []archiveBlob{{digest: md, data: raw}}
	seen := map[digest.Digest]bool{md: true}
	for i, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		dg, err := e.cacheImageBlob(ctx, img, d, i == 0)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", md, err)
		}
		if !seen[dg] {
			seen[dg] = true
			blobs = append(blobs, archiveBlob{digest: dg})
		}
	}
	if err := e.checkPlatform(m.Config, md); err != nil {
		return nil, err
	}
	slices.SortFunc(blobs, func(a, b archiveBlob) int { return strings.Compare(a.digest.Encoded(), b.digest.Encoded()) })

	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{
			MediaType: string(mediaType),
			Digest:    md,
			Size:      int64(len(raw)),
			Platform:  &ocispec.Platform{OS: linuxAmd64.OS, Architecture: linuxAmd64.Architecture},
			Annotations: map[string]string{
				ocispec.AnnotationRefName:     u.ImageName,
				AnnotationContainerdImageName: u.ImageName,
			},
		}},
	})
	if err != nil {
		return nil, err
	}
	ociLayout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return nil, err
	}

	f, err := os.CreateTemp(filepath.Join(e.Cache.Dir(), "tmp"), "oci-archive-*.tar")
	if err != nil {
		return nil, err
	}
	discard := func() error {
		cerr := f.Close()
		if err := os.Remove(f.Name()); err != nil {
			return err
		}
		return cerr
	}
	size, err := e.writeArchive(ctx, f, blobs, index, ociLayout)
	if err != nil {
		_ = discard()
		return nil, fmt.Errorf("writing the image archive: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		_ = discard()
		return nil, err
	}
	e.logger().Debug("image archive written", "uri", u.Raw, "manifest", md, "name", u.ImageName, "blobs", len(blobs), "bytes", size)
	return &input{Reader: bufio.NewReaderSize(f, 1<<20), size: size, close: discard}, nil
}

// checkImageSize refuses, before any blob is downloaded, an image whose manifest and blobs
// (as the pinned manifest declares them) total more than the size limit per source.
func (e *Env) checkImageSize(md digest.Digest, total int64, ds []v1.Descriptor) error {
	limit := e.Limits.SourceSize()
	if limit < 0 {
		return nil
	}
	for _, d := range ds {
		if d.Size < 0 || d.Size > limit {
			total = limit + 1
			break
		}
		total += d.Size
	}
	if total > limit {
		return fmt.Errorf("image %s: %w: its manifest and blobs declare more than the limit of %s per source (--max-source-size)",
			md, limits.ErrTooLarge, limits.Bytes(limit))
	}
	return nil
}

// checkPinnedManifest checks that the manifest (digest md) is the pinned one or one the pinned
// index lists. Registries need no check here: go-containerregistry fetches the pinned index and
// the manifest it selects by digest and rejects content that does not match. A local layout's
// blobs are read as they are, so the index is hashed here.
func checkPinnedManifest(u URI, md digest.Digest) error {
	if md == u.Digest {
		return nil
	}
	if !u.fromLayout() {
		return nil
	}
	p, err := openLayout(u.Location)
	if err != nil {
		return fmt.Errorf("opening OCI layout %s: %w", u.Location, err)
	}
	h, err := v1.NewHash(u.Digest.String())
	if err != nil {
		return err
	}
	b, err := p.Bytes(h)
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", u.Location, err)
	}
	if got := digest.FromBytes(b); got != u.Digest {
		return fmt.Errorf("OCI layout %s: blob %s holds content with digest %s", u.Location, u.Digest, got)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("OCI layout %s: index %s: %w", u.Location, u.Digest, err)
	}
	for _, d := range idx.Manifests {
		if d.Digest.String() == md.String() {
			return nil
		}
	}
	return fmt.Errorf("OCI layout %s: manifest %s is neither the pinned %s nor listed in it", u.Location, md, u.Digest)
}

// cacheImageBlob puts one blob of img (its config, or a layer as stored: compressed) into the
// cache, checked against the manifest's digest and size, and returns its digest.
func (e *Env) cacheImageBlob(ctx context.Context, img v1.Image, d v1.Descriptor, config bool) (digest.Digest, error) {
	what := "layer"
	if config {
		what = "config"
	}
	dg, err := digest.Parse(d.Digest.String())
	if err != nil || dg.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("%s digest %q: expected sha256:<64 hex>", what, d.Digest)
	}
	if e.Cache.Has(dg) {
		return dg, nil
	}
	var rc io.ReadCloser
	if config {
		b, err := img.RawConfigFile()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", what, dg, err)
		}
		rc = io.NopCloser(bytes.NewReader(b))
	} else {
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", what, dg, err)
		}
		if rc, err = l.Compressed(); err != nil {
			return "", fmt.Errorf("%s %s: %w", what, dg, err)
		}
	}
	defer rc.Close()
	w, err := e.Cache.NewWriter(ctx)
	if err != nil {
		return "", err
	}
	defer func() { _ = w.Abort() }()
	if _, err := io.Copy(w, &ctxReader{ctx: ctx, r: rc}); err != nil {
		return "", fmt.Errorf("%s %s: %w", what, dg, err)
	}
	if _, _, err := w.Commit(dg, d.Size); err != nil {
		return "", fmt.Errorf("%s %s: %w", what, dg, err)
	}
	return dg, nil
}

// checkPlatform rejects an image whose config names a platform other than linux/amd64 (a
// manifest pinned directly is not chosen by platform). A config naming none is accepted.
func (e *Env) checkPlatform(config v1.Descriptor, md digest.Digest) error {
	f, err := e.Cache.Open(digest.Digest(config.Digest.String()))
	if err != nil {
		return err
	}
	defer f.Close()
	cf, err := v1.ParseConfigFile(f)
	if err != nil {
		return fmt.Errorf("image %s: config %s: %w", md, config.Digest, err)
	}
	if (cf.OS != "" && cf.OS != linuxAmd64.OS) || (cf.Architecture != "" && cf.Architecture != linuxAmd64.Architecture) {
		return fmt.Errorf("image %s is for %s/%s, expected linux/amd64", md, cf.OS, cf.Architecture)
	}
	return nil
}

// writeArchive writes the image layout tar: entries sorted by name, directories 0755 and files
// 0644 owned by 0:0 without user or group names, every time SOURCE_DATE_EPOCH.
func (e *Env) writeArchive(ctx context.Context, w io.Writer, blobs []archiveBlob, index, ociLayout []byte) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	tw := tar.NewWriter(bw)
	mtime := e.archiveMTime()
	header := func(name string, typ byte, mode, size int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: mtime, Format: tar.FormatUSTAR})
	}
	file := func(name string, data []byte) error {
		if err := header(name, tar.TypeReg, 0o644, int64(len(data))); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := header(d, tar.TypeDir, 0o755, 0); err != nil {
			return 0, err
		}
	}
	for _, b := range blobs {
		name := "blobs/sha256/" + b.digest.Encoded()
		if b.data != nil {
			if err := file(name, b.data); err != nil {
				return 0, err
			}
			continue
		}
		if err := e.copyCachedBlob(ctx, b.digest, func(size int64, r io.Reader) error {
			if err := header(name, tar.TypeReg, 0o644, size); err != nil {
				return err
			}
			_, err := io.Copy(tw, &ctxReader{ctx: ctx, r: r})
			return err
		}); err != nil {
			return 0, err
		}
	}
	if err := file(ocispec.ImageIndexFile, index); err != nil {
		return 0, err
	}
	if err := file(ocispec.ImageLayoutFile, ociLayout); err != nil {
		return 0, err
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// copyCachedBlob hands blob d of the cache, with its size, to fn, and checks that what fn read
// still hashes to d (cache files are only ever renamed into place, but fail closed anyway).
func (e *Env) copyCachedBlob(ctx context.Context, d digest.Digest, fn func(size int64, r io.Reader) error) error {
	f, err := e.Cache.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	v := d.Verifier()
	if err := fn(st.Size(), io.TeeReader(bufio.NewReaderSize(f, 1<<20), v)); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if !v.Verified() {
		return fmt.Errorf("cached blob %s does not match its digest", d)
	}
	return ctx.Err()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Problem is one thing Verify found wrong.
type Problem struct {
	Digest digest.Digest // the blob concerned, if any
	Path   string        // the file concerned, if any
	Msg    string
}

func (p Problem) String() string {
	switch {
	case p.Digest != "" && p.Path != "":
		return fmt.Sprintf("%s (%s): %s", p.Digest, p.Path, p.Msg)
	case p.Digest != "":
		return fmt.Sprintf("%s: %s", p.Digest, p.Msg)
	case p.Path != "":
		return fmt.Sprintf("%s: %s", p.Path, p.Msg)
	}
	return p.Msg
}

// Verify re-hashes every blob and checks that index.json, the manifests and the configs it
// reaches only reference blobs that exist with the right size. An index.json that is missing or
// empty, or that lists nothing while blobs/ holds image manifests older than it, is a problem:
// the index was lost, and without it GC would delete every image. It also removes temporary files
// older than an hour. Problems are returned, not errors: the error is for I/O failures that
// stopped the check.
func (s *Store) Verify(ctx context.Context) ([]Problem, error) {
	if err := s.cleanTemps(time.Now().Add(-staleTempAge)); err != nil {
		return nil, err
	}
	v := &verifier{s: s, sizes: map[digest.Digest]int64{}, bad: map[digest.Digest]bool{}}
	if err := v.blobs(ctx); err != nil {
		return nil, fmt.Errorf("verifying store: %w", err)
	}
	if err := v.index(ctx); err != nil {
		return nil, fmt.Errorf("verifying store: %w", err)
	}
	if len(v.problems) == 0 {
		s.log.Info("store verified", "blobs", len(v.sizes))
	} else {
		s.log.Warn("store has problems", "count", len(v.problems))
	}
	return v.problems, nil
}

type verifier struct {
	s        *Store
	sizes    map[digest.Digest]int64 // blobs present and hashing to their name
	bad      map[digest.Digest]bool  // blobs present but corrupt (already reported)
	problems []Problem
}

func (v *verifier) add(d digest.Digest, path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Digest: d, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// blobs hashes every file under blobs/.
func (v *verifier) blobs(ctx context.Context) error {
	root := v.s.path(blobsDir)
	algs, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	buf := make([]byte, copyBufSize)
	for _, a := range algs {
		dir := filepath.Join(root, a.Name())
		if !a.IsDir() || a.Name() != string(digest.SHA256) {
			v.add("", dir, "unexpected entry in blobs/ (the store holds sha256 blobs only)")
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := filepath.Join(dir, e.Name())
			d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			if d.Validate() != nil {
				v.add("", p, "file name is not a sha256 digest")
				continue
			}
			if !e.Type().IsRegular() {
				v.add(d, p, "not a regular file")
				v.bad[d] = true
				continue
			}
			n, got, err := hashFile(ctx, p, buf)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if got != d {
				v.add(d, p, "content hashes to %s", got)
				v.bad[d] = true
				continue
			}
			v.sizes[d] = n
		}
	}
	return nil
}

func hashFile(ctx context.Context, path string, buf []byte) (int64, digest.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = f.Close() }()
	h := digest.SHA256.Digester()
	n, err := io.CopyBuffer(h.Hash(), ctxReader{ctx, f}, buf)
	if err != nil {
		return 0, "", err
	}
	return n, h.Digest(), nil
}

// ref checks that a descriptor's blob exists, is sound and has the descriptor's size.
func (v *verifier) ref(desc ocispec.Descriptor, from string) bool {
	if err := desc.Digest.Validate(); err != nil || desc.Digest.Algorithm() != digest.SHA256 {
		v.add(desc.Digest, "", "%s: bad or unsupported digest", from)
		return false
	}
	if v.bad[desc.Digest] {
		return false // reported when hashing
	}
	n, ok := v.sizes[desc.Digest]
	if !ok {
		v.add(desc.Digest, "", "%s: blob is missing", from)
		return false
	}
	if n != desc.Size {
		v.add(desc.Digest, "", "%s: size %d, blob has %d bytes", from, desc.Size, n)
		return false
	}
	return true
}

// index checks index.json and everything it reaches.
func (v *verifier) index(ctx context.Context) error {
	data, err := os.ReadFile(v.s.path(indexFile))
	state := ""
	switch {
	case errors.Is(err, fs.ErrNotExist):
		state = "missing"
	case err != nil:
		return err
	case len(bytes.TrimSpace(data)) == 0:
		state = "empty"
	}
	if state != "" {
		if n := len(v.sizes) + len(v.bad); n > 0 {
			v.add("", v.s.path(indexFile), "%s, but %s holds %d blobs: restore it (e.g. from a backup)", state, v.s.path(blobsDir), n)
		} else {
			v.add("", v.s.path(indexFile), "%s", state)
		}
		return nil
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		v.add("", v.s.path(indexFile), "not valid JSON: %v", err)
		return nil
	}
	if len(idx.Manifests) == 0 {
		ds := slices.Sorted(maps.Keys(v.sizes))
		if ms := v.s.lostManifests(ds, v.sizes); len(ms) > 0 {
			v.add("", v.s.path(indexFile), "%s", lostImages(v.s, ms))
		}
		return nil
	}
	seen := map[digest.Digest]bool{}
	return v.manifests(ctx, idx.Manifests, "index.json", seen)
}

// lostManifests returns those of blobs ds (sizes: their sizes) that are image manifests or
// indexes, judged by content (small JSON of a manifest media type, or naming a config or
// manifests by digest), and were already older than GC's grace when index.json, which lists
// nothing, was last written: GC, when it empties the index, removes such manifests with the
// images it drops, so they are there because the index that named them was lost or replaced.
// (GC spares young manifests; those are younger than the index it wrote, less the grace.)
func (s *Store) lostManifests(ds []digest.Digest, sizes map[digest.Digest]int64) []digest.Digest {
	ifi, err := os.Stat(s.path(indexFile))
	if err != nil {
		return nil
	}
	before := ifi.ModTime().Add(-gcGrace)
	var out []digest.Digest
	for _, d := range ds {
		if sizes[d] > maxMetaBlob {
			continue
		}
		p, err := s.blobPath(d)
		if err != nil {
			continue
		}
		if fi, err := os.Stat(p); err != nil || !fi.ModTime().Before(before) {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var probe struct {
			MediaType string               `json:"mediaType"`
			Config    *ocispec.Descriptor  `json:"config"`
			Manifests []ocispec.Descriptor `json:"manifests"`
		}
		if json.Unmarshal(data, &probe) != nil {
			continue
		}
		if gcManifestTypes[probe.MediaType] || (probe.Config != nil && probe.Config.Digest.Validate() == nil) ||
			(len(probe.Manifests) > 0 && probe.Manifests[0].Digest.Validate() == nil) {
			out = append(out, d)
		}
	}
	return out
}

// lostImages says that index.json lists nothing though blobs holds manifests ms: the index was
// lost or replaced (an empty index is what Open used to make when index.json was missing).
// It names at most three.
func lostImages(s *Store, ms []digest.Digest) string {
	names := make([]string, 0, 3)
	for _, d := range ms[:min(3, len(ms))] {
		names = append(names, d.String())
	}
	if len(ms) > 3 {
		names = append(names, "…")
	}
	return fmt.Sprintf("lists no images, but %s holds %d image manifests (%s): index.json was lost or replaced; restore it (e.g. from a backup)",
		s.path(blobsDir), len(ms), strings.Join(names, ", "))
}

func (v *verifier) manifests(ctx context.Context, descs []ocispec.Descriptor, from string, seen map[digest.Digest]bool) error {
	for i, desc := range descs {
		where := fmt.Sprintf("%s manifests[%d]", from, i)
		if !v.ref(desc, where) || seen[desc.Digest] {
			continue
		}
		seen[desc.Digest] = true
		data, err := v.s.readBlob(ctx, desc.Digest, desc.Size, maxMetaBlob)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			v.add(desc.Digest, "", "%s: %v", where, err)
			continue
		}
		switch desc.MediaType {
		case ocispec.MediaTypeImageIndex:
			var idx ocispec.Index
			if err := json.Unmarshal(data, &idx); err != nil {
				v.add(desc.Digest, "", "%s: index is not valid JSON: %v", where, err)
				continue
			}
			if err := v.manifests(ctx, idx.Manifests, desc.Digest.String(), seen); err != nil {
				return err
			}
		case ocispec.MediaTypeImageManifest:
			if err := v.manifest(ctx, desc, data, where); err != nil {
				return err
			}
		}
	}
	return nil
}

func (v *verifier) manifest(ctx context.Context, desc ocispec.Descriptor, data []byte, where string) error {
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		v.add(desc.Digest, "", "%s: manifest is not valid JSON: %v", where, err)
		return nil
	}
	ours := m.Config.MediaType == manifest.ConfigMediaType
	if ours {
		if _, err := manifest.DecodeManifest(data); err != nil {
			v.add(desc.Digest, "", "%s: %v", where, err)
		}
	}
	if v.ref(m.Config, desc.Digest.String()+" config") && ours {
		cdata, err := v.s.readBlob(ctx, m.Config.Digest, m.Config.Size, maxMetaBlob)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			v.add(m.Config.Digest, "", "config of %s: %v", desc.Digest, err)
		} else if _, err := manifest.DecodeConfig(cdata); err != nil {
			v.add(m.Config.Digest, "", "config of %s: %v", desc.Digest, err)
		}
	}
	for i, l := range m.Layers {
		name := l.Annotations[manifest.AnnotationTitle]
		v.ref(l, fmt.Sprintf("%s layers[%d] %q", desc.Digest, i, name))
	}
	return nil
}

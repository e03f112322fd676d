package source

import (
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/compose"
)

var linuxAmd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// ociImage opens the pinned image (or the linux/amd64 image of a pinned index).
func (e *Env) ociImage(ctx context.Context, u URI) (v1.Image, error) {
	h, err := v1.NewHash(u.Digest.String())
	if err != nil {
		return nil, err
	}
	if u.fromLayout() {
		p, err := openLayout(u.Location)
		if err != nil {
			return nil, fmt.Errorf("opening OCI layout %s: %w", u.Location, err)
		}
		if img, err := p.Image(h); err == nil {
			if _, err := img.Manifest(); err == nil {
				return img, nil
			}
		}
		idx, err := p.ImageIndex()
		if err != nil {
			return nil, err
		}
		child, err := idx.ImageIndex(h)
		if err != nil {
			return nil, fmt.Errorf("%s not found in OCI layout %s: %w", u.Digest, u.Location, err)
		}
		return platformImage(child)
	}
	if e.Fetch != nil && e.Fetch.Offline {
		return nil, fmt.Errorf("registry image %s is not in the cache and --offline forbids fetching it", u.Location)
	}
	ref, err := name.NewDigest(u.Location + "@" + u.Digest.String())
	if err != nil {
		return nil, fmt.Errorf("image reference: %w", err)
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithPlatform(linuxAmd64))
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w (use --mirror or --offline with a warm cache when the registry is unreachable)", ref, err)
	}
	return img, nil
}

// fromLayout reports whether the image comes from a local OCI layout, not a registry.
func (u URI) fromLayout() bool { return u.Kind == KindOCILayout || u.Kind == KindOCILayoutArchive }

func platformImage(idx v1.ImageIndex) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(linuxAmd64) {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("no linux/amd64 image in the index")
}

// convertOCI flattens the image's layers (whiteouts applied) into out.
func (e *Env) convertOCI(ctx context.Context, u URI, out *tarOut) error {
	img, err := e.ociImage(ctx, u)
	if err != nil {
		return err
	}
	ls, err := img.Layers()
	if err != nil {
		return err
	}
	var inputs []compose.Input
	for i, l := range ls {
		t, err := e.layerTar(ctx, l)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		f, err := e.Cache.Open(t)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		inputs = append(inputs, compose.Input{Name: fmt.Sprintf("%s layer %d", u.Raw, i), Reader: f, Size: st.Size()})
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := compose.Compose(ctx, pw, inputs, compose.Options{Mode: compose.Layer, MTime: e.MTime, Step: "merge the layers of " + u.Location})
		pw.CloseWithError(err)
		errc <- err
	}()
	err = out.copyTar(ctx, pr)
	pr.Close()
	if cerr := <-errc; cerr != nil {
		return cerr
	}
	return err
}

// layerTar validates one registry layer into a cached tar, keyed by its diff ID.
func (e *Env) layerTar(ctx context.Context, l v1.Layer) (digest.Digest, error) {
	diff, err := l.DiffID()
	if err != nil {
		return "", err
	}
	key := converterVersion + "\noci-layer\n" + diff.String()
	if ref, err := e.Cache.Ref("source", key); err == nil && e.Cache.Has(ref) {
		return ref, nil
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	w, err := e.Cache.NewWriter(ctx)
	if err != nil {
		return "", err
	}
	defer func() { _ = w.Abort() }()
	compressed, err := l.Size()
	if err != nil {
		compressed = -1
	}
	out := e.boundedTarOut(w, "", compressed)
	if err := out.copyTar(ctx, rc); err != nil {
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	dg, _, err := w.Commit("", -1)
	if err != nil {
		return "", err
	}
	return dg, e.Cache.SetRef("source", key, dg)
}

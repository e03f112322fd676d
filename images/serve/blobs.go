package serve

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
)

// catalog is what the server may serve from the store, as of one state of index.json and the
// trust policy: the images (those the policy accepts, if the store has one) and every blob they
// reach. Images are immutable, so a catalog is only rebuilt when index.json or trust.json
// changes.
type catalog struct {
	key     string
	images  map[digest.Digest]store.Image
	refused map[digest.Digest]error  // images in the index that are never served, and why
	blobs   map[digest.Digest]string // reachable blob → media type
	// versions maps each servable image's version to its digest (for pinned images).
	versions map[string]digest.Digest
	// netboot is each servable image's netboot artifacts, or why it cannot netboot.
	netboot map[digest.Digest]netbootImage
	// installable caches, by image digest, an installResult: what the pointer route found
	// when it first read the image's manifest.
	installable sync.Map
	// err: the store could not be read; nothing is served.
	err error
}

// catalogs keeps the current catalog, looking at the store at most every Options.Refresh.
type catalogs struct {
	s       *Server
	cur     atomic.Pointer[catalog]
	checked atomic.Int64 // unix nanoseconds of the last look at the store's files
	mu      sync.Mutex   // one rebuild at a time; guards what follows
	// verified are the images the trust policy accepted, while the policy file is policyKey.
	verified  map[digest.Digest]bool
	policyKey string
}

// policyKey is the trust policy's part of a catalog key.
func policyKey(key string) string {
	_, p, _ := strings.Cut(key, sign.PolicyFile+":")
	return p
}

func newCatalogs(s *Server) *catalogs { return &catalogs{s: s} }

// get returns the current catalog; force looks at the store's files now. A store that cannot
// be read (a broken index.json or trust policy) gives an error until it is fixed: the server
// never falls back to an older view, or to no policy.
func (c *catalogs) get(ctx context.Context, force bool) (*catalog, error) {
	cur := c.cur.Load()
	now := c.s.o.Now()
	// A broken store is looked at again after Refresh only, even when forced.
	if cur != nil && (!force || cur.err != nil) && now.UnixNano()-c.checked.Load() < int64(c.s.o.Refresh) {
		return cur.result()
	}
	// One goroutine looks; the others go on with what is current meanwhile (a rebuild reads
	// every manifest), unless they must know (force) or there is nothing yet.
	if cur != nil && !force {
		if !c.mu.TryLock() {
			return cur.result()
		}
	} else {
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	if cur2 := c.cur.Load(); cur2 != cur && cur2 != nil { // another goroutine just looked
		return cur2.result()
	}
	c.checked.Store(now.UnixNano())
	key, err := c.key()
	if err == nil && cur != nil && cur.key == key && cur.err == nil {
		return cur, nil
	}
	var cat *catalog
	if err == nil {
		// Not the request's context: a client that goes away must not fail the store for others.
		cat, err = c.build(context.WithoutCancel(ctx), key)
	}
	if err != nil {
		c.s.log.Error("reading the store: serving none of its images until it is fixed", "store", c.s.st.Dir(), "err", err)
		cat = &catalog{key: key, err: err}
	}
	c.cur.Store(cat)
	return cat.result()
}

func (c *catalog) result() (*catalog, error) {
	if c.err != nil {
		return nil, c.err
	}
	return c, nil
}

// key identifies the state of index.json and trust.json cheaply (inode, size, mtime): writers
// replace both by rename, so any change gives a new inode.
func (c *catalogs) key() (string, error) {
	var key string
	for _, name := range []string{ocispec.ImageIndexFile, sign.PolicyFile} {
		fi, err := os.Stat(filepath.Join(c.s.st.Dir(), name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			key += name + ":none;"
		case err != nil:
			return "", fmt.Errorf("reading the store: %w", err)
		default:
			var ino uint64
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				ino = st.Ino
			}
			key += fmt.Sprintf("%s:%d:%d:%d;", name, ino, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return key, nil
}

func (c *catalogs) build(ctx context.Context, key string) (*catalog, error) {
	start := time.Now()
	policy, err := sign.PolicyForStore(c.s.st.Dir())
	if err != nil {
		// A broken policy never means "no policy": serve nothing until it is fixed.
		return nil, fmt.Errorf("trust policy of store %s: %w", c.s.st.Dir(), err)
	}
	imgs, bad, err := c.s.st.ListAll(ctx)
	if err != nil {
		return nil, err
	}
	cat := &catalog{key: key, images: map[digest.Digest]store.Image{}, refused: map[digest.Digest]error{}, blobs: map[digest.Digest]string{},
		versions: map[string]digest.Digest{}, netboot: map[digest.Digest]netbootImage{}}
	for _, b := range bad {
		cat.refused[b.Descriptor.Digest] = b
		c.s.log.Warn("not serving an image that cannot be read", "image", b.Descriptor.Digest, "version", b.Version(), "err", b.Err)
	}
	if c.policyKey != policyKey(key) {
		c.verified, c.policyKey = map[digest.Digest]bool{}, policyKey(key)
	}
	for _, img := range imgs {
		if policy != nil && !c.verified[img.Digest()] {
			if err := policy.Verify(ctx, c.s.st, img); err != nil {
				cat.refused[img.Digest()] = err
				c.s.log.Warn("not serving an image the store's trust policy refuses", "image", img.Digest(), "version", img.Config.Version, "err", err)
				continue
			}
			c.verified[img.Digest()] = true // images are immutable: accepted until the policy changes
		}
		cat.images[img.Digest()] = img
		cat.versions[img.Config.Version] = img.Digest()
		cat.netboot[img.Digest()] = netbootOf(img)
		cat.blobs[img.Digest()] = ocispec.MediaTypeImageManifest
		cat.blobs[img.Manifest.Config.Digest] = img.Manifest.Config.MediaType
		for _, l := range img.Manifest.Layers {
			cat.blobs[l.Digest] = l.MediaType
		}
	}
	c.s.log.Info("read the store", "images", len(cat.images), "refused", len(cat.refused), "blobs", len(cat.blobs),
		"policy", policy != nil, "took", time.Since(start))
	return cat, nil
}

// parseBlobDigest accepts exactly sha256: and 64 lower-case hex digits.
func parseBlobDigest(s string) (digest.Digest, bool) {
	const prefix = "sha256:"
	if len(s) != len(prefix)+64 || s[:len(prefix)] != prefix {
		return "", false
	}
	for i := len(prefix); i < len(s); i++ {
		if b := s[i]; (b < '0' || b > '9') && (b < 'a' || b > 'f') {
			return "", false
		}
	}
	return digest.Digest(s), true
}

// blob serves GET and HEAD /blobs/sha256:HEX: only a blob of an image the server may serve,
// opened by its digest (no part of the URL path reaches the file system), with http.ServeContent
// on the file (Range, If-None-Match, 416; sendfile). The bytes are served as stored: the
// server never hashes or repairs a blob (imgctl store verify finds a corrupted one).
func (s *Server) blob(w http.ResponseWriter, r *http.Request) {
	d, ok := parseBlobDigest(r.PathValue("digest"))
	if !ok {
		http.Error(w, "not found: expected /blobs/sha256:HEX (64 lower-case hex digits)", http.StatusNotFound)
		return
	}
	cat, err := s.cat.get(r.Context(), false)
	if err != nil {
		http.Error(w, "store unreadable (see the server's log)", http.StatusServiceUnavailable)
		return
	}
	mediaType, ok := cat.blobs[d]
	if !ok {
		// A blob of an image stored since the last look: look again now.
		if cat, err = s.cat.get(r.Context(), true); err == nil {
			mediaType, ok = cat.blobs[d]
		}
	}
	if !ok {
		http.Error(w, "not found: no image this server serves has blob "+string(d), http.StatusNotFound)
		return
	}
	p, err := s.st.BlobPath(d)
	if err != nil {
		s.log.Error("blob of a served image is missing from the store", "blob", d, "err", err)
		http.Error(w, "not found: blob "+string(d)+" is missing from the store", http.StatusNotFound)
		return
	}
	f, err := os.Open(p)
	if err != nil {
		s.log.Error("opening blob", "blob", d, "err", err)
		http.Error(w, "not found: blob "+string(d)+" cannot be opened", http.StatusNotFound)
		return
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	// The write deadline grows with the size: a 300 MB root on a slow link is no slow client.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.o.WriteTimeout + time.Duration(fi.Size()/s.o.MinBlobRate)*time.Second))
	h := w.Header()
	h.Set("ETag", `"`+string(d)+`"`)
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	h.Set("Content-Type", blobContentType(mediaType))
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// blobContentType is the media type to send for a blob: the manifest's, or octet-stream.
func blobContentType(mediaType string) string {
	switch mediaType {
	case "", manifest.KernelMediaType, manifest.InitrdMediaType, manifest.SquashfsMediaType:
		return "application/octet-stream"
	}
	return mediaType
}

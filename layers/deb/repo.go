package deb

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/imgctl/imgctl/layers/localfile"
	"github.com/imgctl/imgctl/layers/progress"
	"github.com/klauspost/compress/gzip"
)

// DefaultKeyring is the keyring used when [Repo.Keyring] is empty.
const DefaultKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

const (
	maxInRelease = 32 << 20
	maxIndex     = 1 << 30 // Packages file, compressed or not
)

// Getter fetches a URL. The returned body must be closed by the caller.
type Getter interface {
	Get(ctx context.Context, url string) (io.ReadCloser, error)
}

// Repo is a signed APT repository (one suite, component and
// architecture). Its exported fields must not change after the first
// call to Resolve; a Repo is safe for concurrent use and caches the
// verified package index.
type Repo struct {
	BaseURL   string // e.g. https://deb.debian.org/debian
	Suite     string // e.g. bookworm
	Component string // default "main"
	Arch      string // default "amd64"
	Keyring   string // OpenPGP keyring file (binary or armored); default DefaultKeyring
	Getter    Getter
	Logger    *slog.Logger // nil discards logs

	mu      sync.Mutex
	idx     *index
	loading chan struct{} // closed when the current load finishes
}

// Resolved is a package pinned to one .deb file.
type Resolved struct {
	Package      string
	Version      string
	Architecture string
	URL          string // absolute .deb URL
	SHA256       string // hex
	Size         int64
	Depends      string // folded Depends field
}

// index is a verified Packages index.
type index struct {
	url     string // URL of the Packages file it came from
	pkgs    map[string][]Resolved
	invalid map[string]error // packages skipped because their entry is malformed
}

func (r *Repo) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

func (r *Repo) component() string { return cmp.Or(r.Component, "main") }
func (r *Repo) arch() string      { return cmp.Or(r.Arch, "amd64") }
func (r *Repo) keyring() string   { return cmp.Or(r.Keyring, DefaultKeyring) }
func (r *Repo) base() string      { return strings.TrimRight(r.BaseURL, "/") }

// Resolve finds package name in the repository's index. An empty version
// selects the newest version; otherwise the version must match exactly
// (in the dpkg sense, so "0:1.2" matches "1.2").
func (r *Repo) Resolve(ctx context.Context, name, version string) (Resolved, error) {
	idx, err := r.index(ctx)
	if err != nil {
		return Resolved{}, err
	}
	return r.pick(idx, name, func(v string) bool {
		return version == "" || CompareVersions(v, version) == 0
	}, version)
}

// ResolveFollow resolves the metapackage name (at version, "" for the
// newest) and then the first package in its Depends whose name starts
// with prefix, e.g. linux-image-cloud-amd64 → linux-image-6.1.0-NN-cloud-amd64.
// A version constraint on that dependency is honored: the newest version
// satisfying it is chosen.
func (r *Repo) ResolveFollow(ctx context.Context, name, version, prefix string) (Resolved, error) {
	meta, err := r.Resolve(ctx, name, version)
	if err != nil {
		return Resolved{}, err
	}
	deps := parseDepends(meta.Depends)
	for _, d := range deps {
		if !strings.HasPrefix(d.name, prefix) {
			continue
		}
		idx, err := r.index(ctx)
		if err != nil {
			return Resolved{}, err
		}
		r.logger().DebugContext(ctx, "following dependency", "package", meta.Package, "version", meta.Version, "dependency", d.String())
		res, err := r.pick(idx, d.name, d.satisfiedBy, d.constraint())
		if err != nil {
			return Resolved{}, fmt.Errorf("deb: following %s %s → %s: %w", meta.Package, meta.Version, d, err)
		}
		return res, nil
	}
	names := make([]string, 0, len(deps))
	for _, d := range deps {
		names = append(names, d.name)
	}
	return Resolved{}, fmt.Errorf("deb: %s %s has no dependency starting with %q (depends on: %s)",
		meta.Package, meta.Version, prefix, strings.Join(names, ", "))
}

func (r *Repo) pick(idx *index, name string, ok func(string) bool, want string) (Resolved, error) {
	cands := idx.pkgs[name]
	if len(cands) == 0 && idx.invalid[name] != nil {
		return Resolved{}, fmt.Errorf("deb: package %q in %s has a malformed entry: %w", name, idx.url, idx.invalid[name])
	}
	if len(cands) == 0 {
		msg := fmt.Sprintf("deb: package %q not found in %s", name, idx.url)
		if similar := closeNames(idx, name, 5); len(similar) > 0 {
			msg += "; similar names: " + strings.Join(similar, ", ")
		}
		return Resolved{}, errors.New(msg)
	}
	// cands is sorted newest first.
	for _, c := range cands {
		if ok(c.Version) {
			return c, nil
		}
	}
	vs := make([]string, len(cands))
	for i, c := range cands {
		vs[i] = c.Version
	}
	return Resolved{}, fmt.Errorf("deb: package %q version %s not found in %s; available: %s",
		name, want, idx.url, strings.Join(vs, ", "))
}

// index returns the cached index, loading it if needed. Concurrent
// callers share one load; a failed load is not cached.
func (r *Repo) index(ctx context.Context) (*index, error) {
	for {
		r.mu.Lock()
		if r.idx != nil {
			idx := r.idx
			r.mu.Unlock()
			return idx, nil
		}
		if ch := r.loading; ch != nil {
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		r.loading = ch
		r.mu.Unlock()

		idx, err := r.load(ctx)

		r.mu.Lock()
		if err == nil {
			r.idx = idx
		}
		r.loading = nil
		close(ch)
		r.mu.Unlock()
		return idx, err
	}
}

func (r *Repo) load(ctx context.Context) (*index, error) {
	step := progress.Start(ctx, "Debian package index "+r.Suite+" "+r.component()+"/"+r.arch())
	idx, err := r.loadIndex(ctx, step)
	step.Done(err)
	return idx, err
}

// loadIndex fetches and verifies InRelease and the Packages index; step counts the index's
// bytes and the entries parsed.
func (r *Repo) loadIndex(ctx context.Context, step *progress.Step) (*index, error) {
	if r.Getter == nil {
		return nil, errors.New("deb: Repo.Getter is nil")
	}
	if r.BaseURL == "" || r.Suite == "" {
		return nil, errors.New("deb: Repo.BaseURL and Repo.Suite are required")
	}
	log := r.logger()
	keys, err := readKeyring(r.keyring())
	if err != nil {
		return nil, err
	}

	relURL := r.base() + "/dists/" + r.Suite + "/InRelease"
	log.DebugContext(ctx, "fetching release file", "url", relURL)
	raw, err := r.getAll(ctx, relURL, maxInRelease)
	if err != nil {
		return nil, err
	}
	block, _ := clearsign.Decode(raw)
	if block == nil {
		return nil, fmt.Errorf("deb: %s is not an OpenPGP clearsigned message", relURL)
	}
	signer, err := block.VerifySignature(keys, nil)
	if err != nil {
		return nil, fmt.Errorf("deb: bad signature on %s (keyring %s): %w", relURL, r.keyring(), err)
	}
	if signer != nil && signer.PrimaryKey != nil {
		log.DebugContext(ctx, "release file signature verified", "url", relURL, "key", signer.PrimaryKey.KeyIdString())
	}
	// Only the signed text is trusted from here on.
	rel, err := ReadParagraphs(bytes.NewReader(block.Plaintext))
	if err != nil || len(rel) == 0 {
		return nil, fmt.Errorf("deb: parsing %s: %w", relURL, cmp.Or(err, errors.New("empty")))
	}
	release := rel[0]
	if s, c := release.Get("Suite"), release.Get("Codename"); s != r.Suite && c != r.Suite {
		return nil, fmt.Errorf("deb: %s is for suite %q (codename %q), not %q", relURL, s, c, r.Suite)
	}
	if vu := release.Get("Valid-Until"); vu != "" {
		t, err := parseReleaseDate(vu)
		if err != nil {
			return nil, fmt.Errorf("deb: %s: bad Valid-Until %q: %w", relURL, vu, err)
		}
		if time.Now().After(t) {
			return nil, fmt.Errorf("deb: %s expired at %s (Valid-Until)", relURL, t.Format(time.RFC3339))
		}
	}

	sums := parseChecksums(release.Get("SHA256"))
	dir := r.component() + "/binary-" + r.arch()
	var (
		file string
		sum  checksum
	)
	for _, ext := range []string{".xz", ".gz", ""} {
		if s, ok := sums[dir+"/Packages"+ext]; ok {
			file, sum = dir+"/Packages"+ext, s
			break
		}
	}
	if file == "" {
		return nil, fmt.Errorf("deb: %s lists no SHA256 for %s/Packages{.xz,.gz,} (components: %s; architectures: %s)",
			relURL, dir, release.Get("Components"), release.Get("Architectures"))
	}

	distURL := r.base() + "/dists/" + r.Suite + "/"
	urls := []string{distURL + file}
	if strings.EqualFold(release.Get("Acquire-By-Hash"), "yes") {
		// by-hash paths do not race with mirror updates.
		urls = []string{distURL + dir + "/by-hash/SHA256/" + sum.hex, distURL + file}
	}
	var errs []error
	for _, u := range urls {
		idx, err := r.fetchIndex(ctx, u, file, sum, step)
		if err == nil {
			n := 0
			for _, v := range idx.pkgs {
				n += len(v)
			}
			log.InfoContext(ctx, "loaded package index", "url", u, "packages", len(idx.pkgs), "versions", n, "malformed", len(idx.invalid))
			idx.url = distURL + file
			return idx, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		log.WarnContext(ctx, "package index unusable", "url", u, "err", err)
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func readKeyring(p string) (openpgp.EntityList, error) {
	data, err := localfile.ReadFile(p, 64<<20)
	if err != nil {
		return nil, fmt.Errorf("deb: reading keyring: %w", err)
	}
	var keys openpgp.EntityList
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN PGP")) {
		keys, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	} else {
		keys, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("deb: parsing keyring %s: %w", p, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("deb: keyring %s holds no keys", p)
	}
	return keys, nil
}

func (r *Repo) get(ctx context.Context, url string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rc, err := r.Getter.Get(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("deb: fetching %s: %w", url, err)
	}
	return rc, nil
}

func (r *Repo) getAll(ctx context.Context, url string, limit int64) ([]byte, error) {
	rc, err := r.get(ctx, url)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("deb: reading %s: %w", url, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("deb: %s is larger than %d bytes", url, limit)
	}
	return data, nil
}

// fetchIndex downloads a Packages file, decompresses and parses it while
// hashing, and only returns the result if size and SHA256 match.
func (r *Repo) fetchIndex(ctx context.Context, url, file string, want checksum, step *progress.Step) (*index, error) {
	if want.size > maxIndex {
		return nil, fmt.Errorf("deb: %s is listed as %d bytes, more than the %d allowed", file, want.size, maxIndex)
	}
	r.logger().DebugContext(ctx, "fetching package index", "url", url, "size", want.size)
	rc, err := r.get(ctx, url)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	h := sha256.New()
	counted := &hashCounter{h: h}
	step.Set(0, 0) // a second URL starts over
	step.SetTotal(want.size)
	body := io.TeeReader(io.LimitReader(rc, want.size+1), io.MultiWriter(counted, step.Writer()))

	var plain io.Reader = body
	switch path.Ext(file) {
	case ".xz":
		plain, err = newXZReader(body)
	case ".gz":
		plain, err = gzip.NewReader(body)
	}
	var idx *index
	if err == nil {
		idx, err = r.parseIndex(ctx, plain, step)
	}
	// Hash whatever is left so a mismatch is reported as such, which is
	// the more useful error when the content is corrupt.
	if _, cerr := io.Copy(io.Discard, body); cerr != nil && err == nil {
		err = cerr
	}
	got := hex.EncodeToString(h.Sum(nil))
	switch {
	case counted.n != want.size:
		return nil, fmt.Errorf("deb: size mismatch for %s: got %d bytes, InRelease says %d", url, counted.n, want.size)
	case got != want.hex:
		return nil, fmt.Errorf("deb: hash mismatch for %s: sha256 %s, InRelease says %s", url, got, want.hex)
	case err != nil:
		return nil, fmt.Errorf("deb: reading %s: %w", url, err)
	}
	return idx, nil
}

type hashCounter struct {
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// parseIndex parses a Packages file. Malformed entries are skipped (and
// reported when asked for) rather than failing the whole index.
func (r *Repo) parseIndex(ctx context.Context, rd io.Reader, step *progress.Step) (*index, error) {
	pkgs := map[string][]Resolved{}
	invalid := map[string]error{}
	base := r.base()
	n := 0
	for p, err := range ParseParagraphs(rd) {
		if err != nil {
			return nil, err
		}
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		name := p.Get("Package")
		if name == "" {
			continue
		}
		step.Add(0, 1)
		res, err := entry(base, p)
		if err != nil {
			r.logger().WarnContext(ctx, "skipping malformed index entry", "package", name, "version", p.Get("Version"), "err", err)
			invalid[name] = fmt.Errorf("version %s: %w", p.Get("Version"), err)
			continue
		}
		pkgs[name] = append(pkgs[name], res)
	}
	for _, v := range pkgs {
		slices.SortStableFunc(v, func(a, b Resolved) int { return CompareVersions(b.Version, a.Version) })
	}
	return &index{pkgs: pkgs, invalid: invalid}, nil
}

func entry(base string, p Paragraph) (Resolved, error) {
	res := Resolved{
		Package:      p.Get("Package"),
		Version:      p.Get("Version"),
		Architecture: p.Get("Architecture"),
		SHA256:       strings.ToLower(p.Get("SHA256")),
		Depends:      p.Folded("Depends"),
	}
	fn := p.Get("Filename")
	if fn == "" || strings.HasPrefix(fn, "/") || strings.Contains(fn, "\\") ||
		slices.Contains(strings.Split(fn, "/"), "..") || strings.ContainsAny(fn, "?#\n ") {
		return Resolved{}, fmt.Errorf("invalid Filename %q", fn)
	}
	res.URL = base + "/" + fn
	if !isHexSHA256(res.SHA256) {
		return Resolved{}, fmt.Errorf("invalid SHA256 %q", res.SHA256)
	}
	size, err := strconv.ParseInt(p.Get("Size"), 10, 64)
	if err != nil || size < 0 {
		return Resolved{}, fmt.Errorf("invalid Size %q", p.Get("Size"))
	}
	res.Size = size
	if res.Version == "" {
		return Resolved{}, errors.New("missing Version")
	}
	return res, nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

type checksum struct {
	hex  string
	size int64
}

// parseChecksums parses a Release file checksum field: lines of
// "hash size path".
func parseChecksums(v string) map[string]checksum {
	m := map[string]checksum{}
	for line := range strings.SplitSeq(v, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || !isHexSHA256(strings.ToLower(f[0])) {
			continue
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 {
			continue
		}
		m[f[2]] = checksum{hex: strings.ToLower(f[0]), size: size}
	}
	return m
}

func parseReleaseDate(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC1123Z, time.RFC1123, "Mon, 2 Jan 2006 15:04:05 MST", "Mon, 2 Jan 2006 15:04:05 -0700"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("unrecognized date format")
}

// closeNames returns up to n package names similar to name.
func closeNames(idx *index, name string, n int) []string {
	type scored struct {
		name string
		d    int
	}
	var c []scored
	maxD := max(2, len(name)/3)
	for k := range idx.pkgs {
		d := levenshtein(name, k)
		if strings.Contains(k, name) || strings.Contains(name, k) && len(k) > 3 {
			d = min(d, maxD)
		}
		if d <= maxD {
			c = append(c, scored{k, d})
		}
	}
	slices.SortFunc(c, func(a, b scored) int {
		return cmp.Or(cmp.Compare(a.d, b.d), cmp.Compare(len(a.name), len(b.name)), strings.Compare(a.name, b.name))
	})
	out := make([]string, 0, n)
	for i := 0; i < len(c) && i < n; i++ {
		out = append(out, c[i].name)
	}
	return out
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

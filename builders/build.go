// Package builders runs a build end to end: it assembles the spec's layers, composes the
// canonical rootfs, writes the requested targets from it and records the image in the store.
package builders

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/builders/sparse"
	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/assemble"
	"github.com/imgctl/imgctl/layers/compose"
	"github.com/imgctl/imgctl/layers/lock"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// rootfsVersion is part of the cache key that maps role layers to a composed rootfs.
const rootfsVersion = "rootfs/1"

// ErrLockChanged is returned with Options.Locked when the build would change the lock file.
var ErrLockChanged = errors.New("the lock file is out of date")

// Target writes one kind of artifact from the composed rootfs.
type Target interface {
	Name() string
	Write(ctx context.Context, b *Build) ([]manifest.Artifact, error)
}

// Targets is the table of target writers by name.
var Targets = map[string]Target{
	"rootfs": rootfsTarget{},
	"raw":    rawTarget{},
}

// TargetNames lists the known targets, sorted.
func TargetNames() []string {
	names := make([]string, 0, len(Targets))
	for n := range Targets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Options configure a build.
type Options struct {
	Spec     *spec.NodeImage
	LockPath string // read and written; "" = no lock file
	// UpdateLock ignores the pins of the existing lock and resolves every source again.
	UpdateLock bool
	// Locked fails the build (ErrLockChanged) instead of changing the lock file: for CI.
	Locked bool
	// SourceDateEpoch overrides the spec and the lock (the SOURCE_DATE_EPOCH environment
	// variable, read by the CLI).
	SourceDateEpoch *int64
	Env             *source.Env
	Store           *store.Store
	Targets         []string // default: the spec's targets
	OutputDir       string   // also place the artifacts here ("" = only the store)
	Parallel        int
	ImgctlVersion   string
	Raw             RawOptions
	Logger          *slog.Logger
	Now             func() time.Time // for tests; default time.Now
}

// Phase is one timed step of a build.
type Phase struct {
	Name     string
	Duration time.Duration
}

// Result is a finished build.
type Result struct {
	Image  store.Image
	Layers []assemble.Layer
	Phases []Phase
	// Reused reports that the rootfs was already in the store and was not composed again.
	Reused bool
}

// Build is the state targets write from.
type Build struct {
	Options
	Layers []assemble.Layer
	// Rootfs is set once the rootfs is composed: into the store by ComposeRootfs, or by a
	// target that consumed RootfsStream.
	Rootfs manifest.Rootfs
	Epoch  int64
	reused bool
	// config is the image config without Rootfs; composing the rootfs fills in Binaries.
	config manifest.Config
}

// ComposeRootfs composes the rootfs blob into the store (random access for targets), unless
// the same layers were composed before and the blob is still there.
func (b *Build) ComposeRootfs(ctx context.Context) error {
	if b.Rootfs.Digest != "" {
		return nil
	}
	r, reused, info, err := composeRootfs(ctx, b.Options, b.Layers, b.Epoch, b.finalize)
	if err != nil {
		return err
	}
	if reused { // the rootfs already holds image.json: take the binaries from it
		i, err := imageinfo.Parse(info)
		if err != nil {
			return fmt.Errorf("rootfs %s: %s: %w", r.Digest, imageinfo.Path, err)
		}
		b.config.Binaries = binaryDigests(i.Binaries)
	}
	b.Rootfs, b.reused = r, reused
	return nil
}

// RootfsStream composes the rootfs into a pipe, for a target that reads it once in order and
// does not need it in the store. wait returns when the stream is done and sets b.Rootfs; call
// it after reading to the end (or after closing the reader to give up).
func (b *Build) RootfsStream(ctx context.Context) (r io.ReadCloser, wait func() error, err error) {
	inputs, closeInputs, err := openLayers(b.Env, b.Layers)
	if err != nil {
		return nil, nil, err
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		defer closeInputs()
		dg := digest.SHA256.Digester()
		cw := &countingWriter{}
		res, err := compose.Compose(ctx, io.MultiWriter(pw, dg.Hash(), cw), inputs, compose.Options{Mode: compose.Rootfs, MTime: time.Unix(b.Epoch, 0), Finalize: b.finalize})
		pw.CloseWithError(err)
		if err == nil {
			b.Rootfs = manifest.Rootfs{Digest: dg.Digest(), Size: cw.n, Entries: res.Entries}
		}
		done <- err
	}()
	return pr, func() error { return <-done }, nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// openLayers opens the role layers' tars in the cache as compose inputs.
func openLayers(env *source.Env, layers []assemble.Layer) ([]compose.Input, func(), error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var inputs []compose.Input
	for _, l := range layers {
		f, err := env.Cache.Open(l.Digest)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("layer %s: %w", l.Role, err)
		}
		files = append(files, f)
		inputs = append(inputs, compose.Input{Name: layerName(l), Reader: f, Size: l.Size})
	}
	return inputs, closeAll, nil
}

// layerName names a role layer in compose errors by its role and sources: an entry a lower
// role's symlink makes unsafe is refused only when the rootfs is composed.
func layerName(l assemble.Layer) string {
	uris := make([]string, len(l.Sources))
	for i, s := range l.Sources {
		uris[i] = s.URI
	}
	if len(uris) == 0 {
		return string(l.Role)
	}
	return fmt.Sprintf("%s (%s)", l.Role, strings.Join(uris, ", "))
}

// Run builds the image described by opts.Spec.
func Run(ctx context.Context, opts Options) (*Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	n := opts.Spec
	targets := opts.Targets
	if len(targets) == 0 {
		targets = n.Spec.Targets
	}
	if len(targets) == 0 {
		targets = []string{"rootfs"}
	}
	var unique []string // --target raw --target raw is one target
	for _, t := range targets {
		if !slices.Contains(unique, t) {
			unique = append(unique, t)
		}
	}
	targets = unique
	for _, t := range targets {
		if _, ok := Targets[t]; !ok {
			return nil, fmt.Errorf("unknown target %q (supported: %s)", t, strings.Join(TargetNames(), ", "))
		}
	}
	res := &Result{}
	phase := func(name string, start time.Time) {
		res.Phases = append(res.Phases, Phase{name, time.Since(start)})
	}

	// Temp files of builds killed an hour or more ago are garbage; younger ones may be live.
	if err := opts.Env.Cache.Clean(ctx, time.Hour); err != nil {
		log.Warn("cleaning stale cache temp files", "err", err)
	}

	// Resolve: pin every source.
	start := time.Now()
	var old *lock.File
	if opts.LockPath != "" {
		var err error
		if old, err = lock.Load(opts.LockPath); err != nil {
			return nil, err
		}
	}
	epoch := now().Unix()
	switch {
	case opts.SourceDateEpoch != nil:
		epoch = *opts.SourceDateEpoch
	case n.Spec.SourceDateEpoch != nil:
		epoch = *n.Spec.SourceDateEpoch
	case old != nil && !opts.UpdateLock:
		epoch = old.SourceDateEpoch
	}
	opts.Env.MTime = time.Unix(epoch, 0).UTC()
	pinsFrom := old
	if opts.UpdateLock {
		pinsFrom = nil
	}
	plan, err := assemble.Resolve(ctx, n, pinsFrom, epoch, assemble.Options{Env: opts.Env, Parallel: opts.Parallel, Logger: log})
	if err != nil {
		return nil, err
	}
	newLock, err := plan.Lock.Marshal()
	if err != nil {
		return nil, err
	}
	if opts.Locked {
		var oldLock []byte
		if old != nil {
			oldLock, _ = old.Marshal()
		}
		if string(oldLock) != string(newLock) {
			return nil, fmt.Errorf("%s: %w (run without --locked to update it)", opts.LockPath, ErrLockChanged)
		}
	}
	phase("resolve", start)

	// Fetch: materialize sources and compose role layers.
	start = time.Now()
	layers, err := assemble.Layers(ctx, plan, epoch, assemble.Options{Env: opts.Env, Parallel: opts.Parallel, Logger: log})
	if err != nil {
		return nil, err
	}
	res.Layers = layers
	phase("fetch", start)

	// Compose: the canonical rootfs, straight into the store, when a target publishes it. The raw
	// target alone streams it into the squashfs writer instead (see Build.RootfsStream).
	b := &Build{Options: opts, Layers: layers, Epoch: epoch,
		config: imageConfig(n, plan, layers, epoch, opts.ImgctlVersion, newLock)}
	if slices.Contains(targets, "rootfs") {
		start = time.Now()
		if err := b.ComposeRootfs(ctx); err != nil {
			return nil, err
		}
		res.Reused = b.reused
		phase("compose", start)
	}

	// Write: targets, then the image.
	start = time.Now()
	var artifacts []manifest.Artifact
	for _, t := range targets {
		as, err := Targets[t].Write(ctx, b)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t, err)
		}
		artifacts = append(artifacts, as...)
	}
	if b.Rootfs.Digest == "" {
		return nil, errors.New("internal: no target composed the rootfs")
	}
	cfg := b.config
	cfg.Rootfs = b.Rootfs
	cfg.Version = readableVersion(cfg, artifacts)
	if _, err := opts.Store.PutImage(ctx, cfg, artifacts); err != nil {
		return nil, err
	}
	img, err := opts.Store.Resolve(ctx, cfg.Version)
	if err != nil {
		return nil, err
	}
	res.Image = img
	if opts.OutputDir != "" {
		if err := exportArtifacts(ctx, opts.Store, opts.OutputDir, artifacts); err != nil {
			return nil, err
		}
	}
	if opts.LockPath != "" && !opts.Locked {
		if err := plan.Lock.Save(opts.LockPath); err != nil {
			return nil, fmt.Errorf("writing %s: %w", opts.LockPath, err)
		}
	}
	phase("write", start)
	log.Info("built image", "digest", img.Digest(), "version", cfg.Version)
	return res, nil
}

// composeRootfs composes the role layers into the rootfs blob in the store, unless the same
// layers were composed before and the blob is still there.
func composeRootfs(ctx context.Context, opts Options, layers []assemble.Layer, epoch int64, finalize func(context.Context, *compose.Files) ([]compose.Generated, error)) (manifest.Rootfs, bool, []byte, error) {
	ca := opts.Env.Cache
	keyParts := []string{rootfsVersion, fmt.Sprint(epoch)}
	for _, l := range layers {
		keyParts = append(keyParts, string(l.Digest))
	}
	key := strings.Join(keyParts, "\n")
	// TouchBlob, not HasBlob: it also marks the blob as in use, so a concurrent gc spares it.
	if d, err := ca.Ref("rootfs", key); err == nil && opts.Store.TouchBlob(d) == nil {
		if r, info, err := countRootfs(ctx, opts.Store, d); err == nil && info != nil {
			return r, true, info, nil
		}
	}
	inputs, closeInputs, err := openLayers(opts.Env, layers)
	if err != nil {
		return manifest.Rootfs{}, false, nil, err
	}
	defer closeInputs()
	w, err := opts.Store.NewBlobWriter(ctx)
	if err != nil {
		return manifest.Rootfs{}, false, nil, err
	}
	defer w.Abort()
	cres, err := compose.Compose(ctx, w, inputs, compose.Options{Mode: compose.Rootfs, MTime: time.Unix(epoch, 0), Finalize: finalize})
	if err != nil {
		return manifest.Rootfs{}, false, nil, err
	}
	d, size, err := w.Commit(ctx, -1, "")
	if err != nil {
		return manifest.Rootfs{}, false, nil, err
	}
	if err := ca.SetRef("rootfs", key, d); err != nil {
		return manifest.Rootfs{}, false, nil, err
	}
	return manifest.Rootfs{Digest: d, Size: size, Entries: cres.Entries}, false, nil, nil
}

// countRootfs counts a stored rootfs's entries and returns its image.json.
func countRootfs(ctx context.Context, st *store.Store, d digest.Digest) (manifest.Rootfs, []byte, error) {
	p, err := st.BlobPath(d)
	if err != nil {
		return manifest.Rootfs{}, nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return manifest.Rootfs{}, nil, err
	}
	defer f.Close()
	var info []byte
	n, size, err := source.CountEntries(ctx, f, func(name string, r io.Reader) error {
		if name == strings.TrimPrefix(imageinfo.Path, "/") {
			info, err = io.ReadAll(io.LimitReader(r, 16<<20))
			return err
		}
		return nil
	})
	if err != nil {
		return manifest.Rootfs{}, nil, err
	}
	return manifest.Rootfs{Digest: d, Size: size, Entries: n}, info, nil
}

func imageConfig(n *spec.NodeImage, plan *assemble.Plan, layers []assemble.Layer, epoch int64, imgctlVersion string, lockBytes []byte) manifest.Config {
	sd := digest.SHA256.Digester()
	sd.Hash().Write(n.Canonical())
	sd.Hash().Write([]byte("\n"))
	sd.Hash().Write(lockBytes)
	cfg := manifest.Config{
		SchemaVersion:   manifest.SchemaVersion,
		Name:            n.Metadata.Name,
		SpecDigest:      sd.Digest(),
		Kubernetes:      n.Spec.Kubernetes.Version,
		Imgctl:          imgctlVersion,
		SourceDateEpoch: epoch,
	}
	for i, l := range layers {
		ml := manifest.Layer{Role: string(l.Role), Version: l.Version, Digest: l.Digest, Size: l.Size}
		for _, p := range plan.Layers[i].Pins {
			ml.Sources = append(ml.Sources, manifest.Source{URI: p.URI, Digest: p.Digest, Resolved: p.Resolved})
		}
		cfg.Layers = append(cfg.Layers, ml)
		switch l.Role {
		case spec.RoleKernel:
			cfg.Kernel = l.KernelRelease
		case spec.RoleBootstrap:
			cfg.Bootstrap = l.Version
		}
	}
	return cfg
}

// readableVersion is K8S-KERNEL-DATE.HASH, e.g. 1.21.13-6.1.0-28-20261126.3f9a1c2b: sortable
// by date, and unique because HASH covers the whole config and every artifact (the same
// inputs built for other targets are another image).
func readableVersion(cfg manifest.Config, artifacts []manifest.Artifact) string {
	enc, err := json.Marshal(struct {
		Config    manifest.Config
		Artifacts []manifest.Artifact
	}{cfg, artifacts}) // cfg.Version is still empty here
	if err != nil {
		panic(err) // plain data always marshals
	}
	sum := sha256.Sum256(enc)
	parts := []string{cfg.Kubernetes}
	if k := kernelShort(cfg.Kernel); k != "" {
		parts = append(parts, k)
	}
	parts = append(parts, time.Unix(cfg.SourceDateEpoch, 0).UTC().Format("20060102"))
	return strings.Join(parts, "-") + "." + hex.EncodeToString(sum[:4])
}

// kernelShort keeps the numeric part of a kernel release: 6.1.0-28-cloud-amd64 -> 6.1.0-28.
func kernelShort(release string) string {
	var keep []string
	for _, p := range strings.Split(release, "-") {
		if p == "" || strings.Trim(p, "0123456789.") != "" {
			break
		}
		keep = append(keep, p)
	}
	return strings.Join(keep, "-")
}

// exportArtifacts places each artifact in dir under its name, as a file of its own (a reflink
// where the filesystem shares extents, else a copy: never a hard link, since the user may write
// to the output and must not thereby change the store); a sparse disk image is expanded to
// disk.raw (holes stay holes).
func exportArtifacts(ctx context.Context, st *store.Store, dir string, artifacts []manifest.Artifact) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, a := range artifacts {
		name := a.Name
		if a.MediaType == manifest.DiskSparseMediaType {
			name = strings.TrimSuffix(name, ".simg") + ".raw"
		}
		dst := filepath.Join(dir, name)
		tmp := dst + ".tmp"
		_ = os.Remove(tmp)
		var err error
		switch {
		case a.MediaType == manifest.DiskSparseMediaType:
			err = expandFile(ctx, st, a.Digest, tmp)
		default:
			err = cloneFile(ctx, st, a.Digest, tmp)
		}
		if err == nil {
			err = os.Rename(tmp, dst)
		}
		if err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("exporting %s: %w", name, err)
		}
	}
	return nil
}

// writeBlobTo writes blob d to a new file dst through fill (a plain copy, or a sparse
// expansion), then fsyncs it. The caller removes dst on error.
func writeBlobTo(ctx context.Context, st *store.Store, d digest.Digest, dst string, fill func(f *os.File, r io.Reader) error) error {
	rc, err := st.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := fill(f, rc); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func expandFile(ctx context.Context, st *store.Store, d digest.Digest, dst string) error {
	return writeBlobTo(ctx, st, d, dst, func(f *os.File, r io.Reader) error {
		_, err := sparse.Expand(ctx, f, r)
		return err
	})
}

// cloneFile writes blob d to the new file dst as a reflink (FICLONE: shared extents, copied on
// write, so a write to dst never reaches the store) and checks the clone's digest; where the
// filesystem cannot clone, it copies.
func cloneFile(ctx context.Context, st *store.Store, d digest.Digest, dst string) error {
	src, err := st.BlobPath(d)
	if err != nil {
		return err
	}
	err = reflink(src, dst)
	if err == nil {
		err = checkDigest(ctx, dst, d)
	}
	if err != nil {
		_ = os.Remove(dst)
		return copyFile(ctx, st, d, dst)
	}
	return nil
}

// reflink makes dst, a new file, share src's extents, and fsyncs it.
func reflink(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		out.Close()
		return fmt.Errorf("reflink %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// checkDigest re-reads the file at path and fails unless it hashes to d.
func checkDigest(ctx context.Context, path string, d digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	v := d.Verifier()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.Read(buf)
		_, _ = v.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if !v.Verified() {
		return fmt.Errorf("%s does not hash to %s", path, d)
	}
	return nil
}

func copyFile(ctx context.Context, st *store.Store, d digest.Digest, dst string) error {
	return writeBlobTo(ctx, st, d, dst, func(f *os.File, r io.Reader) error {
		_, err := io.Copy(f, r)
		return err
	})
}

// rootfsTarget publishes the canonical rootfs tar itself.
type rootfsTarget struct{}

func (rootfsTarget) Name() string { return "rootfs" }

func (rootfsTarget) Write(ctx context.Context, b *Build) ([]manifest.Artifact, error) {
	if err := b.ComposeRootfs(ctx); err != nil {
		return nil, err
	}
	return []manifest.Artifact{{Name: "rootfs.tar", MediaType: manifest.RootfsMediaType, Digest: b.Rootfs.Digest, Size: b.Rootfs.Size}}, nil
}

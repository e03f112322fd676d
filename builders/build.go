// Package builders runs a build end to end: it assembles the spec's layers, composes the
// canonical rootfs, writes the requested targets from it and records the image in the store.
package builders

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders/initrd"
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

// LockChangedError is ErrLockChanged with what would change: the sources whose pins differ.
type LockChangedError struct {
	Path    string
	Changes []lock.Change
}

func (e *LockChangedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v (run without --locked to update it)", e.Path, ErrLockChanged)
	if len(e.Changes) > 0 {
		b.WriteString(":")
	}
	b.WriteString(e.ChangeLines())
	return b.String()
}

// ChangeLines lists the changes for a message, each on a line of its own after "\n  ", so a
// front end can word the first line in its own terms.
func (e *LockChangedError) ChangeLines() string {
	var b strings.Builder
	for _, c := range e.Changes {
		b.WriteString("\n  " + c.String())
	}
	return b.String()
}

func (e *LockChangedError) Unwrap() error { return ErrLockChanged }

// Options configure a build.
type Options struct {
	Spec     *spec.NodeImage
	LockPath string // read and written; "" = no lock file
	// UpdateLock ignores the pins of the existing lock and resolves every source again.
	UpdateLock bool
	// Locked fails the build (ErrLockChanged) instead of changing the lock file: for CI.
	Locked bool
	// SourceDateEpoch overrides the spec and the lock (the SOURCE_DATE_EPOCH environment
	// variable; see Setup).
	SourceDateEpoch *int64
	// Env is the source environment; its NodeAgent is also every initrd's /init.
	Env   *source.Env
	Store *store.Store
	// Targets to write, in order (see package builders/targets for the known ones). At least
	// one is required.
	Targets       []Target
	OutputDir     string // also place the artifacts here ("" = only the store)
	Parallel      int
	ImgctlVersion string
	Logger        *slog.Logger
	Now           func() time.Time // for tests; default time.Now
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
	// Published holds each Publisher target's result, by target name.
	Published map[string]any
	// Files are the files written into Options.OutputDir (none without it).
	Files []string
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

// Build is one build's state: it implements Steps for its targets.
type Build struct {
	opts   Options
	log    *slog.Logger
	layers []assemble.Layer
	epoch  int64
	// config is the image config without Rootfs; composing the rootfs fills in Binaries.
	config manifest.Config

	mu           sync.Mutex
	rootfs       manifest.Rootfs // set once composed or found from an earlier build
	rootfsStored bool            // the rootfs blob is in the store
	reused       bool            // the rootfs was found from an earlier build, not composed
	kernel       *initrd.Kernel
	kernelFrom   string // where the kernel was read: part of the initrd cache key
	bootloader   *io.SectionReader
	kernelBlob   Blob          // the kernel image, once stored
	agent        digest.Digest // of the node agent file, for the initrd cache key
	initrds      map[string]Initrd
	squashfs     map[SquashfsOptions]RootBlob
	late         []lateFile // rootfs paths stored last in the squashfs, once listed (lateFilesLocked)
	files        []*os.File // opened layer and blob files, closed when the build ends
	phases       []Phase    // shared steps that did work, in order
}

// Spec implements Steps.
func (b *Build) Spec() *spec.NodeImage { return b.opts.Spec }

// Epoch implements Steps.
func (b *Build) Epoch() int64 { return b.epoch }

// Store implements Steps.
func (b *Build) Store() *store.Store { return b.opts.Store }

// Logger implements Steps.
func (b *Build) Logger() *slog.Logger { return b.log }

// timed records a shared step that did work as a phase: defer b.timed(name, time.Now()).
func (b *Build) timed(name string, start time.Time) {
	b.phases = append(b.phases, Phase{name, time.Since(start)})
}

// StepError is the failure of a step that several targets share (composing the rootfs, the
// initrd, the root squashfs): it is reported once, not as one target's.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Err.Error() }

func (e *StepError) Unwrap() error { return e.Err }

// mtime is the build's timestamp for everything it writes.
func (b *Build) mtime() time.Time { return time.Unix(b.epoch, 0).UTC() }

func (b *Build) close() {
	for _, f := range b.files {
		f.Close()
	}
	b.files = nil
}

// rootfsKey names the rootfs the role layers compose to, in the cache.
func (b *Build) rootfsKey() string {
	keyParts := []string{rootfsVersion, fmt.Sprint(b.epoch)}
	for _, l := range b.layers {
		keyParts = append(keyParts, string(l.Digest))
	}
	return strings.Join(keyParts, "\n")
}

// Rootfs implements Steps.
func (b *Build) Rootfs(ctx context.Context) (manifest.Rootfs, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rootfsLocked(ctx, false, nil)
}

// StoredRootfs implements Steps: composed into the store unless the same layers were composed
// before and the blob is still there.
func (b *Build) StoredRootfs(ctx context.Context) (manifest.Rootfs, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rootfsLocked(ctx, true, nil)
}

// rootfsRecord is what a build keeps of a rootfs it composed without storing it (a raw or pxe
// build needs only its stream): enough to record it in the image and to find the squashfs made
// from it, so a rebuild of the same layers composes nothing.
type rootfsRecord struct {
	Rootfs   manifest.Rootfs
	Binaries map[string]digest.Digest
}

// rootfsLocked makes the rootfs known: composed (or found from an earlier build), and in the
// store when stored is set. With also set, the tar stream is written to it too as it is
// composed (so a squashfs is compressed while the rootfs is composed).
func (b *Build) rootfsLocked(ctx context.Context, stored bool, also io.Writer) (manifest.Rootfs, error) {
	if also == nil && b.rootfs.Digest != "" && (b.rootfsStored || !stored) {
		return b.rootfs, nil
	}
	if also == nil && b.findRootfs(ctx, stored) {
		return b.rootfs, nil
	}
	if also == nil { // else the caller times compose and its consumer as one phase
		defer b.timed("compose", time.Now())
	}
	inputs, closeInputs, err := openLayers(b.opts.Env, b.layers)
	if err != nil {
		return manifest.Rootfs{}, err
	}
	defer closeInputs()
	// Stored: into a blob writer (it hashes what it writes). Otherwise only hashed: writing and
	// fsyncing half a gigabyte that no target reads cost a raw build 0.9 s (15%).
	var sink io.Writer
	var finish func() (digest.Digest, int64, error)
	if stored {
		w, err := b.opts.Store.NewBlobWriter(ctx)
		if err != nil {
			return manifest.Rootfs{}, err
		}
		defer w.Abort()
		sink, finish = w, func() (digest.Digest, int64, error) { return w.Commit(ctx, -1, "") }
	} else {
		h, n := digest.SHA256.Digester(), &countingWriter{}
		sink = io.MultiWriter(h.Hash(), n)
		finish = func() (digest.Digest, int64, error) { return h.Digest(), n.n, nil }
	}
	dst := sink
	if also != nil {
		dst = io.MultiWriter(sink, also)
	}
	// compose reports its own progress step ("compose rootfs").
	cres, err := compose.Compose(ctx, dst, inputs, compose.Options{Mode: compose.Rootfs, MTime: time.Unix(b.epoch, 0), Finalize: b.finalize})
	if err != nil {
		return manifest.Rootfs{}, &StepError{"compose rootfs", err}
	}
	d, size, err := finish()
	if err == nil && b.rootfs.Digest != "" && d != b.rootfs.Digest {
		err = fmt.Errorf("composing the same layers again gave rootfs %s, earlier %s: compose is not deterministic", d, b.rootfs.Digest)
	}
	if err == nil && stored {
		err = b.opts.Env.Cache.SetRef("rootfs", b.rootfsKey(), d)
	}
	b.rootfs, b.rootfsStored = manifest.Rootfs{Digest: d, Size: size, Entries: cres.Entries}, stored
	if err == nil {
		err = b.saveRootfsRecord(ctx)
	}
	if err != nil {
		return manifest.Rootfs{}, &StepError{"compose rootfs", err}
	}
	return b.rootfs, nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// saveRootfsRecord stores b's rootfs record as a small blob, found by the layers' cache key.
func (b *Build) saveRootfsRecord(ctx context.Context) error {
	data, err := json.Marshal(rootfsRecord{Rootfs: b.rootfs, Binaries: b.config.Binaries})
	if err != nil {
		return err
	}
	d, _, err := b.opts.Store.WriteBlob(ctx, bytes.NewReader(data), int64(len(data)), "")
	if err != nil {
		return err
	}
	return b.opts.Env.Cache.SetRef("rootfs-record", b.rootfsKey(), d)
}

// findRootfs looks for what these layers composed to in an earlier build: its record, and the
// rootfs blob too when stored is set.
func (b *Build) findRootfs(ctx context.Context, stored bool) bool {
	rd, err := b.opts.Env.Cache.Ref("rootfs-record", b.rootfsKey())
	// TouchBlob, not HasBlob: it also marks the blob as in use, so a concurrent gc spares it.
	if err == nil && b.opts.Store.TouchBlob(rd) == nil {
		var rec rootfsRecord
		data, err := readSmallBlob(ctx, b.opts.Store, rd)
		if err == nil {
			err = json.Unmarshal(data, &rec)
		}
		switch {
		case err != nil || rec.Rootfs.Digest.Validate() != nil:
			b.log.Warn("unreadable rootfs record: composing the rootfs again", "record", rd, "err", err)
		default:
			have := b.opts.Store.TouchBlob(rec.Rootfs.Digest) == nil
			if have || !stored {
				b.config.Binaries = rec.Binaries
				b.rootfs, b.rootfsStored, b.reused = rec.Rootfs, have, true
				return true
			}
		}
	}
	return b.findStoredRootfs(ctx)
}

// readSmallBlob reads a blob of at most 1 MiB, verified.
func readSmallBlob(ctx context.Context, st *store.Store, d digest.Digest) ([]byte, error) {
	rc, err := st.OpenBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, 1<<20))
}

// findStoredRootfs looks for a stored rootfs of these layers without a record (composed by an
// imgctl from before records).
func (b *Build) findStoredRootfs(ctx context.Context) bool {
	d, err := b.opts.Env.Cache.Ref("rootfs", b.rootfsKey())
	if err != nil || b.opts.Store.TouchBlob(d) != nil {
		return false
	}
	r, info, err := countRootfs(ctx, b.opts.Store, d)
	if err != nil || info == nil {
		return false
	}
	i, err := imageinfo.Parse(info)
	if err != nil {
		b.log.Warn("stored rootfs has a bad image.json: composing it again", "rootfs", d, "err", err)
		return false
	}
	b.config.Binaries = binaryDigests(i.Binaries)
	b.rootfs, b.rootfsStored, b.reused = r, true, true
	return true
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
		Flavor:          n.Spec.Flavor,
		Architecture:    Architecture,
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

// Run builds the image described by opts.Spec, writes opts.Targets and stores the image; then
// the targets that are Publishers publish it. When publishing fails the result is returned
// with the error (a *PublishError): the image is built.
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
	if len(opts.Targets) == 0 {
		return nil, errors.New("no target to write (see builders/targets)")
	}
	var targets []Target // --target raw --target raw is one target
	seen := map[string]bool{}
	for _, t := range opts.Targets {
		if !seen[t.Name()] {
			seen[t.Name()] = true
			targets = append(targets, t)
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
			return nil, &LockChangedError{Path: opts.LockPath, Changes: lock.Diff(old, plan.Lock)}
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

	// Write: each target asks the build for the shared steps it needs (rootfs, kernel, initrd,
	// root squashfs); the first asker computes a step, later ones reuse it.
	b := &Build{opts: opts, log: log, layers: layers, epoch: epoch,
		config: imageConfig(n, plan, layers, epoch, opts.ImgctlVersion, newLock)}
	defer b.close()
	for _, t := range targets {
		if rs, ok := t.(RootfsStorer); ok && rs.StoresRootfs() {
			if _, err := b.StoredRootfs(ctx); err != nil {
				return nil, err
			}
			res.Phases = append(res.Phases, b.phases...)
			b.phases = b.phases[:0]
			break
		}
	}
	var artifacts []manifest.Artifact
	for _, t := range targets {
		start, shared := time.Now(), len(b.phases)
		as, err := t.Write(ctx, b)
		if err != nil {
			var se *StepError
			if errors.As(err, &se) { // a shared step's error is no one target's
				return nil, err
			}
			return nil, fmt.Errorf("target %s: %w", t.Name(), err)
		}
		if artifacts, err = addArtifacts(artifacts, as, t.Name()); err != nil {
			return nil, err
		}
		// The shared steps this target ran are phases of their own.
		own := time.Since(start)
		for _, p := range b.phases[shared:] {
			own -= p.Duration
		}
		res.Phases = append(res.Phases, b.phases[shared:]...)
		res.Phases = append(res.Phases, Phase{t.Name(), own})
	}
	start = time.Now()
	// Every image records its rootfs (and the baked binaries image.json lists); a target that
	// needed only its stream did not store it.
	rootfs, err := b.Rootfs(ctx)
	if err != nil {
		return nil, err
	}
	res.Reused = b.reused
	cfg := b.config
	cfg.Rootfs = rootfs
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
		if res.Files, err = exportArtifacts(ctx, opts.Store, opts.OutputDir, artifacts); err != nil {
			return nil, err
		}
	}
	if opts.LockPath != "" && !opts.Locked {
		if err := plan.Lock.Save(opts.LockPath); err != nil {
			return nil, fmt.Errorf("writing %s: %w", opts.LockPath, err)
		}
	}
	phase("store", start)
	log.Info("built image", "digest", img.Digest(), "version", cfg.Version)
	// Publish last: the image is built and stored whatever happens to its publication.
	for _, t := range targets {
		p, ok := t.(Publisher)
		if !ok {
			continue
		}
		start = time.Now()
		out, err := p.Publish(ctx, opts.Store, img)
		phase("publish "+t.Name(), start)
		if out != nil { // with an error: how far publishing got
			if res.Published == nil {
				res.Published = map[string]any{}
			}
			res.Published[t.Name()] = out
		}
		if err != nil {
			return res, &PublishError{Target: t.Name(), Image: img, Err: err}
		}
	}
	return res, nil
}

// addArtifacts appends a target's artifacts. Targets share some (raw and pxe both publish the
// kernel and the initrd): the same name with the same content is one artifact, whose
// annotations are merged; the same name with other content is an error.
func addArtifacts(have, add []manifest.Artifact, target string) ([]manifest.Artifact, error) {
next:
	for _, a := range add {
		for i, h := range have {
			if h.Name != a.Name {
				continue
			}
			if h.Digest != a.Digest || h.MediaType != a.MediaType {
				return nil, fmt.Errorf("target %s writes %s (%s) but an earlier target wrote other content under that name (%s)", target, a.Name, a.Digest, h.Digest)
			}
			merged := maps.Clone(h.Annotations)
			for k, v := range a.Annotations {
				if old, ok := merged[k]; ok && old != v {
					return nil, fmt.Errorf("target %s annotates %s with %s=%q, an earlier target with %q", target, a.Name, k, v, old)
				}
				if merged == nil {
					merged = map[string]string{}
				}
				merged[k] = v
			}
			have[i].Annotations = merged
			continue next
		}
		have = append(have, a)
	}
	return have, nil
}

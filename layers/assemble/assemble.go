// Package assemble turns a spec and its lock into role layers: it pins every source, fetches
// and validates them in parallel, and composes each role's sources into one cached layer tar.
package assemble

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/compose"
	"github.com/imgctl/imgctl/layers/kmod"
	"github.com/imgctl/imgctl/layers/lock"
	"github.com/imgctl/imgctl/layers/progress"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// layerVersion is part of every role layer's cache key: bump it when composition changes.
const layerVersion = "role-layer/1"

// Layer is one composed role layer, cached as an uncompressed tar.
type Layer struct {
	Role    spec.Role
	Version string
	Digest  digest.Digest // of the layer tar in the cache
	Size    int64
	Sources []source.Tar
	// KernelRelease is the kernel version found under lib/modules (kernel role only).
	KernelRelease string
}

// Options configure Resolve and Layers.
type Options struct {
	Env *source.Env
	// Parallel bounds concurrent fetches and conversions (default: number of CPUs, at least 4:
	// fetching is network-bound).
	Parallel int
	Logger   *slog.Logger
}

func (o Options) parallel() int {
	if o.Parallel > 0 {
		return o.Parallel
	}
	return max(4, runtime.NumCPU())
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Plan is a spec with every source parsed and pinned.
type Plan struct {
	Spec   *spec.NodeImage
	Lock   *lock.File // the lock to write back: exactly the sources of Spec
	Layers []PlannedLayer
}

// PlannedLayer is a role with its parsed, pinned sources.
type PlannedLayer struct {
	Role    spec.Role
	Version string
	URIs    []source.URI
	Pins    []source.Pin
}

// Resolve parses every source URI of n (errors name the spec position) and pins each one,
// trusting old for sources it already pins.
func Resolve(ctx context.Context, n *spec.NodeImage, old *lock.File, epoch int64, opts Options) (*Plan, error) {
	plan := &Plan{Spec: n, Lock: &lock.File{Version: lock.Version, SourceDateEpoch: epoch}}
	var errs []error
	for i, l := range n.Spec.Layers {
		pl := PlannedLayer{Role: l.Role, Version: l.Version}
		for j, raw := range l.Sources {
			u, err := source.Parse(raw)
			if err != nil {
				pos := n.SourcePos(i, j)
				if pos.Field == "" {
					pos.Field = fmt.Sprintf("spec.layers[%d].sources[%d]", i, j)
				}
				errs = append(errs, &spec.Error{Position: pos, Msg: err.Error()})
				continue
			}
			pl.URIs = append(pl.URIs, u)
		}
		pl.Pins = make([]source.Pin, len(pl.URIs))
		plan.Layers = append(plan.Layers, pl)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	step := progress.Start(ctx, "resolve "+sources(plan))
	err := forEach(ctx, plan, opts.parallel(), func(ctx context.Context, li, si int) error {
		pl := &plan.Layers[li]
		var locked *source.Pin
		if s := old.Lookup(string(pl.Role), pl.URIs[si].Raw); s != nil {
			locked = &source.Pin{URI: s.URI, Digest: s.Digest, Resolved: s.Resolved, URL: s.URL}
		}
		p, err := opts.Env.Resolve(ctx, pl.URIs[si], locked)
		if err != nil {
			return err
		}
		pl.Pins[si] = p
		step.Add(0, 1)
		return nil
	})
	step.Done(err)
	if err != nil {
		return nil, err
	}
	for i := range plan.Layers {
		pl := &plan.Layers[i]
		// A layer of one versioned package (a .deb, the bootstrap layer) takes its version
		// unless the spec gives one.
		if pl.Version == "" && len(pl.Pins) == 1 {
			if _, v, ok := strings.Cut(pl.Pins[0].Resolved, "="); ok {
				pl.Version = v
			}
		}
		for _, p := range pl.Pins {
			plan.Lock.Sources = append(plan.Lock.Sources, lock.Source{Role: string(pl.Role), URI: p.URI, Digest: p.Digest, Resolved: p.Resolved, URL: p.URL})
		}
	}
	return plan, nil
}

// sources says how many sources plan has: "1 source", "23 sources".
func sources(plan *Plan) string {
	n := 0
	for _, pl := range plan.Layers {
		n += len(pl.URIs)
	}
	if n == 1 {
		return "1 source"
	}
	return fmt.Sprintf("%d sources", n)
}

// forEach runs fn for every source of the plan with at most n at a time; the first error
// cancels the rest.
func forEach(ctx context.Context, plan *Plan, n int, fn func(ctx context.Context, li, si int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for li := range plan.Layers {
		for si := range plan.Layers[li].URIs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				defer func() { <-sem }()
				if err := fn(ctx, li, si); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					cancel(err)
				}
			}()
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		return errs[0]
	}
	return ctx.Err()
}

// Layers materializes every source of the plan and composes each role's layer.
func Layers(ctx context.Context, plan *Plan, epoch int64, opts Options) ([]Layer, error) {
	tars := make([][]source.Tar, len(plan.Layers))
	for i, pl := range plan.Layers {
		tars[i] = make([]source.Tar, len(pl.URIs))
	}
	step := progress.Start(ctx, "fetch and convert "+sources(plan))
	err := forEach(ctx, plan, opts.parallel(), func(ctx context.Context, li, si int) error {
		pl := plan.Layers[li]
		t, err := opts.Env.Materialize(ctx, pl.URIs[si], pl.Pins[si])
		if err != nil {
			return fmt.Errorf("layer %s: %w", pl.Role, err)
		}
		tars[li][si] = t
		step.Add(t.Size, 1)
		return nil
	})
	step.Done(err)
	if err != nil {
		return nil, err
	}
	out := make([]Layer, len(plan.Layers))
	var wg sync.WaitGroup
	errs := make([]error, len(plan.Layers))
	for i, pl := range plan.Layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := roleLayer(ctx, pl, tars[i], epoch, opts)
			if err != nil {
				errs[i] = fmt.Errorf("layer %s: %w", pl.Role, err)
			}
			out[i] = l
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func roleLayer(ctx context.Context, pl PlannedLayer, tars []source.Tar, epoch int64, opts Options) (Layer, error) {
	ca := opts.Env.Cache
	keyParts := []string{layerVersion, string(pl.Role), fmt.Sprint(epoch)}
	for _, t := range tars {
		keyParts = append(keyParts, string(t.Digest))
	}
	key := strings.Join(keyParts, "\n")
	l := Layer{Role: pl.Role, Version: pl.Version, Sources: tars}

	if d, err := ca.Ref("layer", key); err == nil {
		if f, err := ca.Open(d); err == nil {
			defer f.Close()
			st, err := f.Stat()
			if err == nil && pl.Role == spec.RoleKernel {
				l.KernelRelease, err = kernelRelease(ctx, f, st.Size())
			}
			if err == nil {
				l.Digest, l.Size = d, st.Size()
				return l, nil
			}
		}
	}

	start := time.Now()
	var inputs []compose.Input
	for _, t := range tars {
		f, err := ca.Open(t.Digest)
		if err != nil {
			return Layer{}, err
		}
		defer f.Close()
		inputs = append(inputs, compose.Input{Name: t.URI, Reader: f, Size: t.Size})
	}
	if pl.Role == spec.RoleKernel {
		extra, release, err := moduleIndexes(ctx, inputs)
		if err != nil {
			return Layer{}, err
		}
		inputs = append(inputs, compose.Input{Name: "generated module indexes", Reader: bytes.NewReader(extra), Size: int64(len(extra))})
		l.KernelRelease = release
	}
	w, err := ca.NewWriter(ctx)
	if err != nil {
		return Layer{}, err
	}
	defer func() { _ = w.Abort() }()
	if _, err := compose.Compose(ctx, w, inputs, compose.Options{Mode: compose.Layer, MTime: time.Unix(epoch, 0), Logger: opts.Logger, Step: "compose layer " + string(pl.Role)}); err != nil {
		return Layer{}, err
	}
	d, size, err := w.Commit("", -1)
	if err != nil {
		return Layer{}, err
	}
	if err := ca.SetRef("layer", key, d); err != nil {
		return Layer{}, err
	}
	opts.logger().Info("composed layer", "role", pl.Role, "digest", d, "bytes", size, "duration", time.Since(start).Round(time.Millisecond))
	l.Digest, l.Size = d, size
	return l, nil
}

// moduleIndexes generates depmod's index files for the kernel layer's modules (the package
// postinst would run depmod; we never run maintainer scripts) as a tar.
func moduleIndexes(ctx context.Context, inputs []compose.Input) ([]byte, string, error) {
	var files []kmod.File
	for _, in := range inputs {
		fs, err := kmod.Generate(ctx, io.NewSectionReader(in.Reader, 0, in.Size))
		if err != nil {
			return nil, "", fmt.Errorf("generating module indexes from %s: %w", in.Name, err)
		}
		files = append(files, fs...)
	}
	release := ""
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if r := releaseOf(f.Path); r != "" {
			release = r
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.Path, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(f.Data))}); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if release == "" {
		return nil, "", errors.New("the kernel layer has no modules under lib/modules/RELEASE/")
	}
	return buf.Bytes(), release, nil
}

// releaseOf returns RELEASE for a path under [usr/]lib/modules/RELEASE/.
func releaseOf(p string) string {
	p = strings.TrimPrefix(strings.TrimPrefix(p, "./"), "usr/")
	rest, ok := strings.CutPrefix(p, "lib/modules/")
	if !ok {
		return ""
	}
	rel, _, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	return rel
}

// kernelRelease finds the release of a composed kernel layer from its module indexes.
func kernelRelease(ctx context.Context, r io.ReaderAt, size int64) (string, error) {
	tr := tar.NewReader(io.NewSectionReader(r, 0, size))
	for n := 0; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return "", ctx.Err()
		}
		hdr, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("kernel layer has no lib/modules/RELEASE/modules.dep: %w", err)
		}
		if strings.HasSuffix(hdr.Name, "/modules.dep") {
			if rel := releaseOf(hdr.Name); rel != "" {
				return rel, nil
			}
		}
	}
}

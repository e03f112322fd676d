package builders

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/layers/compose"
	"github.com/imgctl/imgctl/layers/spec"
)

// bakedRoles are the layers whose executables the node verifies at every boot: what runs the
// node's workloads, brings it into the cluster, and what the site added. The base OS is left
// out (thousands of files; it is the distribution's, verified when its packages were fetched),
// and so are the kernel and bootloader layers (their few executable-mode files, EFI stubs and a
// bug-report script, are not run by the booted node).
var bakedRoles = []spec.Role{spec.RoleRuntime, spec.RoleKubelet, spec.RoleBootstrap, spec.RoleExtra}

// finalize is compose's last step: it hashes the baked executables of the merged tree (the
// version that wins, after whiteouts and overrides) and adds /etc/imgctl/image.json.
func (b *Build) finalize(ctx context.Context, files *compose.Files) ([]compose.Generated, error) {
	var bins []compose.File
	err := files.Walk(func(f compose.File) error {
		if f.Mode&0o111 != 0 && f.Input < len(b.layers) && slices.Contains(bakedRoles, b.layers[f.Input].Role) {
			bins = append(bins, f)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sums, err := hashFiles(ctx, bins, b.opts.Parallel)
	if err != nil {
		return nil, err
	}
	b.config.Binaries = sums
	info := imageinfo.Info{
		SchemaVersion:   imageinfo.SchemaVersion,
		Name:            b.config.Name,
		Kubernetes:      b.config.Kubernetes,
		Kernel:          b.config.Kernel,
		Bootstrap:       b.config.Bootstrap,
		Imgctl:          b.config.Imgctl,
		SpecDigest:      string(b.config.SpecDigest),
		SourceDateEpoch: b.config.SourceDateEpoch,
		Binaries:        map[string]string{},
	}
	for _, l := range b.config.Layers {
		info.Layers = append(info.Layers, imageinfo.Layer{Role: l.Role, Version: l.Version, Digest: string(l.Digest)})
	}
	for p, d := range sums {
		info.Binaries[p] = string(d)
	}
	data, err := info.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", imageinfo.Path, err)
	}
	return []compose.Generated{{Path: strings.TrimPrefix(imageinfo.Path, "/"), Mode: 0o644, Data: data}}, nil
}

// hashFiles returns the sha256 of each file by absolute path, hashing up to parallel at once.
func hashFiles(ctx context.Context, files []compose.File, parallel int) (map[string]digest.Digest, error) {
	if parallel <= 0 {
		parallel = runtime.NumCPU()
	}
	out := make(map[string]digest.Digest, len(files))
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		first error
	)
	next := make(chan compose.File)
	for range min(parallel, max(len(files), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := sha256.New()
			for f := range next {
				h.Reset()
				_, err := io.Copy(h, f.Content)
				mu.Lock()
				if err != nil && first == nil {
					first = fmt.Errorf("hashing %s: %w", f.Path, err)
				}
				out["/"+f.Path] = digest.Digest("sha256:" + hex.EncodeToString(h.Sum(nil)))
				mu.Unlock()
			}
		}()
	}
	for _, f := range files {
		if ctx.Err() != nil {
			break
		}
		next <- f
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, first
}

// binaryDigests converts image.json's map back to the manifest's.
func binaryDigests(m map[string]string) map[string]digest.Digest {
	out := make(map[string]digest.Digest, len(m))
	for p, d := range m {
		out[p] = digest.Digest(d)
	}
	return out
}

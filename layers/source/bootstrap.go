package source

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/layers/localfile"
	"github.com/imgctl/imgctl/scripts/bootstrap"
)

// bootstrapTar packs the bootstrap layer (imgctl://bootstrap): the units and files of
// scripts/bootstrap plus the static node agent at /usr/bin/imgctl-node. Like a directory
// source it is keyed by its content and built on every build (it is small).
func (e *Env) bootstrapTar(ctx context.Context, u URI) (Tar, error) {
	if e.NodeAgent == "" {
		return Tar{}, errors.New("the bootstrap layer needs the static imgctl-node binary (--node-agent PATH; make build puts it in bin/)")
	}
	agent, info, err := localfile.Open(e.NodeAgent)
	if err != nil {
		return Tar{}, fmt.Errorf("node agent: %w", err)
	}
	defer agent.Close()
	entries, err := bootstrap.Entries()
	if err != nil {
		return Tar{}, err
	}
	have := map[string]bool{}
	for _, en := range entries {
		have[en.Path] = true
	}
	for dir := path.Dir(bootstrap.AgentPath); dir != "." && !have[dir]; dir = path.Dir(dir) {
		entries = append(entries, bootstrap.Entry{Path: dir, Mode: fs.ModeDir | 0o755})
	}
	entries = append(entries, bootstrap.Entry{Path: bootstrap.AgentPath, Mode: 0o755})
	slices.SortFunc(entries, func(a, b bootstrap.Entry) int { return strings.Compare(a.Path, b.Path) })

	w, err := e.Cache.NewWriter(ctx)
	if err != nil {
		return Tar{}, err
	}
	defer func() { _ = w.Abort() }()
	out := newTarOut(w, "")
	for _, en := range entries {
		hdr := &tar.Header{Name: en.Path, Mode: int64(en.Mode.Perm())}
		var body io.Reader
		switch {
		case en.Mode.IsDir():
			hdr.Typeflag = tar.TypeDir
		case en.Mode&fs.ModeSymlink != 0:
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, en.Target
		case en.Path == bootstrap.AgentPath:
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
			if err := out.add(hdr, agent); err != nil {
				return Tar{}, fmt.Errorf("node agent %s: %w", e.NodeAgent, err)
			}
			continue
		default:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(en.Data))
			body = bytes.NewReader(en.Data)
		}
		if err := out.add(hdr, body); err != nil {
			return Tar{}, err
		}
	}
	if err := out.Close(); err != nil {
		return Tar{}, err
	}
	d, size, err := w.Commit("", -1)
	if err != nil {
		return Tar{}, err
	}
	pin := Pin{URI: u.Raw, Digest: d, Resolved: "imgctl-bootstrap=" + bootstrap.Version}
	return Tar{Pin: pin, Digest: d, Size: size, Entries: out.entries}, nil
}

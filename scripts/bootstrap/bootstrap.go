// Package bootstrap holds the files of the bootstrap layer: the systemd units that bring a node
// into its cluster (modeled on GKE's cluster/gce/gci units), their network and log rotation
// configuration and the site hook directories. The layer adds the static imgctl-node binary,
// which holds the units' logic; layers/source packs both (source URI imgctl://bootstrap).
package bootstrap

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"slices"
)

// Version of the bootstrap layer's contract: units, paths and the imgctl-node commands they
// call. Bump it whenever a file here changes (TestVersionRecordsContent enforces it); it is
// recorded in the image manifest and in /etc/imgctl/image.json.
const Version = "1.3.0"

// AgentPath is where the node agent lives in the image.
const AgentPath = "usr/bin/imgctl-node"

//go:embed all:root
var root embed.FS

// Entry is one file, directory or symlink of the layer; paths are relative ("usr/lib/...").
type Entry struct {
	Path    string
	Mode    fs.FileMode // permission bits; fs.ModeDir or fs.ModeSymlink for those
	Data    []byte      // regular files
	Target  string      // symlinks
	Comment string      // why the entry exists (symlinks and directories declared here)
}

// Declared entries that embed cannot carry: enablement symlinks and empty directories.
var declared = []Entry{
	{Path: "usr/lib/systemd/system/multi-user.target.wants/kubernetes.target", Mode: fs.ModeSymlink | 0o777,
		Target: "../kubernetes.target", Comment: "the bootstrap starts with every boot"},
	{Path: "usr/lib/systemd/system/multi-user.target.wants/systemd-networkd.service", Mode: fs.ModeSymlink | 0o777,
		Target: "../systemd-networkd.service", Comment: "DHCP on the node's NICs (80-imgctl-dhcp.network)"},
	{Path: "usr/lib/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service", Mode: fs.ModeSymlink | 0o777,
		Target: "../systemd-networkd-wait-online.service", Comment: "network-online.target means an address (configuration needs it)"},
	{Path: "etc/systemd/system/systemd-bless-boot.service", Mode: fs.ModeSymlink | 0o777, Target: "/dev/null",
		Comment: "masked: only imgctl-bless.service marks a slot good, after a healthy kubelet; systemd's would at " +
			"boot-complete.target, before it (Debian's base has none today: it ships in systemd-boot, not installed)"},
	{Path: "etc/imgctl/hooks.d/pre-install.d", Mode: fs.ModeDir | 0o755, Comment: "site hooks"},
	{Path: "etc/imgctl/hooks.d/post-install.d", Mode: fs.ModeDir | 0o755, Comment: "site hooks"},
	{Path: "etc/imgctl/hooks.d/pre-configure.d", Mode: fs.ModeDir | 0o755, Comment: "site hooks"},
	{Path: "etc/imgctl/hooks.d/post-configure.d", Mode: fs.ModeDir | 0o755, Comment: "site hooks"},
	{Path: "var/lib/imgctl", Mode: fs.ModeDir | 0o755, Comment: "agent and logrotate state"},
}

// Entries lists the layer's files, directories and symlinks (without the agent binary),
// sorted by path. Parent directories are included.
func Entries() ([]Entry, error) {
	var out []Entry
	err := fs.WalkDir(root, "root", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "root" {
			return err
		}
		rel := p[len("root/"):]
		if d.IsDir() {
			out = append(out, Entry{Path: rel, Mode: fs.ModeDir | 0o755})
			return nil
		}
		data, err := root.ReadFile(p)
		if err != nil {
			return err
		}
		out = append(out, Entry{Path: rel, Mode: 0o644, Data: data})
		return nil
	})
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, e := range out {
		have[e.Path] = true
	}
	for _, e := range declared {
		for dir := parent(e.Path); dir != "" && !have[dir]; dir = parent(dir) {
			out = append(out, Entry{Path: dir, Mode: fs.ModeDir | 0o755})
			have[dir] = true
		}
		if have[e.Path] {
			return nil, fmt.Errorf("bootstrap: %s declared twice", e.Path)
		}
		out = append(out, e)
		have[e.Path] = true
	}
	slices.SortFunc(out, func(a, b Entry) int {
		switch {
		case a.Path < b.Path:
			return -1
		case a.Path > b.Path:
			return 1
		}
		return 0
	})
	return out, nil
}

// ContentDigest hashes every entry (paths, modes, contents, targets): it changes whenever the
// layer's files do, and TestVersionRecordsContent ties it to Version.
func ContentDigest() (string, error) {
	es, err := Entries()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, e := range es {
		fmt.Fprintf(h, "%s\x00%o\x00%s\x00%d\x00", e.Path, uint32(e.Mode), e.Target, len(e.Data))
		h.Write(e.Data)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func parent(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return ""
}

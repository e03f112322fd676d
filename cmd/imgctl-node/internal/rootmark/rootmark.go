// Package rootmark is the note the init leaves under /run for the units after it: the root
// image is mounted through dm-verity (which device, which root hash) and which overlay upper
// directories lie over it. /run is a tmpfs the init creates and moves into the real root, so
// the note lives exactly as long as this boot; kube-node-installation reads it to skip
// re-hashing the binaries verity already verifies.
package rootmark

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Path is where the init writes the marker (a node path).
const Path = "/run/imgctl/verity.json"

// Marker describes a verity-mapped root.
type Marker struct {
	RootHash string `json:"rootHash"` // hex, as on the kernel command line
	Blocks   uint64 `json:"blocks"`   // 4 KiB data blocks verity covers
	Name     string `json:"name"`     // device-mapper name (imgctl-root)
	Major    uint32 `json:"major"`    // the mapped device
	Minor    uint32 `json:"minor"`
	// Lower is where the mapped device is mounted read-only (a node path).
	Lower string `json:"lower"`
	// Uppers are the overlays' writable layers over Lower: what a node path under At reads
	// from Dir first (node paths; Lower/At is the overlay's lower directory).
	Uppers []Upper `json:"uppers"`
}

// Upper is one overlay's writable layer.
type Upper struct {
	At  string `json:"at"`  // the overlay's mount point on the node: "/", "/var"
	Dir string `json:"dir"` // its upperdir
}

// Write writes m to root+Path (temp file + fsync + rename).
func Write(root string, m Marker) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(root, Path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("verity marker: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".verity-*.json")
	if err != nil {
		return fmt.Errorf("verity marker: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		return fmt.Errorf("verity marker %s: %w", p, err)
	}
	return nil
}

// Read reads root+Path; an error matching fs.ErrNotExist means the root is not verity-mapped.
func Read(root string) (Marker, error) {
	p := filepath.Join(root, Path)
	b, err := os.ReadFile(p)
	if err != nil {
		return Marker{}, err
	}
	var m Marker
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Marker{}, fmt.Errorf("verity marker %s: %w", p, err)
	}
	if m.RootHash == "" || m.Lower == "" || !filepath.IsAbs(m.Lower) {
		return Marker{}, fmt.Errorf("verity marker %s: want rootHash and an absolute lower", p)
	}
	return m, nil
}

// CheckMounted confirms that m.Lower (under root) is a mount of the mapped device: its
// st_dev is Major:Minor.
func (m Marker) CheckMounted(root string) error {
	var st unix.Stat_t
	p := filepath.Join(root, m.Lower)
	if err := unix.Stat(p, &st); err != nil {
		return fmt.Errorf("verity marker: root mount %s: %w", m.Lower, err)
	}
	if unix.Major(st.Dev) != m.Major || unix.Minor(st.Dev) != m.Minor {
		return fmt.Errorf("verity marker: %s is on device %d:%d, not the verity device %s (%d:%d)",
			m.Lower, unix.Major(st.Dev), unix.Minor(st.Dev), m.Name, m.Major, m.Minor)
	}
	return nil
}

// FromLower reports whether the node path p reads from the verity-mapped lower layer: no
// upper layer over it holds p or replaces one of its directories with something else. (A
// whiteout or opaque directory hides the lower file instead; the caller still sees p as
// missing on the node, which it checks.) Errors other than "does not exist" count as not
// from the lower.
func (m Marker) FromLower(root, p string) bool {
	p = filepath.Clean("/" + p)
	for _, u := range m.Uppers {
		rel, ok := under(u.At, p)
		if !ok {
			continue
		}
		dir := filepath.Join(root, u.Dir)
		parts := strings.Split(rel, "/")
		for i := range parts {
			fi, err := os.Lstat(filepath.Join(dir, filepath.Join(parts[:i+1]...)))
			if errors.Is(err, fs.ErrNotExist) {
				break // the rest comes from below
			}
			if err != nil || i == len(parts)-1 || !fi.IsDir() {
				return false // the upper has p itself, or replaced a directory on its way
			}
		}
	}
	return true
}

// under returns p relative to the mount point at, when p is below it.
func under(at, p string) (string, bool) {
	at = filepath.Clean("/" + at)
	if at == "/" {
		return strings.TrimPrefix(p, "/"), p != "/"
	}
	rel, ok := strings.CutPrefix(p, at+"/")
	return rel, ok && rel != ""
}

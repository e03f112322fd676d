// Package kmod loads the kernel modules the initrd lists (in images/boot.ModuleListPath).
package kmod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseList reads a module list: one path a line, relative to the root; blank lines and
// lines starting with # are ignored.
func ParseList(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := filepath.Clean(strings.TrimPrefix(line, "/"))
		if p == "." || strings.HasPrefix(p, "..") {
			return nil, fmt.Errorf("module list: bad path %q", line)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("module list: %w", err)
	}
	return out, nil
}

// Result of loading one module.
type Result struct {
	Path    string
	Already bool // EEXIST: built in or loaded before
	Err     error
}

// LoadAll loads each module under root in order and reports each result to report.
// It keeps going after a failure (a missing driver shows up later as a missing device, with
// this error on the console before it) and returns the number of failures.
func LoadAll(ctx context.Context, root string, paths []string, report func(Result)) (failed int) {
	for _, p := range paths {
		if ctx.Err() != nil {
			report(Result{Path: p, Err: ctx.Err()})
			failed++
			continue
		}
		already, err := Load(filepath.Join(root, p))
		report(Result{Path: p, Already: already, Err: err})
		if err != nil {
			failed++
		}
	}
	return failed
}

// Load loads one module file with finit_module. Compressed modules (.ko.xz, .ko.zst, .ko.gz)
// are handed to the kernel to decompress (Linux ≥ 6.4 with CONFIG_MODULE_DECOMPRESS).
// EEXIST is not an error: already reports it.
func Load(path string) (already bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	flags := 0
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(path, ext) {
			flags |= unix.MODULE_INIT_COMPRESSED_FILE
		}
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("load module %s: finit_module: %w", path, err)
	}
	return false, nil
}

package source

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/imgctl/imgctl/layers/localfile"
)

// openLayout opens the OCI image layout at dir after checking that what go-containerregistry
// will read is regular files: index.json, oci-layout and every blob (symlinks followed).
func openLayout(dir string) (layout.Path, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", localfile.TypeError(dir, st.Mode(), "a directory")
	}
	for _, n := range []string{"index.json", "oci-layout"} {
		p := filepath.Join(dir, n)
		if st, err := os.Stat(p); err == nil && !st.Mode().IsRegular() {
			return "", localfile.TypeError(p, st.Mode(), "a regular file")
		}
	}
	blobs := filepath.Join(dir, "blobs")
	algs, err := localfile.ReadDir(blobs)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	for _, a := range algs {
		if a.Type().IsRegular() {
			continue // not a blob directory; nothing reads it
		}
		ents, err := localfile.ReadDir(filepath.Join(blobs, a.Name()))
		if err != nil {
			return "", err
		}
		for _, e := range ents {
			p := filepath.Join(blobs, a.Name(), e.Name())
			st, err := os.Stat(p)
			if err != nil {
				return "", err
			}
			if !st.Mode().IsRegular() {
				return "", localfile.TypeError(p, st.Mode(), "a regular file")
			}
		}
	}
	return layout.FromPath(dir)
}

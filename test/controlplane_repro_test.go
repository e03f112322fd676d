package test

import (
	"debug/buildinfo"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestControlPlaneBinariesCarryNoBuildPlace: the control-plane binaries
// (scripts/build-control-plane-images.sh) record nothing of where or from which commit they were
// built, so the images, and every node image that bakes them, have the same digests on every
// machine: no VCS stamp (the tools modules live in this repository, whose commit changes) and no
// absolute directory (the patched Kubernetes module is a copy in a temporary directory).
func TestControlPlaneBinariesCarryNoBuildPlace(t *testing.T) {
	dir := controlPlaneLayout(t)
	bins, err := filepath.Glob(filepath.Join(dir, "bin", "*"))
	if err != nil || len(bins) != 7 {
		t.Fatalf("%s/bin: want 7 binaries, got %q (%v)", dir, bins, err)
	}
	for _, b := range bins {
		info, err := buildinfo.ReadFile(b)
		if err != nil {
			t.Errorf("%s: %v", b, err)
			continue
		}
		for _, s := range info.Settings {
			if strings.HasPrefix(s.Key, "vcs") {
				t.Errorf("%s: build setting %s=%s (a VCS stamp)", filepath.Base(b), s.Key, s.Value)
			}
		}
		for _, m := range append(info.Deps, &info.Main) {
			for m != nil {
				if filepath.IsAbs(m.Path) || strings.HasPrefix(m.Path, os.TempDir()) {
					t.Errorf("%s: module %s recorded with an absolute directory", filepath.Base(b), m.Path)
				}
				m = m.Replace
			}
		}
	}
}

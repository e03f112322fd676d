package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestBuildFlavorRefused: an unknown --flavor, or --flavor with a spec file, fails before
// anything is fetched or stored, naming the flavors the spec library knows.
func TestBuildFlavorRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--flavor", "gpu"}, `default spec: unknown flavor "gpu" (expected one of cloud, metal)`},
		{[]string{"--k8s", "1.21.13", "--flavor", ""}, `default spec: unknown flavor "" (expected one of cloud, metal)`},
		{[]string{"-f", "node.yaml", "--flavor", "metal"}, "--flavor chooses a variant of the embedded default spec: give it with --k8s, not with -f SPEC"},
	} {
		dir := t.TempDir()
		writeSpec(t, dir, "file:///nonexistent/")
		_, _, err := run(t, dir, append([]string{"build", "--lock", filepath.Join(dir, "imgctl.lock")}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("build %q: error = %v, want %q", tc.args, err, tc.want)
		}
		for _, p := range []string{"store", "cache", "imgctl.lock"} {
			if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
				t.Errorf("build %q wrote %s", tc.args, p)
			}
		}
	}
}

// TestBuildHelpListsFlavors: the flag's help comes from the spec library.
func TestBuildHelpListsFlavors(t *testing.T) {
	out, _, err := run(t, t.TempDir(), "build", "--help")
	if err != nil || !strings.Contains(out, "--flavor string") || !strings.Contains(out, "cloud (VMs and clouds") || !strings.Contains(out, "metal (bare metal") {
		t.Errorf("build --help (%v):\n%s", err, out)
	}
}

// TestInspectShowsFlavor: images inspect shows the manifest's flavor, "-" when it has none.
func TestInspectShowsFlavor(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := storetest.Config("v1", 100)
	cfg.Flavor = "metal"
	metal := storetest.PutImage(t, st, cfg, storetest.DefaultFiles("v1"))
	plain := storetest.PutVersion(t, st, "v2", 200)
	for _, tc := range []struct {
		img  store.Image
		want string
	}{{metal, "\nflavor      metal\n"}, {plain, "\nflavor      -\n"}} {
		img, want := tc.img, tc.want
		out, _, err := run(t, dir, "images", "inspect", img.Digest().String())
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("images inspect %s (%v):\n%s\nwant %q", img.Config.Version, err, out, want)
		}
		out, _, err = run(t, dir, "-o", "json", "images", "inspect", img.Digest().String())
		if hasFlavor := strings.Contains(out, `"flavor": "metal"`); err != nil || hasFlavor != (img.Config.Flavor == "metal") {
			t.Errorf("images inspect -o json %s (%v):\n%s", img.Config.Version, err, out)
		}
	}
}

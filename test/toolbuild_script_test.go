package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestToolBuildCachesAreThrowaway checks scripts/tool-build-env.sh, which the scripts that build
// tools from the Go module proxy source: a tool build compiles and downloads into a build and
// module cache of its own inside its temporary directory (gigabytes for kubernetes and packer,
// never reused: the binaries are what is cached), and the cleanup removes that directory even
// though Go makes module files read-only. A CI run ran out of disk with those caches kept.
func TestToolBuildCachesAreThrowaway(t *testing.T) {
	lib, err := filepath.Abs("../scripts/tool-build-env.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, script := range []string{"build-go-tool.sh", "build-kubernetes.sh", "build-control-plane-images.sh"} {
		src, err := os.ReadFile(filepath.Join("..", "scripts", script))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), `. "$here/scripts/tool-build-env.sh"`) || !strings.Contains(string(src), `tool_build_env "$tmp"`) {
			t.Errorf("scripts/%s does not build with tool_build_env from scripts/tool-build-env.sh", script)
		}
	}

	for _, tc := range []struct {
		name, keep string
		throwaway  bool
	}{
		{"default", "", true},
		{"keep", "keep", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := filepath.Join(t.TempDir(), ".build-x")
			if err := os.Mkdir(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			// A module as Go leaves it in the cache: read-only directories and files.
			script := `set -euo pipefail
. "$1"
tool_build_env "$2"
trap 'tool_build_cleanup "$2"' EXIT
echo "GOCACHE=${GOCACHE:-}"
echo "GOMODCACHE=${GOMODCACHE:-}"
echo "GOFLAGS=${GOFLAGS:-}"
if [ -n "${GOMODCACHE:-}" ]; then
  mkdir -p "$GOMODCACHE/example.com/m@v1.0.0"
  echo x > "$GOMODCACHE/example.com/m@v1.0.0/go.mod"
  chmod -R a-w "$GOMODCACHE/example.com"
fi
`
			cmd := exec.Command("bash", "-c", script, "bash", lib, tmp)
			cmd.Env = append(os.Environ(), "IMGCTL_TOOLS_GOCACHE="+tc.keep, "GOCACHE=/caller/gocache", "GOMODCACHE=/caller/gomod", "GOFLAGS=-mod=mod")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			env := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					env[k] = v
				}
			}
			if tc.throwaway {
				if !strings.HasPrefix(env["GOCACHE"], tmp+"/") || !strings.HasPrefix(env["GOMODCACHE"], tmp+"/") {
					t.Errorf("caches %q and %q are not inside the build's directory %s", env["GOCACHE"], env["GOMODCACHE"], tmp)
				}
				if env["GOFLAGS"] != "-mod=mod -modcacherw" {
					t.Errorf("GOFLAGS %q, want the caller's plus -modcacherw", env["GOFLAGS"])
				}
			} else if env["GOCACHE"] != "/caller/gocache" || env["GOMODCACHE"] != "/caller/gomod" || env["GOFLAGS"] != "-mod=mod" {
				t.Errorf("IMGCTL_TOOLS_GOCACHE=keep changed the caller's settings: %q", out)
			}
			if _, err := os.Stat(tmp); !os.IsNotExist(err) {
				t.Errorf("the build's directory is still there after the cleanup (%v)", err)
			}
		})
	}
}

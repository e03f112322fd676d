package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgctl/imgctl/layers/tarentry/tartest"
)

// writeRolesSpec writes a spec whose layers are the given role=URI pairs, in order.
func writeRolesSpec(t *testing.T, dir string, roleURIs ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata:\n  name: cli-test\nspec:\n  kubernetes:\n    version: 1.21.13\n  sourceDateEpoch: 1700000000\n  layers:\n")
	for _, ru := range roleURIs {
		role, uri, _ := strings.Cut(ru, "=")
		fmt.Fprintf(&b, "    - role: %s\n      sources:\n        - %q\n", role, uri)
	}
	p := filepath.Join(dir, "roles.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInspectAndBuildRefuseAlike: for each hostile source, `layers inspect` fails and `build`
// fails with the same message (build adds only where it was: the spec line or the role), and
// the message names the source URI and the entry as the source spells it.
func TestInspectAndBuildRefuseAlike(t *testing.T) {
	dir := t.TempDir()
	ctl := func() string {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		body := "Package: p\nVersion: 1\nArchitecture: amd64\n"
		tw.WriteHeader(&tar.Header{Name: "./control", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
		tw.Close()
		return buf.String()
	}()
	data := string(tartest.Tar(t, "./usr/", "./usr/x"))
	for _, tc := range []struct {
		file, frag string
		body       []byte
		want       string // the whole inspect error, URI = the source URI
	}{
		{"wh.tar", "", tartest.Tar(t, "x/", "x/.wh..."),
			`URI: unsafe tar entry "x/.wh...": whiteout of ".." (it must name a file of the directory)`},
		{"chain.tar", "", tartest.Tar(t, "a/", "a/lnk -> ..", "a/lnk/lnk2 -> ..", "a/lnk/lnk2/etc/passwd"),
			`URI: unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`},
		{"chain-abs.tar", "", tartest.Tar(t, "./a/up -> /", "./a/up/b -> ../etc"),
			`URI: unsafe tar entry "./a/up/b" -> "../etc": symlink target escapes the root (its directory "a/up" resolves to "/" through symlinks)`},
		{"loop.tar", "", tartest.Tar(t, "a -> b", "b -> a", "a/x"),
			`URI: entry "a/x": too many levels of symbolic links`},
		{"empty.tar", "", nil,
			`URI: the file is empty (0 bytes), not a valid tar`},
		{"two-data.deb", "", tartest.Ar("debian-binary", "2.0\n", "control.tar", ctl, "data.tar", data, "data.tar", data),
			`URI: deb: two data members, "data.tar" and "data.tar"`},
		{"file", "#path=/x&path=/y", []byte("x"),
			`source "URI": path= given 2 times ("/x", "/y"), expected once`},
		{"file", "#path=/x&colour=red", []byte("x"),
			`source "URI": unknown parameter "colour" (expected sha256, sha256-from, path, mode, prefix)`},
	} {
		t.Run(tc.file+tc.frag, func(t *testing.T) {
			p := filepath.Join(dir, tc.file)
			if err := os.WriteFile(p, tc.body, 0o644); err != nil {
				t.Fatal(err)
			}
			uri := "file://" + p + tc.frag
			want := strings.ReplaceAll(tc.want, "URI", uri)
			_, _, ierr := run(t, dir, "layers", "inspect", uri)
			if ierr == nil || ierr.Error() != want {
				t.Fatalf("layers inspect: err = %v\nwant %s", ierr, want)
			}
			spec := writeSpec(t, dir, uri)
			_, _, berr := run(t, dir, "-q", "build", "-f", spec, "--target", "rootfs", "--lock", filepath.Join(dir, "imgctl.lock"))
			if berr == nil || !strings.HasSuffix(berr.Error(), ": "+want) {
				t.Fatalf("build: err = %v\nwant it to end in the inspect error %s", berr, want)
			}
		})
	}
}

// TestBuildNamesTheSourceAcrossLayers: a symlink in a lower layer can make an entry of an
// upper layer escape. Each source alone passes `layers inspect`; build refuses, naming the
// upper source and its entry, canonical ("./a/lnk/lnk2" is "a/lnk/lnk2"): layers are composed
// from the converted sources, whose names are cleaned.
func TestBuildNamesTheSourceAcrossLayers(t *testing.T) {
	dir := t.TempDir()
	lower, upper := filepath.Join(dir, "lower.tar"), filepath.Join(dir, "upper.tar")
	os.WriteFile(lower, tartest.Tar(t, "a/", "a/lnk -> .."), 0o644)
	os.WriteFile(upper, tartest.Tar(t, "./a/lnk/lnk2 -> .."), 0o644)
	for _, u := range []string{lower, upper} {
		if _, _, err := run(t, dir, "layers", "inspect", "file://"+u); err != nil {
			t.Fatalf("inspect %s: %v", u, err)
		}
	}
	entry := `unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`
	for _, tc := range []struct {
		name string
		spec string
		want string
	}{
		{"one role", writeSpec(t, dir, "file://"+lower, "file://"+upper),
			"layer extra: layer file://" + upper + ": " + entry},
		{"two roles", writeRolesSpec(t, dir, "base=file://"+lower, "extra=file://"+upper),
			"layer extra (file://" + upper + "): " + entry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := run(t, dir, "-q", "build", "-f", tc.spec, "--target", "rootfs", "--lock", filepath.Join(dir, tc.name+".lock"))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("build: err = %v\nwant %s", err, tc.want)
			}
		})
	}
}

// TestBuildRefusesUnsupportedKubernetes: a Kubernetes version the node agent cannot configure
// fails the build before anything is fetched or written, naming the supported range, whether it
// comes from --k8s or from a spec file. (It used to build, and fail only at node configuration.)
func TestBuildRefusesUnsupportedKubernetes(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.NotFound(w, r)
	}))
	defer srv.Close()
	pin := "#sha256=" + strings.Repeat("ab", 32)
	var overrides []string // every role from the loopback server: nothing can reach the internet
	for _, role := range []string{"base", "kernel", "bootloader", "runtime", "kubelet", "bootstrap", "extra"} {
		overrides = append(overrides, "--source", role+"="+srv.URL+"/"+role+".tar"+pin)
	}
	specFile := writeSpec(t, t.TempDir(), srv.URL+"/extra.tar"+pin)
	body, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	body = bytes.Replace(body, []byte("version: 1.21.13"), []byte("version: 1.20.15"), 1)
	if err := os.WriteFile(specFile, body, 0o644); err != nil {
		t.Fatal(err)
	}
	const unsupported = `unsupported Kubernetes version "1.20.15" (supported: 1.21 to 1.36)`
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"k8s flag", append([]string{"--k8s", "1.20.15"}, overrides...), "default spec: " + unsupported},
		{"spec file", append([]string{"-f", specFile}, overrides...), specFile + ":7:5: spec.kubernetes.version: " + unsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			lock, out := filepath.Join(dir, "imgctl.lock"), filepath.Join(dir, "out")
			args := append([]string{"-q", "build", "--lock", lock, "--output", out}, tc.args...)
			_, _, err := run(t, dir, args...)
			if err == nil || err.Error() != tc.want {
				t.Errorf("build: err = %v\nwant %s", err, tc.want)
			}
			if n := hits.Swap(0); n != 0 {
				t.Errorf("build fetched %d URLs before refusing the version", n)
			}
			for _, p := range []string{filepath.Join(dir, "store"), filepath.Join(dir, "cache"), lock, out} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("build wrote %s before refusing the version", p)
				}
			}
		})
	}
}

// TestBuildHelpNamesKubernetesRange: --k8s help says which versions are supported.
func TestBuildHelpNamesKubernetesRange(t *testing.T) {
	out, _, err := run(t, t.TempDir(), "build", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if want := `--k8s string`; !strings.Contains(out, want) || !strings.Contains(out, "embedded default spec, 1.21 to 1.36") {
		t.Errorf("build --help does not give the supported Kubernetes range:\n%s", out)
	}
}

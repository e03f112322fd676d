package deb

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// TestRealDebs downloads real packages with apt-get and reads them.
func TestRealDebs(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: downloads packages")
	}
	testenv.Tools(t, "apt-get")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "apt-get", "download", "containerd", "runc", "linux-image-cloud-amd64", "systemd-boot-efi")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		testenv.Missing(t, "apt-get download failed (no network or apt lists?): %v\n%s", err, out)
	}
	tests := []struct {
		pkg   string
		paths []string // must be present in data.tar
	}{
		{"containerd", []string{"./usr/bin/containerd", "./usr/bin/containerd-shim-runc-v2", "./usr/bin/ctr"}},
		{"runc", []string{"./usr/sbin/runc"}},
		{"linux-image-cloud-amd64", []string{"./usr/share/doc/linux-image-cloud-amd64", "./usr/share/bug/linux-image-cloud-amd64/presubj"}},
		{"systemd-boot-efi", []string{"./usr/lib/systemd/boot/efi/systemd-bootx64.efi"}},
	}
	for _, tc := range tests {
		t.Run(tc.pkg, func(t *testing.T) {
			matches, _ := filepath.Glob(filepath.Join(dir, tc.pkg+"_*.deb"))
			if len(matches) != 1 {
				t.Fatalf("downloaded files for %s: %v", tc.pkg, matches)
			}
			f, err := os.Open(matches[0])
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r, err := Open(f)
			if err != nil {
				t.Fatal(err)
			}
			c := r.Control()
			if c.Get("Package") != tc.pkg || c.Get("Architecture") != "amd64" || c.Get("Version") == "" || c.Get("Maintainer") == "" {
				t.Errorf("control: %q", c)
			}
			if !strings.Contains(filepath.Base(matches[0]), strings.ReplaceAll(c.Get("Version"), ":", "%3a")) {
				t.Errorf("version %q not in file name %s", c.Get("Version"), matches[0])
			}
			if tc.pkg == "linux-image-cloud-amd64" && !strings.Contains(c.Folded("Depends"), "linux-image-6.1.0-") {
				t.Errorf("metapackage Depends = %q", c.Get("Depends"))
			}
			d, err := r.Data()
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			tr := tar.NewReader(d)
			var total int64
			for {
				h, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				seen[h.Name] = true
				n, err := io.Copy(io.Discard, tr)
				if err != nil {
					t.Fatal(err)
				}
				total += n
			}
			for _, p := range tc.paths {
				if !seen[p] {
					t.Errorf("%s missing from data.tar (%d entries)", p, len(seen))
				}
			}
			t.Logf("%s %s: %d entries, %d bytes", c.Get("Package"), c.Get("Version"), len(seen), total)
		})
	}
}

// TestResolveDebian resolves against the real Debian archive.
func TestResolveDebian(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: uses deb.debian.org")
	}
	if _, err := os.Stat(DefaultKeyring); err != nil {
		testenv.Missing(t, "no Debian archive keyring: %v", err)
	}
	conn, err := net.DialTimeout("tcp", "deb.debian.org:443", 5*time.Second)
	if err != nil {
		testenv.Missing(t, "deb.debian.org unreachable: %v", err)
	}
	conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	r := &Repo{
		BaseURL: "https://deb.debian.org/debian",
		Suite:   "bookworm",
		Getter:  httpGetter{&http.Client{Timeout: 3 * time.Minute}},
		Logger:  testLogger(t),
	}
	c, err := r.Resolve(ctx, "containerd", "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Package != "containerd" || !strings.HasPrefix(c.Version, "1.6.20~ds1-1") ||
		!strings.HasPrefix(c.URL, "https://deb.debian.org/debian/pool/main/c/containerd/containerd_") ||
		len(c.SHA256) != 64 || c.Size < 1<<20 {
		t.Errorf("containerd = %+v", c)
	}
	k, err := r.ResolveFollow(ctx, "linux-image-cloud-amd64", "", "linux-image-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Package, "linux-image-6.1.0-") || !strings.HasSuffix(k.Package, "-cloud-amd64") ||
		!strings.HasPrefix(k.Version, "6.1.") || k.Size < 1<<20 {
		t.Errorf("kernel = %+v", k)
	}
	t.Logf("containerd %s %s\nkernel %s %s %s", c.Version, c.URL, k.Package, k.Version, k.URL)

	// The resolved .deb downloads and matches its pinned digest.
	meta, err := r.Resolve(ctx, "linux-image-cloud-amd64", "")
	if err != nil {
		t.Fatal(err)
	}
	body, err := r.Getter.Get(ctx, meta.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	data, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	if sha(data) != meta.SHA256 || int64(len(data)) != meta.Size {
		t.Errorf("%s: sha256 %s size %d, index says %s %d", meta.URL, sha(data), len(data), meta.SHA256, meta.Size)
	}
}

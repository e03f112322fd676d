// Package buildtest is the test kit for builds: a fixture serving sources of every kind over
// loopback (HTTP, an in-process registry, local files), optional fake kernel and bootloader
// layers so the raw and pxe targets can be built in-process, and a fresh cache and store.
package buildtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/rootfs"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/kmod/kmodtest"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// TarOf builds a tar from name -> content ("DIR" for a directory, "->target" for a symlink).
func TarOf(t *testing.T, files map[string]string, order ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range order {
		c := files[n]
		hdr := &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(c))}
		switch {
		case c == "DIR":
			hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeDir, 0, 0o755
		case strings.HasPrefix(c, "->"):
			hdr.Typeflag, hdr.Size, hdr.Linkname = tar.TypeSymlink, 0, c[2:]
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			io.WriteString(tw, c)
		}
	}
	tw.Close()
	return buf.Bytes()
}

func Gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func Sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

type Fixture struct {
	Dir     string
	Srv     *httptest.Server
	OCIRef  string
	Sources map[spec.Role][]string

	hits *hitCounter // requests to Srv by path (shared by copies of the Fixture)
}

// hitCounter counts requests by path; builds fetch in parallel.
type hitCounter struct {
	mu sync.Mutex
	n  map[string]int
}

// Hits is how many requests Srv has had for path.
func (f *Fixture) Hits(path string) int {
	f.hits.mu.Lock()
	defer f.hits.mu.Unlock()
	return f.hits.n[path]
}

// newFixture serves a binary, its checksum file and a tarball over HTTP, pushes a random
// image to an in-process registry, and writes a base tar and a directory on disk.
func NewFixture(t *testing.T) *Fixture {
	t.Helper()
	f := &Fixture{Dir: t.TempDir(), hits: &hitCounter{n: map[string]int{}}}
	binary := bytes.Repeat([]byte("kubelet-binary\n"), 1000)
	cni := Gz(TarOf(t, map[string]string{"bridge": "BRIDGE", "loopback": "LOOP"}, "bridge", "loopback"))
	files := map[string][]byte{
		"/bin/kubelet":        binary,
		"/bin/kubelet.sha256": []byte(Sha(binary) + "  kubelet\n"),
		"/cni.tgz":            cni,
	}
	f.Srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.mu.Lock()
		f.hits.n[r.URL.Path]++
		f.hits.mu.Unlock()
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, r.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(f.Srv.Close)

	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/test/extra:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	dg, _ := img.Digest()
	f.OCIRef = "oci://" + ref.Context().Name() + "@" + dg.String()

	base := TarOf(t, map[string]string{
		"./": "DIR", "./usr/": "DIR", "./usr/bin/": "DIR", "./bin": "->usr/bin", "./etc/": "DIR", "./etc/os-release": "ID=test\n",
	}, "./", "./usr/", "./usr/bin/", "./bin", "./etc/", "./etc/os-release")
	basePath := filepath.Join(f.Dir, "base.tar.gz")
	os.WriteFile(basePath, Gz(base), 0o644)
	extra := filepath.Join(f.Dir, "extra")
	os.MkdirAll(filepath.Join(extra, "etc/imgctl"), 0o755)
	os.WriteFile(filepath.Join(extra, "etc/imgctl/hello"), []byte("hello\n"), 0o644)

	f.Sources = map[spec.Role][]string{
		spec.RoleBase: {"file://" + basePath},
		spec.RoleKubelet: {
			f.Srv.URL + "/bin/kubelet#sha256-from=" + f.Srv.URL + "/bin/kubelet.sha256&path=/usr/bin/kubelet&mode=0755",
			f.Srv.URL + "/cni.tgz#sha256=" + Sha(cni) + "&prefix=/opt/cni/bin",
		},
		spec.RoleExtra: {"file://" + extra + "/", f.OCIRef},
	}
	return f
}

func (f *Fixture) Spec(t *testing.T) *spec.NodeImage {
	t.Helper()
	n, err := spec.Parse("test.yaml", f.SpecYAML("test-node", 0))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// SpecFile writes the fixture's spec (Spec's) into a new file and returns its path, for a
// front end that takes a spec file.
func (f *Fixture) SpecFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(p, f.SpecYAML("test-node", 0), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// SpecYAML is the NodeImage spec of the fixture's sources (Kubernetes 1.21.13), named name,
// with spec.sourceDateEpoch epoch unless it is 0.
func (f *Fixture) SpecYAML(name string, epoch int64) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata:\n  name: %s\nspec:\n  kubernetes:\n    version: 1.21.13\n", name)
	if epoch != 0 {
		fmt.Fprintf(&b, "  sourceDateEpoch: %d\n", epoch)
	}
	b.WriteString("  layers:\n")
	for _, r := range spec.Roles() {
		if len(f.Sources[r]) == 0 {
			continue
		}
		fmt.Fprintf(&b, "    - role: %s\n      version: v-%s\n      sources:\n", r, r)
		for _, s := range f.Sources[r] {
			fmt.Fprintf(&b, "        - %q\n", s)
		}
	}
	return []byte(b.String())
}

type Env struct {
	Opts  builders.Options
	Cache string
}

func NewEnv(t *testing.T, n *spec.NodeImage, dir string) Env {
	t.Helper()
	ctx := context.Background()
	ca, err := cache.Open(filepath.Join(dir, "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch := int64(1700000000)
	return Env{Cache: filepath.Join(dir, "cache"), Opts: builders.Options{
		Spec: n, LockPath: filepath.Join(dir, "imgctl.lock"), SourceDateEpoch: &epoch,
		Env:   &source.Env{Cache: ca, Fetch: &fetch.Client{Attempts: 2}},
		Store: st, ImgctlVersion: "test", Targets: []builders.Target{rootfs.New()},
	}}
}

// KernelRelease is the fake kernel's release in WithBoot's kernel layer.
const KernelRelease = "6.1.0-99-test-amd64"

// BootOptions shape the fake kernel WithBoot adds.
type BootOptions struct {
	// NoNIC leaves out every network driver (a kernel a netbooted node cannot use).
	NoNIC bool
}

// WithBoot adds a kernel layer (a fake kernel image with the modules the initrd needs, as a
// Debian kernel lays them out; the build generates the module indexes) and a bootloader layer (a fake
// systemd-boot), so the raw and pxe targets can be built in-process. It returns the node
// agent to use: any ELF executable will do for the initrd.
func (f *Fixture) WithBoot(t *testing.T, o BootOptions) string {
	t.Helper()
	type mod struct{ exports, needs []string }
	mods := map[string]mod{ // module path -> symbols (kmod derives the dependencies from them)
		"kernel/fs/squashfs/squashfs.ko":            {},
		"kernel/fs/overlayfs/overlay.ko":            {},
		"kernel/drivers/block/loop.ko":              {},
		"kernel/drivers/md/dm-mod.ko":               {exports: []string{"dm_register_target"}},
		"kernel/drivers/md/dm-bufio.ko":             {exports: []string{"dm_bufio_client_create"}},
		"kernel/drivers/md/dm-verity.ko":            {needs: []string{"dm_register_target", "dm_bufio_client_create"}},
		"kernel/drivers/virtio/virtio.ko":           {exports: []string{"register_virtio_driver"}},
		"kernel/drivers/virtio/virtio_ring.ko":      {exports: []string{"virtqueue_add"}, needs: []string{"register_virtio_driver"}},
		"kernel/drivers/block/virtio_blk.ko":        {needs: []string{"virtqueue_add", "register_virtio_driver"}},
		"kernel/drivers/net/ethernet/amazon/ena.ko": {},
	}
	if !o.NoNIC {
		mods["kernel/drivers/net/net_failover.ko"] = mod{exports: []string{"net_failover_create"}}
		mods["kernel/drivers/net/virtio_net.ko"] = mod{needs: []string{"net_failover_create", "virtqueue_add"}}
		mods["kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"] = mod{}
	} else {
		delete(mods, "kernel/drivers/net/ethernet/amazon/ena.ko")
	}
	dir := "./usr/lib/modules/" + KernelRelease + "/"
	files := map[string]string{
		"./": "DIR", "./boot/": "DIR", "./usr/": "DIR", "./usr/lib/": "DIR", "./usr/lib/modules/": "DIR", dir: "DIR",
		"./boot/vmlinuz-" + KernelRelease: "MZ fake kernel image " + strings.Repeat("k", 4096),
		dir + "modules.builtin":           "kernel/drivers/nvme/host/nvme.ko\nkernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/scsi/virtio_scsi.ko\n",
	}
	order := []string{"./", "./boot/", "./boot/vmlinuz-" + KernelRelease, "./usr/", "./usr/lib/", "./usr/lib/modules/", dir, dir + "modules.builtin"}
	paths := make([]string, 0, len(mods))
	for p := range mods {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := files[dir+d+"/"]; !ok {
				files[dir+d+"/"] = "DIR"
			}
		}
		files[dir+p] = string(kmodtest.ModuleWithSymbols([]string{"license=GPL", "name=" + strings.TrimSuffix(path.Base(p), ".ko")}, mods[p].exports, mods[p].needs))
	}
	var rest []string
	for n := range files {
		if !slices.Contains(order, n) {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest) // parents sort before their children
	kernel := filepath.Join(f.Dir, "kernel.tar")
	if err := os.WriteFile(kernel, TarOf(t, files, append(order, rest...)...), 0o644); err != nil {
		t.Fatal(err)
	}
	efi := "./usr/lib/systemd/boot/efi/"
	boot := filepath.Join(f.Dir, "bootloader.tar")
	if err := os.WriteFile(boot, TarOf(t, map[string]string{
		"./": "DIR", "./usr/": "DIR", "./usr/lib/": "DIR", "./usr/lib/systemd/": "DIR", "./usr/lib/systemd/boot/": "DIR", efi: "DIR",
		efi + "systemd-bootx64.efi": "MZ fake systemd-boot",
	}, "./", "./usr/", "./usr/lib/", "./usr/lib/systemd/", "./usr/lib/systemd/boot/", efi, efi+"systemd-bootx64.efi"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.Sources[spec.RoleKernel] = []string{"file://" + kernel}
	f.Sources[spec.RoleBootloader] = []string{"file://" + boot}
	agent, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	return agent
}

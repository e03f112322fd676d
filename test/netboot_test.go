package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/builders/pxe"
	"github.com/imgctl/imgctl/layers/testenv"
)

// The netboot tests boot the pxe target's artifacts the way a bare-metal node does: firmware
// with iPXE fetches start.ipxe from qemu's TFTP, which chains the build's boot.ipxe from a
// loopback HTTP file server (reached through guestfwd and the relay), which loads the kernel
// and initrd; the init brings up the NIC, downloads the root by digest and switches to it.

const (
	// ipxeEFI is Debian's ipxe package's EFI build (all NIC drivers).
	ipxeEFI = "/usr/lib/ipxe/ipxe.efi"
	// virtioROM is the option ROM qemu gives a virtio NIC (from ipxe-qemu): iPXE for BIOS and EFI.
	virtioROM = "/usr/lib/ipxe/qemu/efi-virtio.rom"
	// filesAddr is where the guest reaches the file server: on the guest network (see
	// netbootNetdev), so that slirp forwards it.
	filesAddr = "169.254.0.100"
)

// fileServer serves a directory (the exported pxe artifacts) over HTTP, with faults for one
// file, the root: a flipped byte, or the first response cut off after some bytes (later
// requests, with or without Range, are served correctly). It records every request.
type fileServer struct {
	dir  string
	root string // the name of the file faults apply to

	mu        sync.Mutex
	flip      int64 // >= 0: the root is served with the byte at this offset inverted
	dropAfter int64 // > 0: the first root response ends after this many body bytes
	dropped   bool
	reqs      []fileRequest
}

type fileRequest struct{ method, path, rng string }

func newFileServer(dir string) *fileServer {
	return &fileServer{dir: dir, root: pxe.RootName, flip: -1}
}

func (s *fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	s.mu.Lock()
	s.reqs = append(s.reqs, fileRequest{method: r.Method, path: name, rng: r.Header.Get("Range")})
	flip, drop := s.flip, s.dropAfter > 0 && !s.dropped
	if name == s.root && drop {
		s.dropped = true
	}
	s.mu.Unlock()
	if name != s.root {
		http.FileServer(http.Dir(s.dir)).ServeHTTP(w, r)
		return
	}
	f, err := os.Open(filepath.Join(s.dir, name))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var content io.ReadSeeker = f
	if flip >= 0 {
		content = io.NewSectionReader(flipReader{f, flip}, 0, fi.Size())
	}
	if drop {
		w = &dropWriter{ResponseWriter: w, left: s.dropAfter}
	}
	http.ServeContent(w, r, name, fi.ModTime(), content)
}

// requests returns the requests so far.
func (s *fileServer) requests() []fileRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fileRequest(nil), s.reqs...)
}

// rootRequests returns the Range header of each GET of the root ("" for none).
func (s *fileServer) rootRequests() []string {
	var out []string
	for _, r := range s.requests() {
		if r.path == s.root && r.method == http.MethodGet {
			out = append(out, r.rng)
		}
	}
	return out
}

// flipReader reads r with the byte at offset at inverted.
type flipReader struct {
	r  io.ReaderAt
	at int64
}

func (f flipReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.r.ReadAt(p, off)
	if f.at >= off && f.at < off+int64(n) {
		p[f.at-off] ^= 0xff
	}
	return n, err
}

// dropWriter passes on left bytes of the body, then aborts the response: the server closes
// the connection without finishing the body the headers announced.
type dropWriter struct {
	http.ResponseWriter
	left int64
}

func (d *dropWriter) Write(p []byte) (int, error) {
	if int64(len(p)) < d.left {
		d.left -= int64(len(p))
		return d.ResponseWriter.Write(p)
	}
	n, _ := d.ResponseWriter.Write(p[:d.left])
	d.left -= int64(n)
	d.ResponseWriter.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

// TestNetbootFileServerFaults checks the netboot tests' file server: a flipped byte changes
// exactly that byte, and a dropped first response is short and can be resumed with Range.
func TestNetbootFileServerFaults(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)
	os.WriteFile(filepath.Join(dir, pxe.RootName), data, 0o644)
	os.WriteFile(filepath.Join(dir, pxe.ScriptName), []byte("#!ipxe\n"), 0o644)
	fs := newFileServer(dir)
	srv := httptest.NewServer(fs)
	defer srv.Close()
	get := func(name, rng string) (int, []byte, error) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/"+name, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}

	// Flipped: the same length, exactly one byte differs, at the offset asked for.
	fs.flip = 12345
	_, got, err := get(pxe.RootName, "")
	if err != nil || len(got) != len(data) {
		t.Fatalf("flipped root: %d bytes, %v", len(got), err)
	}
	var diff []int
	for i := range data {
		if got[i] != data[i] {
			diff = append(diff, i)
		}
	}
	if len(diff) != 1 || diff[0] != 12345 {
		t.Errorf("flipped root differs at %v, want [12345]", diff)
	}
	if _, got, _ := get(pxe.RootName, "bytes=12345-12345"); len(got) != 1 || got[0] != data[12345]^0xff {
		t.Errorf("a Range over the flipped byte gave %x, want %x", got, data[12345]^0xff)
	}

	// Dropped: the first response ends after dropAfter bytes with an error; a Range request
	// for the rest completes the file; other files are not affected.
	fs.flip, fs.dropAfter = -1, 300000
	fs.reqs = nil
	_, first, err := get(pxe.RootName, "")
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(first) != 300000 {
		t.Fatalf("dropped response: %d bytes, err %v; want 300000 bytes and an unexpected EOF", len(first), err)
	}
	code, rest, err := get(pxe.RootName, "bytes=300000-")
	if err != nil || code != http.StatusPartialContent || !bytes.Equal(append(first, rest...), data) {
		t.Fatalf("resumed: status %d, %d bytes, %v; want 206 and the rest of the file", code, len(rest), err)
	}
	if _, whole, err := get(pxe.RootName, ""); err != nil || !bytes.Equal(whole, data) {
		t.Errorf("a later full request: %d bytes, %v", len(whole), err)
	}
	if _, script, err := get(pxe.ScriptName, ""); err != nil || string(script) != "#!ipxe\n" {
		t.Errorf("boot.ipxe: %q, %v", script, err)
	}
	if got, want := fs.rootRequests(), []string{"", "bytes=300000-", ""}; !slices.Equal(got, want) {
		t.Errorf("root requests' Range headers = %q, want %q", got, want)
	}
}

// pxeArtifacts is the shared pxe build of the kubelet test image.
type pxeArtifacts struct {
	dir        string // vmlinuz, initrd.img, rootfs.squashfs, boot.ipxe
	pause      sandboxImage
	rootDigest string // sha256:HEX of rootfs.squashfs
	rootSize   int64
	image      string // sha256:HEX of the image in the build's store
	build      string // the directory imgctl ran in: its store and cache (see imgctl)
	work       string // the lock file and the kubelet test layer
}

var (
	pxeOnce   sync.Once
	pxeShared pxeArtifacts
	pxeErr    error
)

// buildPXE builds the embedded default spec as target pxe once per test binary, like the
// raw kubelet boot test: the real kubelet and kubeadm, a test sandbox image and the kubelet
// test layer; the artifacts are exported to a directory that outlives the test that built them.
func buildPXE(t *testing.T) pxeArtifacts {
	t.Helper()
	testenv.Tools(t, "mmdebstrap")
	pxeOnce.Do(func() {
		pxeErr = errors.New("the shared pxe build failed in the test that ran it first")
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
		defer cancel()
		k8s := kubernetesTools(t)
		base, err := os.MkdirTemp(filepath.Dir(imgctlBin), "pxe-")
		if err != nil {
			t.Fatal(err)
		}
		work, dir := filepath.Join(base, "work"), filepath.Join(base, "build")
		os.MkdirAll(work, 0o755)
		os.MkdirAll(dir, 0o755)
		pause := testSandboxImage(t)
		out := filepath.Join(base, "out")
		image := buildPXEImage(ctx, t, dir, work, out, k8s, pause, kubeletTestLayer(t, work))
		d, size := fileDigest(t, filepath.Join(out, pxe.RootName))
		script, err := os.ReadFile(filepath.Join(out, pxe.ScriptName))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(script), "imgctl.root-digest="+d) {
			t.Fatalf("boot.ipxe does not name the exported root's digest %s:\n%s", d, script)
		}
		pxeShared = pxeArtifacts{dir: out, pause: pause, rootDigest: d, rootSize: size, image: image, build: dir, work: work}
		pxeErr = nil
		t.Logf("pxe build: %v wall, root %d MiB", time.Since(start).Round(time.Second), size>>20)
	})
	if pxeErr != nil {
		t.Fatal(pxeErr)
	}
	return pxeShared
}

// buildPXEImage builds the kubelet test image as target pxe in dir (its store and cache) with
// the lock in work, exports the artifacts to out and returns the image's digest. The image's
// extra layer is made of the directories extras.
func buildPXEImage(ctx context.Context, t *testing.T, dir, work, out, k8s string, pause sandboxImage, extras ...string) string {
	t.Helper()
	args := []string{"--k8s", "1.21.13", "--target", pxe.Name,
		"--lock", filepath.Join(work, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://" + filepath.Join(k8s, "kubelet") + "#path=/usr/bin/kubelet&mode=0755",
		"--source", "kubelet=file://" + filepath.Join(k8s, "kubeadm") + "#path=/usr/bin/kubeadm&mode=0755",
		"--source", "kubelet=" + pause.uri}
	for _, e := range extras {
		args = append(args, "--source", "extra=file://"+e+"/")
	}
	return imgctlBuild(ctx, t, dir, args...).Digest
}

func fileDigest(t *testing.T, p string) (string, int64) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n
}

// smallRoot serves the shared build's kernel and initrd with a small root instead of the
// node image: testdata/netrootinit as /sbin/init, an id file and incompressible padding (so
// that a download takes many packets), as squashfs; boot.ipxe is the build's with the small
// root's digest. It returns the directory and the root's id and digest.
func smallRoot(ctx context.Context, t *testing.T, a pxeArtifacts) (dir, id, digest string) {
	t.Helper()
	testenv.Tools(t, "mksquashfs")
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	for _, d := range []string{"sbin", "dev", "proc", "sys", "run", "tmp"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(tree, "sbin", "init"), "./testdata/netrootinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building testdata/netrootinit: %v\n%s", err, out)
	}
	id = fmt.Sprintf("netroot-%d", time.Now().UnixNano())
	os.WriteFile(filepath.Join(tree, "netroot-id"), []byte(id+"\n"), 0o644)
	pad := make([]byte, 12<<20)
	rand.Read(pad)
	os.WriteFile(filepath.Join(tree, "padding"), pad, 0o644)
	dir = filepath.Join(work, "serve")
	os.MkdirAll(dir, 0o755)
	run(t, "mksquashfs", tree, filepath.Join(dir, pxe.RootName), "-comp", "zstd", "-all-root", "-noappend", "-quiet")
	digest, _ = fileDigest(t, filepath.Join(dir, pxe.RootName))
	for _, f := range []string{pxe.KernelName, pxe.InitrdName} {
		copyFile(t, filepath.Join(a.dir, f), filepath.Join(dir, f))
	}
	script, err := os.ReadFile(filepath.Join(a.dir, pxe.ScriptName))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, pxe.ScriptName), bytes.ReplaceAll(script, []byte(a.rootDigest), []byte(digest)), 0o644)
	return dir, id, digest
}

// netbootGuest is a guest's network: qemu's TFTP serves start.ipxe (the DHCP boot file),
// which chains boot.ipxe from the file server (or from upstream, a server already listening
// on loopback, such as imgctl serve); the fake IMDS answers at 169.254.169.254.
type netbootGuest struct {
	files    *fileServer
	upstream string // HOST:PORT on loopback; when set, files is unused
	imds     *fakeIMDS
	tftp     string
}

// netdev returns the -netdev spec: the guest network is 169.254.0.0/16 so that the IMDS
// address is on it (slirp forwards only addresses inside its network); restrict=on keeps
// everything else off. Both servers are reached through the relay.
func (g *netbootGuest) netdev(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	relayTo := func(addr string) string { return fmt.Sprintf("cmd:env %s=%s %s", relayEnv, addr, self) }
	files := g.upstream
	if files == "" {
		srv := httptest.NewServer(g.files)
		t.Cleanup(srv.Close)
		files = srv.Listener.Addr().String()
	}
	g.tftp = t.TempDir()
	start := "#!ipxe\ndhcp\nset imgctl-base http://" + filesAddr + "/\nchain ${imgctl-base}" + pxe.ScriptName + "\n"
	if err := os.WriteFile(filepath.Join(g.tftp, "start.ipxe"), []byte(start), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15," +
		"tftp=" + g.tftp + ",bootfile=start.ipxe," +
		"guestfwd=tcp:" + filesAddr + ":80-" + relayTo(files)
	if g.imds != nil {
		imds := httptest.NewServer(g.imds)
		t.Cleanup(imds.Close)
		spec += ",guestfwd=tcp:169.254.169.254:80-" + relayTo(imds.Listener.Addr().String())
	}
	return spec
}

// netbootMemory is the guest RAM for a root of size bytes: the root lives in RAM, next to
// the 1536 MiB a node needs.
func netbootMemory(size int64) int {
	return 1536 + int((size+(1<<20)-1)>>20)
}

// efiIPXEDisk writes a small FAT image with Debian's ipxe.efi as the removable-media boot
// loader (EFI/BOOT/BOOTX64.EFI): OVMF boots it from the disk, and iPXE then drives the NIC
// itself (the NIC has no option ROM).
func efiIPXEDisk(t *testing.T, dir string) string {
	t.Helper()
	testenv.Tools(t, "mformat", "mmd", "mcopy")
	testenv.Files(t, ipxeEFI)
	img := filepath.Join(dir, "ipxe-esp.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(8 << 20)
	f.Close()
	run(t, "mformat", "-i", img, "-t", "8", "-h", "64", "-s", "32", "::")
	run(t, "mmd", "-i", img, "::EFI", "::EFI/BOOT")
	run(t, "mcopy", "-i", img, ipxeEFI, "::EFI/BOOT/BOOTX64.EFI")
	return img
}

var fetchRootLine = regexp.MustCompile(`imgctl-node step=fetch-root status=\w+[^\r\n]*`)

// bootNetNode boots the node image from the shared pxe build with metadata from the fake IMDS
// and checks it reaches a healthy kubelet having fetched its root over the network.
func bootNetNode(t *testing.T, uefi bool) {
	requireQEMU(t)
	if !uefi {
		testenv.Files(t, virtioROM)
	}
	a := buildPXE(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	name := "node-netboot-bios"
	if uefi {
		name = "node-netboot-uefi"
	}
	g := &netbootGuest{files: newFileServer(a.dir), imds: &fakeIMDS{UserData: nodeConfig(t, name)}}
	work := t.TempDir()
	o := vmOptions{netdev: g.netdev(t), memoryMiB: netbootMemory(a.rootSize), logFile: filepath.Join(work, "boot.log")}
	if uefi {
		o.disk = efiIPXEDisk(t, work)
		o.vars = filepath.Join(work, "vars.fd")
		copyFile(t, ovmfVars, o.vars)
	} else {
		o.bios, o.bootNIC = true, true
	}
	start := time.Now()
	vm := startVM(ctx, t, o)
	err := vm.waitFor(ctx, "IMGCTL-TEST-REPORT")
	log := vm.console.String()
	if err != nil {
		t.Fatalf("netboot: %v\nconsole:\n%s", err, tail(log, 8000))
	}
	select {
	case <-vm.done:
	case <-time.After(2 * time.Minute):
		t.Error("the guest did not power off after the report")
	}
	log = cleanConsole(vm.console.String())
	t.Logf("report after %v wall; steps:\n  %s", time.Since(start).Round(time.Second), strings.Join(stepLines(log), "\n  "))
	report := regexp.MustCompile(`IMGCTL-TEST-REPORT [^\r\n]*`).FindString(log)
	t.Log(report)
	// The fetch-root line carries the download's size and speed under TCG (BENCHMARKS.md).
	t.Logf("fetch-root (%d MiB root): %s", a.rootSize>>20, fetchRootLine.FindString(log))
	for _, want := range []string{"step=link status=ok", "step=dhcp status=ok", "step=fetch-root status=ok",
		"bytes=" + fmt.Sprint(a.rootSize), "digest=" + a.rootDigest, "step=switch-root status=ok"} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	checkKubeletBoot(t, log, report, a.pause, name, imdsSource, g.imds)
	for _, f := range []string{pxe.ScriptName, pxe.KernelName, pxe.InitrdName, pxe.RootName} {
		if !servedFile(g.files.requests(), f) {
			t.Errorf("the guest never asked the file server for %s: %v", f, g.files.requests())
		}
	}
}

func servedFile(reqs []fileRequest, name string) bool {
	for _, r := range reqs {
		if r.path == name {
			return true
		}
	}
	return false
}

// TestNetbootBIOSiPXE netboots the default node image with SeaBIOS and the virtio NIC's iPXE
// ROM (qemu's ipxe-qemu) to a healthy kubelet.
func TestNetbootBIOSiPXE(t *testing.T) { bootNetNode(t, false) }

// TestNetbootUEFIiPXE netboots the default node image with OVMF and Debian's ipxe.efi to a
// healthy kubelet; EFI iPXE hands the initrd to the kernel by the initrd= boot.ipxe passes.
func TestNetbootUEFIiPXE(t *testing.T) { bootNetNode(t, true) }

// bootSmallRoot netboots the small root with SeaBIOS + iPXE from g and returns the console
// once the guest has exited (it powers off or reboots: -no-reboot ends qemu either way).
func bootSmallRoot(ctx context.Context, t *testing.T, g *netbootGuest, rootSize int64) (string, error) {
	t.Helper()
	work := t.TempDir()
	vm := startVM(ctx, t, vmOptions{bios: true, bootNIC: true, netdev: g.netdev(t), memoryMiB: netbootMemory(rootSize), logFile: filepath.Join(work, "boot.log")})
	select {
	case <-vm.done:
		return cleanConsole(vm.console.String()), nil
	case <-ctx.Done():
		vm.stop()
		return cleanConsole(vm.console.String()), fmt.Errorf("the guest did not exit: %w", ctx.Err())
	}
}

// TestNetbootRejectsCorruptRoot serves the root with one flipped byte: the init must fail
// fetch-root naming the expected and the actual digest, never switch root, and reboot.
func TestNetbootRejectsCorruptRoot(t *testing.T) {
	requireQEMU(t)
	testenv.Files(t, virtioROM)
	a := buildPXE(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir, _, digest := smallRoot(ctx, t, a)
	g := &netbootGuest{files: newFileServer(dir)}
	fi, err := os.Stat(filepath.Join(dir, pxe.RootName))
	if err != nil {
		t.Fatal(err)
	}
	g.files.flip = fi.Size() / 2
	// The digest of the bytes the guest receives.
	data, _ := os.ReadFile(filepath.Join(dir, pxe.RootName))
	data[g.files.flip] ^= 0xff
	sum := sha256.Sum256(data)
	corrupt := "sha256:" + hex.EncodeToString(sum[:])

	start := time.Now()
	log, err := bootSmallRoot(ctx, t, g, fi.Size())
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, tail(log, 8000))
	}
	t.Logf("guest exited after %v wall; steps:\n  %s", time.Since(start).Round(time.Second), strings.Join(stepLines(log), "\n  "))
	fail := regexp.MustCompile(`imgctl-node step=fetch-root status=fail[^\r\n]*`).FindString(log)
	if fail == "" {
		t.Fatalf("console lacks a failed fetch-root step\nconsole:\n%s", tail(log, 8000))
	}
	t.Log(fail)
	for _, want := range []string{digest, corrupt} {
		if !strings.Contains(fail, want) {
			t.Errorf("the fetch-root failure does not name %s: %s", want, fail)
		}
	}
	for _, never := range []string{"step=fetch-root status=ok", "step=switch-root", "IMGCTL-TEST-NETROOT", "systemd["} {
		if strings.Contains(log, never) {
			t.Errorf("a corrupt root was used: console has %q", never)
		}
	}
	if !strings.Contains(log, "imgctl-node: rebooting") {
		t.Errorf("the init did not reboot after the failure")
	}
	if n := len(g.files.rootRequests()); n == 0 {
		t.Errorf("the guest never asked for the root")
	}
}

// TestNetbootResumesDroppedDownload cuts the first root download off halfway: the init must
// resume it with a Range request, verify it and boot the root.
func TestNetbootResumesDroppedDownload(t *testing.T) {
	requireQEMU(t)
	testenv.Files(t, virtioROM)
	a := buildPXE(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir, id, digest := smallRoot(ctx, t, a)
	g := &netbootGuest{files: newFileServer(dir)}
	fi, err := os.Stat(filepath.Join(dir, pxe.RootName))
	if err != nil {
		t.Fatal(err)
	}
	g.files.dropAfter = fi.Size() / 2

	start := time.Now()
	log, err := bootSmallRoot(ctx, t, g, fi.Size())
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, tail(log, 8000))
	}
	t.Logf("guest exited after %v wall; steps:\n  %s", time.Since(start).Round(time.Second), strings.Join(stepLines(log), "\n  "))
	ok := regexp.MustCompile(`imgctl-node step=fetch-root status=ok[^\r\n]*`).FindString(log)
	t.Log(ok)
	if ok == "" {
		t.Fatalf("console lacks a successful fetch-root step\nconsole:\n%s", tail(log, 8000))
	}
	for _, want := range []string{"attempts=2", "resumed-from=", "bytes=" + fmt.Sprint(fi.Size()), "digest=" + digest} {
		if !strings.Contains(ok, want) {
			t.Errorf("the fetch-root line lacks %q: %s", want, ok)
		}
	}
	// The first attempt ended because the connection was closed, not because it stalled: the
	// guest saw the drop.
	retry := regexp.MustCompile(`root download attempt failed[^\r\n]*`).FindString(log)
	t.Log(retry)
	if !strings.Contains(retry, "unexpected EOF") && !strings.Contains(retry, "connection closed") {
		t.Errorf("the first attempt did not end with the dropped connection: %q", retry)
	}
	if !strings.Contains(log, "IMGCTL-TEST-NETROOT pid=1 id="+id+" root=overlay") {
		t.Errorf("the guest did not boot the served root (want its init's line with id=%s)\nconsole:\n%s", id, tail(log, 4000))
	}
	// The second request continued where the first was cut off, and nothing was fetched again
	// from the start.
	rr := g.files.rootRequests()
	t.Logf("root requests (Range headers): %q", rr)
	if len(rr) != 2 || rr[0] != "" || !strings.HasPrefix(rr[1], "bytes=") || rr[1] == "bytes=0-" {
		t.Errorf("root requests' Range headers = %q, want a full request then one Range from where it was cut off", rr)
	}
}

package targets_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/builders/disk"
	"github.com/imgctl/imgctl/builders/targets"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/layers/progress"
	"github.com/imgctl/imgctl/layers/spec"
)

// stepCounter counts the build steps that started, by name prefix.
type stepCounter struct {
	mu    sync.Mutex
	steps []string
}

func (c *stepCounter) ctx() context.Context {
	return progress.With(context.Background(), progress.New(func(e progress.Event) {
		if e.Kind == progress.Started {
			c.mu.Lock()
			c.steps = append(c.steps, e.Step)
			c.mu.Unlock()
		}
	}))
}

func (c *stepCounter) count(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.steps {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

func bootEnv(t *testing.T, f *buildtest.Fixture, o buildtest.BootOptions, names ...string) buildtest.Env {
	t.Helper()
	agent := f.WithBoot(t, o)
	e := buildtest.NewEnv(t, f.Spec(t), t.TempDir())
	e.Opts.Env.NodeAgent = agent
	ts, err := targets.New(names, targets.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.Opts.Targets = ts
	return e
}

func artifact(t *testing.T, img manifest.Config, arts []manifest.Artifact, name string) manifest.Artifact {
	t.Helper()
	for _, a := range arts {
		if a.Name == name {
			return a
		}
	}
	t.Fatalf("image %s has no artifact %s (has %v)", img.Version, name, arts)
	return manifest.Artifact{}
}

// TestRawAndPxeComposeAndCompressOnce is the first bullet: one build, many targets.
func TestRawAndPxeComposeAndCompressOnce(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "raw,pxe")
	var c stepCounter
	res, err := builders.Run(c.ctx(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.count("compose rootfs"); n != 1 {
		t.Errorf("the rootfs was composed %d times, want once (steps: %q)", n, c.steps)
	}
	if n := c.count("compress squashfs"); n != 1 {
		t.Errorf("the root squashfs was compressed %d times, want once (steps: %q)", n, c.steps)
	}
	if n := c.count("write initrd"); n != 1 {
		t.Errorf("the initrd was written %d times, want once (steps: %q)", n, c.steps)
	}
	arts := manifest.Artifacts(res.Image.Manifest)
	names := map[string]bool{}
	for _, a := range arts {
		if names[a.Name] {
			t.Errorf("artifact %s listed twice", a.Name)
		}
		names[a.Name] = true
	}
	for _, n := range []string{"disk.simg", "vmlinuz", "initrd.img", "rootfs.squashfs", "boot.ipxe"} {
		if !names[n] {
			t.Errorf("raw+pxe image lacks %s: %v", n, arts)
		}
	}
	// Neither target reads the rootfs tar: it is hashed, not written into the store.
	if e.Opts.Store.HasBlob(res.Image.Config.Rootfs.Digest) {
		t.Error("a raw,pxe build stored the rootfs blob, which no target needs")
	}
	// pxe's rootfs.squashfs is byte for byte raw's ROOT-A content.
	sq := artifact(t, res.Image.Config, arts, "rootfs.squashfs")
	d := artifact(t, res.Image.Config, arts, "disk.simg")
	if d.Annotations["dev.imgctl.root.digest"] != string(sq.Digest) {
		t.Errorf("disk root digest %s, pxe root %s", d.Annotations["dev.imgctl.root.digest"], sq.Digest)
	}
	out := t.TempDir()
	e.Opts.OutputDir = out
	if _, err := builders.Run(context.Background(), e.Opts); err != nil {
		t.Fatal(err)
	}
	var parts []disk.Partition
	if err := json.Unmarshal([]byte(d.Annotations["dev.imgctl.disk.partitions"]), &parts); err != nil {
		t.Fatal(err)
	}
	var rootA *disk.Partition
	for i := range parts {
		if parts[i].Name == "ROOT-A" {
			rootA = &parts[i]
		}
	}
	if rootA == nil {
		t.Fatalf("no ROOT-A in %v", parts)
	}
	raw, err := os.Open(filepath.Join(out, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(raw, int64(rootA.Start), sq.Size)); err != nil {
		t.Fatal(err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != string(sq.Digest) {
		t.Errorf("ROOT-A holds %s, rootfs.squashfs is %s", got, sq.Digest)
	}
	p, _ := os.ReadFile(filepath.Join(out, "rootfs.squashfs"))
	if s := sha256.Sum256(p); "sha256:"+hex.EncodeToString(s[:]) != string(sq.Digest) {
		t.Error("exported rootfs.squashfs differs from the stored one")
	}
}

// TestRebuildReusesInitrdAndSquashfs: the same inputs compress nothing again; a kubelet bump
// keeps the initrd (same kernel, agent and modules) and compresses the squashfs again.
func TestRebuildReusesInitrdAndSquashfs(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "pxe")
	first, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	var c stepCounter
	again, err := builders.Run(c.ctx(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Image.Digest() != first.Image.Digest() {
		t.Errorf("rebuild gave %s, first build %s", again.Image.Digest(), first.Image.Digest())
	}
	for _, s := range []string{"compose rootfs", "compress squashfs", "write initrd"} {
		if n := c.count(s); n != 0 {
			t.Errorf("a rebuild of the same inputs ran %q %d times (steps: %q)", s, n, c.steps)
		}
	}

	// A kubelet bump: another extra file changes the rootfs, not the kernel.
	extra := filepath.Join(f.Dir, "bump")
	os.MkdirAll(filepath.Join(extra, "etc"), 0o755)
	os.WriteFile(filepath.Join(extra, "etc/bumped"), []byte("v2\n"), 0o644)
	f.Sources[spec.RoleExtra] = append(f.Sources[spec.RoleExtra], "file://"+extra+"/")
	e2 := e
	e2.Opts.Spec = f.Spec(t)
	var c2 stepCounter
	bumped, err := builders.Run(c2.ctx(), e2.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if c2.count("write initrd") != 0 {
		t.Errorf("a rootfs change wrote the initrd again (steps: %q)", c2.steps)
	}
	if c2.count("compress squashfs") != 1 || c2.count("compose rootfs") != 1 {
		t.Errorf("a rootfs change should compose and compress once (steps: %q)", c2.steps)
	}
	a1 := artifact(t, first.Image.Config, manifest.Artifacts(first.Image.Manifest), "initrd.img")
	a2 := artifact(t, bumped.Image.Config, manifest.Artifacts(bumped.Image.Manifest), "initrd.img")
	if a1.Digest != a2.Digest {
		t.Errorf("initrd changed with the rootfs: %s vs %s", a1.Digest, a2.Digest)
	}
}

func TestPxeArtifactsAndScript(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "pxe")
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	arts := manifest.Artifacts(res.Image.Manifest)
	sq := artifact(t, res.Image.Config, arts, "rootfs.squashfs")
	ird := artifact(t, res.Image.Config, arts, "initrd.img")
	if got := ird.Annotations["dev.imgctl.initrd.drivers"]; got != "nvme,virtio_blk,virtio_scsi,virtio_net,e1000e,ena" {
		t.Errorf("initrd drivers annotation = %q, want the storage and NIC drivers the kernel has", got)
	}
	// The network root is mounted through a loop device: the initrd loads loop.
	rc, err := e.Opts.Store.OpenBlob(context.Background(), ird.Digest)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	cpio, _ := io.ReadAll(zr)
	rc.Close()
	if !bytes.Contains(cpio, []byte("kernel/drivers/block/loop.ko\n")) {
		t.Error("the initrd's module list lacks loop.ko")
	}
	// A dm-verity root is mapped before it is mounted: dm-verity and what it needs (dm-mod,
	// dm-bufio) are loaded, dependencies first.
	mdir := "kernel/drivers/md/"
	mod, bufio, verity := bytes.Index(cpio, []byte(mdir+"dm-mod.ko\n")), bytes.Index(cpio, []byte(mdir+"dm-bufio.ko\n")), bytes.Index(cpio, []byte(mdir+"dm-verity.ko\n"))
	if mod < 0 || bufio < 0 || verity < 0 || verity < mod || verity < bufio {
		t.Errorf("the initrd's module list lacks dm-mod, dm-bufio and dm-verity in dependency order (at %d, %d, %d)", mod, bufio, verity)
	}
	script := artifact(t, res.Image.Config, arts, "boot.ipxe")
	if script.Annotations["dev.imgctl.root.digest"] != string(sq.Digest) || script.Annotations["dev.imgctl.root.size"] == "" {
		t.Errorf("boot.ipxe annotations = %v", script.Annotations)
	}
	rc, err = e.Opts.Store.OpenBlob(context.Background(), script.Digest)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(rc)
	rc.Close()
	for _, want := range []string{"#!ipxe\n", "kernel ${imgctl-base}vmlinuz initrd=initrd.img ", "imgctl.root=${imgctl-base}rootfs.squashfs",
		"imgctl.root-digest=" + string(sq.Digest), "initrd --name initrd.img ${imgctl-base}initrd.img", "\nboot "} {
		if !strings.Contains(string(text), want) {
			t.Errorf("boot.ipxe lacks %q:\n%s", want, text)
		}
	}
}

func TestBadInput(t *testing.T) {
	f := buildtest.NewFixture(t)
	t.Run("unknown target", func(t *testing.T) {
		_, err := targets.New([]string{"raw,floppy"}, targets.Options{})
		if err == nil || !strings.Contains(err.Error(), `unknown target "floppy"`) || !strings.Contains(err.Error(), "raw, pxe, rootfs") {
			t.Errorf("err = %v", err)
		}
	})
	for _, tc := range []struct {
		name   string
		target string
		boot   *buildtest.BootOptions
		agent  string
		sq     builders.SquashfsOptions
		want   []string
	}{
		{"unknown compressor", "raw", &buildtest.BootOptions{}, "", builders.SquashfsOptions{Compression: "brotli"}, []string{`unknown compressor "brotli"`, "zstd", "xz", "gzip"}},
		{"no node agent", "raw", &buildtest.BootOptions{}, "none", builders.SquashfsOptions{}, []string{"imgctl-node", "--node-agent"}},
		{"no kernel", "raw", nil, "/bin/true", builders.SquashfsOptions{}, []string{"no kernel modules", "kernel layer"}},
		{"pxe kernel without NIC drivers", "pxe", &buildtest.BootOptions{NoNIC: true}, "", builders.SquashfsOptions{}, []string{"network drivers", "virtio_net", "ixgbe", "mlx5_core", buildtest.KernelRelease}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := *f
			f.Sources = map[spec.Role][]string{}
			for k, v := range buildtest.NewFixture(t).Sources {
				f.Sources[k] = v
			}
			agent := tc.agent
			if tc.boot != nil {
				a := f.WithBoot(t, *tc.boot)
				if agent == "" {
					agent = a
				}
			}
			if agent == "none" {
				agent = ""
			}
			e := buildtest.NewEnv(t, f.Spec(t), t.TempDir())
			e.Opts.Env.NodeAgent = agent
			ts, err := targets.New([]string{tc.target}, targets.Options{Squashfs: tc.sq})
			if err != nil {
				t.Fatal(err)
			}
			e.Opts.Targets = ts
			_, err = builders.Run(context.Background(), e.Opts)
			if err == nil {
				t.Fatal("build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q: %v", w, err)
				}
			}
			if imgs, _ := e.Opts.Store.List(context.Background()); len(imgs) != 0 {
				t.Error("a failed build stored an image")
			}
			ingest, _ := os.ReadDir(filepath.Join(e.Opts.Store.Dir(), "ingest"))
			if len(ingest) != 0 {
				t.Errorf("a failed build left temp files: %v", ingest)
			}
		})
	}
}

// TestRawThenRootfsComposesOnce: whatever the order of the targets, a build that publishes the
// rootfs tar composes it once, into the store, and compresses the squashfs from it.
func TestRawThenRootfsComposesOnce(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "raw,rootfs")
	var c stepCounter
	res, err := builders.Run(c.ctx(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.count("compose rootfs"); n != 1 {
		t.Errorf("the rootfs was composed %d times, want once (steps: %q)", n, c.steps)
	}
	if !e.Opts.Store.HasBlob(res.Image.Config.Rootfs.Digest) {
		t.Error("the rootfs target's blob is not in the store")
	}
}

// TestKubeletChangeKeepsSquashfsDataPrefix: the kubelet layer's files and image.json are
// stored last in the root squashfs, so a kubelet-only change leaves every data byte of the
// other files where it was (an incremental AMI upload sends only the tail). Both ways of
// compressing the squashfs (composed straight into it, or from the stored rootfs) agree.
func TestKubeletChangeKeepsSquashfsDataPrefix(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "pxe")
	squashfsOf := func(t *testing.T, e buildtest.Env, kubelet []byte) []byte {
		t.Helper()
		// The source URI is in the spec, whose digest is in image.json: one directory per content.
		dir := filepath.Join(f.Dir, "kubelet-"+buildtest.Sha(kubelet)[:12])
		os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755)
		if err := os.WriteFile(filepath.Join(dir, "usr/bin/kubelet"), kubelet, 0o755); err != nil {
			t.Fatal(err)
		}
		f.Sources[spec.RoleKubelet] = []string{"file://" + dir + "/"}
		e.Opts.Spec = f.Spec(t)
		res, err := builders.Run(context.Background(), e.Opts)
		if err != nil {
			t.Fatal(err)
		}
		sq := artifact(t, res.Image.Config, manifest.Artifacts(res.Image.Manifest), "rootfs.squashfs")
		rc, err := e.Opts.Store.OpenBlob(context.Background(), sq.Digest)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	kubelet := func(v byte) []byte {
		b := bytes.Repeat([]byte("kubelet-binary-v?\n"), 30000) // 540 kB: several blocks
		for i := 16; i < len(b); i += 18 {
			b[i] = v
		}
		return b
	}
	v1, v2 := squashfsOf(t, e, kubelet('1')), squashfsOf(t, e, kubelet('2'))
	same := 96 // the superblock holds the table offsets
	for same < len(v1) && same < len(v2) && v1[same] == v2[same] {
		same++
	}
	// The other files are all small: they share fragment blocks, written before the kubelet's
	// blocks and image.json's fragment block (the last one).
	frags := fragments(t, v1)
	if len(frags) < 2 {
		t.Fatalf("fragment blocks %v: want the other files' and image.json's", frags)
	}
	for _, f := range frags[:len(frags)-1] {
		if f[1] > same {
			t.Errorf("a kubelet change moved the data of other files: images differ from byte %d, a fragment block of other files spans %d..%d", same, f[0], f[1])
		}
	}

	// From the stored rootfs (a build that also publishes it): the same squashfs.
	e2 := bootEnv(t, f, buildtest.BootOptions{}, "rootfs,pxe")
	if got := squashfsOf(t, e2, kubelet('1')); !bytes.Equal(got, v1) {
		t.Error("the squashfs compressed from the stored rootfs differs from the one composed straight into it")
	}
}

// fragments returns the start and end offsets of a squashfs image's fragment blocks.
func fragments(t *testing.T, img []byte) [][2]int {
	t.Helper()
	le := binary.LittleEndian
	count := int(le.Uint32(img[16:]))
	table := int(le.Uint64(img[80:]))
	var out [][2]int
	for i := 0; len(out) < count; i++ {
		at := int(le.Uint64(img[table+8*i:]))
		hdr := int(le.Uint16(img[at:]))
		meta := img[at+2 : at+2+hdr&0x7fff]
		if hdr&0x8000 == 0 { // compressed (zstd, the build's default)
			d, err := zstd.NewReader(nil)
			if err != nil {
				t.Fatal(err)
			}
			meta, err = d.DecodeAll(meta, nil)
			d.Close()
			if err != nil {
				t.Fatalf("fragment table: %v", err)
			}
		}
		for j := 0; j+16 <= len(meta) && len(out) < count; j += 16 {
			start := int(le.Uint64(meta[j:]))
			out = append(out, [2]int{start, start + int(le.Uint32(meta[j+8:])&(1<<24-1))})
		}
	}
	return out
}

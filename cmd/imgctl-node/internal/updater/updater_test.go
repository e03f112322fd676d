package updater

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blobs"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/esp"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/metadata"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/images/update"
)

const (
	slotSize  = 4 << 20
	rootAUUID = "11111111-2222-4333-8444-555555555555"
	rootBUUID = "66666666-7777-4888-9999-aaaaaaaaaaaa"
	blocks    = 400
)

// image is a built test image: its blobs and manifest.
type image struct {
	root, kernel, initrd, manifest []byte
	digest                         string
	tree                           *verity.Tree
	version, kubernetes, arch      string
}

func rootData(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, blocks*verity.BlockSize)
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// newImage builds an image whose root is data with its hash area appended.
func newImage(t *testing.T, data []byte, version, kubernetes, arch string) *image {
	t.Helper()
	return newImageBoot(t, data, version, kubernetes, arch, []byte("kernel "+version), []byte("initrd "+version))
}

// newImageBoot is newImage with the given kernel and initrd.
func newImageBoot(t *testing.T, data []byte, version, kubernetes, arch string, kernel, initrd []byte) *image {
	t.Helper()
	tree, err := verity.Build(context.Background(), bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	im := &image{root: append(append([]byte(nil), data...), tree.HashArea()...), tree: tree,
		kernel: kernel, initrd: initrd, version: version, kubernetes: kubernetes, arch: arch}
	layer := func(title string, b []byte, ann map[string]string) map[string]any {
		a := map[string]string{update.AnnotationTitle: title}
		for k, v := range ann {
			a[k] = v
		}
		return map[string]any{"mediaType": "application/octet-stream", "digest": digestOf(b), "size": len(b), "annotations": a}
	}
	m := map[string]any{
		"schemaVersion": 2, "mediaType": update.OCIManifestMediaType, "artifactType": update.ArtifactType,
		"config": map[string]any{"mediaType": "application/vnd.imgctl.image.config.v1+json", "digest": digestOf(nil), "size": 0},
		"layers": []any{
			layer(update.KernelArtifact, im.kernel, nil),
			layer(update.InitrdArtifact, im.initrd, nil),
			layer(update.RootArtifact, im.root, map[string]string{
				update.AnnotationKernelCmdline:  "console=ttyS0,115200n8 quiet",
				update.AnnotationVerityRootHash: tree.RootHashHex(),
				update.AnnotationVerityOffset:   "1638400",
			}),
		},
		"annotations": map[string]string{
			update.AnnotationVersion: version, update.AnnotationKubernetesVersion: kubernetes, update.AnnotationArchitecture: arch,
		},
	}
	if im.manifest, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	im.digest = digestOf(im.manifest)
	return im
}

// node is a disk node in a directory: its slots (files), ESP (a directory), state and config,
// and an update server.
type node struct {
	t                  *testing.T
	dir, espDir        string
	rootA, rootB       string
	v1                 *image
	cmdline            string
	srv                *httptest.Server
	mu                 sync.Mutex
	blobs              map[string][]byte
	pointer            []byte
	requests           []string
	rebooted           int
	now                time.Time
	out                bytes.Buffer
	corrupt            string // a blob digest served with a flipped byte (at corruptAt)
	corruptAt          int
	serverDown         bool
	runningKubernetes  string
	locate             func(cmdline.Config) (Disk, error)
	update             nodeconfig.Update
	noConfig, noVerity bool
	report             *report.Sender
}

func newNode(t *testing.T) *node {
	n := &node{t: t, dir: t.TempDir(), blobs: map[string][]byte{}, now: time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC), runningKubernetes: "1.21.13"}
	n.espDir = filepath.Join(n.dir, "esp")
	n.v1 = newImage(t, rootData(1), "v1", "1.21.13", "amd64")
	n.rootA = n.file("root-a", n.v1.root)
	n.rootB = n.file("root-b", nil)
	n.cmdline = strings.Join(boot.SlotCmdline([]string{"console=ttyS0,115200n8", "quiet"}, boot.SlotParams{
		Root: boot.PartUUIDDevice(rootAUUID), State: boot.PartLabelDevice(boot.LabelState), RootDigest: digestOf(n.v1.root),
		VerityRootHash: n.v1.tree.RootHashHex(), VerityOffset: int64(blocks * verity.BlockSize),
	}), " ")
	// The ESP of a fresh disk: slot A's files and its blessed entry.
	n.espFile(boot.SlotDir("a")+"/vmlinuz", n.v1.kernel)
	n.espFile(boot.SlotDir("a")+"/initrd.img", n.v1.initrd)
	n.espFile(boot.EntriesDir+"/imgctl-a.conf", boot.Entry{Slot: "a", Version: 1700000000, Cmdline: strings.Fields(n.cmdline)}.Marshal())
	yes := true
	n.update = nodeconfig.Update{Channel: "prod", Interval: "1h0m0s", Enabled: &yes}
	n.srv = httptest.NewServer(http.HandlerFunc(n.serve))
	t.Cleanup(n.srv.Close)
	n.update.Server = n.srv.URL
	return n
}

func (n *node) file(name string, content []byte) string {
	p := filepath.Join(n.dir, name)
	b := bytes.Repeat([]byte{0x5a}, slotSize)
	copy(b, content)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		n.t.Fatal(err)
	}
	return p
}

func (n *node) espFile(rel string, b []byte) {
	p := filepath.Join(n.espDir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) publish(im *image) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, b := range [][]byte{im.root, im.kernel, im.initrd, im.manifest} {
		n.blobs[digestOf(b)] = b
	}
	p, err := update.EncodePointer(update.Pointer{SchemaVersion: 1, MediaType: update.PointerMediaType, Channel: "prod",
		Image: im.digest, Version: im.version, Kubernetes: im.kubernetes, Architecture: im.arch})
	if err != nil {
		n.t.Fatal(err)
	}
	n.pointer = p
}

func (n *node) serve(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	n.requests = append(n.requests, r.URL.Path)
	down, pointer, corrupt, at := n.serverDown, n.pointer, n.corrupt, n.corruptAt
	b, ok := n.blobs[strings.TrimPrefix(r.URL.Path, update.BlobsPathPrefix)]
	n.mu.Unlock()
	switch {
	case down:
		http.Error(w, "down", http.StatusServiceUnavailable)
	case r.URL.Path == update.ChannelPathPrefix+"prod" && pointer != nil:
		w.Header().Set("Content-Type", update.PointerMediaType)
		w.Write(pointer)
	case ok:
		if digestOf(b) == corrupt {
			b = append([]byte(nil), b...)
			b[at] ^= 1
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	default:
		http.NotFound(w, r)
	}
}

func (n *node) run() error {
	n.t.Helper()
	cfg := filepath.Join(n.dir, "update.json")
	if !n.noConfig {
		if err := updatestate.WriteConfig(cfg, n.update); err != nil {
			n.t.Fatal(err)
		}
	}
	info := filepath.Join(n.dir, "image.json")
	data, err := (&imageinfo.Info{SchemaVersion: imageinfo.SchemaVersion, Name: "node", Kubernetes: n.runningKubernetes}).Marshal()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(info, data, 0o644); err != nil {
		n.t.Fatal(err)
	}
	locate := n.locate
	if locate == nil {
		locate = func(c cmdline.Config) (Disk, error) {
			if c.Root.String() != boot.PartUUIDDevice(rootAUUID) {
				n.t.Errorf("Locate got root %s", c.Root)
			}
			return Disk{Slot: "a", Root: n.rootA, Other: n.rootB, OtherUUID: rootBUUID, ESP: "/dev/test-esp"}, nil
		}
	}
	line := n.cmdline
	if n.noVerity {
		line = strings.Join(slices.DeleteFunc(strings.Fields(line), func(f string) bool { return strings.HasPrefix(f, "imgctl.verity") }), " ")
	}
	n.out.Reset()
	return Run(context.Background(), Options{
		ConfigPath: cfg, StatePath: filepath.Join(n.dir, "state.json"), ImageInfo: info, LockPath: filepath.Join(n.dir, "lock"),
		Cmdline: line, Arch: "amd64", Locate: locate,
		MountESP: func(ctx context.Context, dev string) (*esp.ESP, error) { return esp.New(n.espDir), nil },
		Reboot:   func(ctx context.Context) error { n.rebooted++; return nil },
		Now:      func() time.Time { return n.now },
		Client:   blobs.Client{Attempts: 2, Backoff: time.Millisecond, MaxBackoff: time.Millisecond},
		Steps:    steplog.New(&n.out), RangeBlocks: 32, Report: n.report,
	})
}

// lines are the step lines of the last run, "STEP STATUS" with the rest after a space.
func (n *node) has(t *testing.T, parts ...string) {
	t.Helper()
	for _, l := range strings.Split(n.out.String(), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return
		}
	}
	t.Errorf("no step line with %q in:\n%s", parts, n.out.String())
}

func (n *node) entries() []string {
	ents, err := os.ReadDir(filepath.Join(n.espDir, boot.EntriesDir))
	if err != nil {
		n.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func (n *node) state() updatestate.State {
	s, err := updatestate.Load(filepath.Join(n.dir, "state.json"), nil)
	if err != nil {
		n.t.Fatal(err)
	}
	return s
}

func (n *node) slotBHolds(b []byte) bool {
	got, err := os.ReadFile(n.rootB)
	if err != nil {
		n.t.Fatal(err)
	}
	return bytes.Equal(got[:len(b)], b)
}

// v2 is v1 with 20 blocks changed (a kubelet bump).
func v2(t *testing.T) *image {
	d := rootData(1)
	copy(d[100*verity.BlockSize:120*verity.BlockSize], rootData(2))
	return newImage(t, d, "v2", "1.21.14", "amd64")
}

func TestUpdateInstalls(t *testing.T) {
	n := newNode(t)
	im := v2(t)
	n.publish(im)
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	if !n.slotBHolds(im.root) {
		t.Fatal("slot B does not hold v2's root")
	}
	area := int64(len(im.root)) - blocks*verity.BlockSize
	n.has(t, "step=update-check status=ok", "image="+im.digest, "version=v2")
	n.has(t, "step=update-write status=progress", "written=", "total=1638400")
	n.has(t, "step=update-install status=ok", "slot=b", "fetched="+itoa(20*verity.BlockSize+area), "reused="+itoa(380*verity.BlockSize))
	n.has(t, "step=update-reboot status=ok", "slot=b")
	if n.rebooted != 1 {
		t.Errorf("rebooted %d times, want 1", n.rebooted)
	}
	for rel, want := range map[string][]byte{"imgctl/b/vmlinuz": im.kernel, "imgctl/b/initrd.img": im.initrd} {
		if got, err := os.ReadFile(filepath.Join(n.espDir, rel)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %q, %v", rel, got, err)
		}
	}
	si, ok, err := esp.New(n.espDir).ReadSlotImage("b")
	if err != nil || !ok || si.Image != im.digest || si.Root != digestOf(im.root) || si.Version != "v2" {
		t.Errorf("slot b image.json: %+v %v %v", si, ok, err)
	}
	if got := n.entries(); !slices.Equal(got, []string{"imgctl-a.conf", "imgctl-b+3.conf"}) {
		t.Fatalf("entries %v", got)
	}
	e, err := esp.New(n.espDir).ReadEntry("imgctl-b+3.conf")
	if err != nil {
		t.Fatal(err)
	}
	want := boot.SlotCmdline([]string{"console=ttyS0,115200n8", "quiet"}, boot.SlotParams{
		Root: "PARTUUID=" + rootBUUID, State: "PARTLABEL=STATE", RootDigest: digestOf(im.root),
		VerityRootHash: im.tree.RootHashHex(), VerityOffset: 1638400,
	})
	if e.Slot != "b" || e.Version != 1700000001 || !slices.Equal(e.Cmdline, want) || !strings.Contains(e.Title, "v2") {
		t.Errorf("entry %+v\nwant cmdline %q, version 1700000001", e, want)
	}
	if st := n.state(); st.Staged == nil || st.Staged.Image != im.digest || st.Staged.Slot != "b" || !st.LastCheck.Equal(n.now) {
		t.Errorf("state %+v", st)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestUpdateWindowAndResume(t *testing.T) {
	n := newNode(t)
	n.update.Window = "04:00-05:00"
	im := v2(t)
	n.publish(im)
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	n.has(t, "step=update-install status=ok")
	n.has(t, "step=update-reboot status=skip", `reason="outside the reboot window 04:00-05:00 UTC"`)
	if n.rebooted != 0 {
		t.Fatal("rebooted outside the window")
	}
	// The next check, inside the window: nothing written again, the node reboots.
	n.now = n.now.Add(90 * time.Minute)
	n.mu.Lock()
	n.requests = nil
	n.mu.Unlock()
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	n.has(t, "step=update-install status=skip", `reason="already installed, waiting for the reboot"`)
	n.has(t, "step=update-reboot status=ok")
	if n.rebooted != 1 || len(n.requests) != 2 {
		t.Errorf("rebooted %d, requests %v: want one reboot after the pointer and the manifest only", n.rebooted, n.requests)
	}
}

func TestUpdateResumesAfterCrash(t *testing.T) {
	n := newNode(t)
	n.noVerity = true // the running slot's blocks are hashed instead
	im := v2(t)
	n.publish(im)
	// A run killed while writing: half of slot B holds v2, its entries are gone.
	b, _ := os.ReadFile(n.rootB)
	copy(b, im.root[:200*verity.BlockSize])
	copy(b[100*verity.BlockSize:], bytes.Repeat([]byte{1}, 20*verity.BlockSize)) // the changed blocks not yet
	copy(b[110*verity.BlockSize:], im.root[110*verity.BlockSize:120*verity.BlockSize])
	os.WriteFile(n.rootB, b, 0o600)
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	if !n.slotBHolds(im.root) {
		t.Fatal("slot B does not hold v2's root")
	}
	area := int64(len(im.root)) - blocks*verity.BlockSize
	n.has(t, "step=update-install status=ok", "fetched="+itoa(10*verity.BlockSize+area), "kept="+itoa(190*verity.BlockSize))
}

func TestUpdateDecisions(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(n *node)
		line  []string // parts of one step line
		err   string   // Run's error ("" = nil)
		fetch bool     // slot B written
	}{
		{"no config", func(n *node) { n.noConfig = true }, []string{"step=update-check status=skip", "no update section"}, "", false},
		{"disabled", func(n *node) { no := false; n.update.Enabled = &no }, []string{"step=update-check status=skip", "updates are disabled"}, "", false},
		{"network root", func(n *node) {
			n.cmdline = "imgctl.root=http://10.0.2.2/blobs/" + digestOf([]byte("x"))
		}, []string{"step=update-check status=skip", "not booted from a disk slot"}, "", false},
		{"running boot not blessed", func(n *node) {
			os.Rename(filepath.Join(n.espDir, boot.EntriesDir, "imgctl-a.conf"), filepath.Join(n.espDir, boot.EntriesDir, "imgctl-a+2-1.conf"))
		}, []string{"step=update-check status=skip", "the running boot is not blessed yet (imgctl-a+2-1.conf)", "slot=a"}, "", false},
		{"server down", func(n *node) { n.serverDown = true }, []string{"step=update-check status=fail", "gave up after 2 attempts", "503 Service Unavailable", `next="check again in 1h0m0s"`}, "", false},
		{"no pointer", func(n *node) { n.pointer = nil }, []string{"step=update-check status=fail", "404 Not Found"}, "", false},
		{"running image", func(n *node) {
			n.publish(n.v1)
		}, []string{"step=update-check status=skip", "the channel's image has the running root"}, "", false},
		{"running image by its image.json", func(n *node) {
			im := v2(n.t)
			n.publish(im)
			esp.New(n.espDir).WriteSlotImage(context.Background(), "a", esp.SlotImage{Image: im.digest, Root: digestOf(im.root), Version: "v2"})
		}, []string{"step=update-check status=skip", "the channel's image is running"}, "", false},
		{"failed before", func(n *node) {
			im := v2(n.t)
			n.publish(im)
			updatestate.Save(filepath.Join(n.dir, "state.json"), updatestate.State{Failed: []updatestate.Failed{{Image: im.digest}}})
		}, []string{"step=update-check status=skip", "failed on this node before"}, "", false},
		{"other architecture", func(n *node) {
			n.publish(newImage(n.t, rootData(3), "v2-arm", "1.21.13", "arm64"))
		}, []string{"step=update-check status=fail", "is for architecture arm64, this node is amd64"}, "", false},
		{"minor jump", func(n *node) {
			n.publish(newImage(n.t, rootData(3), "v3", "1.23.1", "amd64"))
		}, []string{"step=update-check status=fail", "Kubernetes 1.21.13 → 1.23.1 skips a minor version"}, "", false},
		{"minor down", func(n *node) {
			n.runningKubernetes = "1.22.4"
			n.publish(newImage(n.t, rootData(3), "v0", "1.21.13", "amd64"))
		}, []string{"step=update-check status=fail", "Kubernetes 1.22.4 → 1.21.13 is a minor version down"}, "", false},
		{"one minor up", func(n *node) {
			n.publish(newImage(n.t, rootData(3), "v2", "1.22.0", "amd64"))
		}, []string{"step=update-install status=ok"}, "", true},
		{"root too large", func(n *node) {
			n.rootB = n.file("small", nil)
			os.Truncate(n.rootB, 1<<20)
			n.publish(v2(n.t))
		}, []string{"step=update-install status=fail", "refused: image v2's root is", "bytes, slot b (", "holds 1048576"}, "", false},
		{"corrupt root download", func(n *node) {
			im := v2(n.t)
			n.publish(im)
			n.corrupt, n.corruptAt = digestOf(im.root), 105*verity.BlockSize+7 // a block that differs from v1's: fetched
		}, []string{"step=update-install status=fail", "does not match its verity hash: the download is corrupt"}, "the download is corrupt", false},
		{"corrupt kernel download", func(n *node) {
			im := v2(n.t)
			n.publish(im)
			n.corrupt = digestOf(im.kernel)
		}, []string{"step=update-install status=fail", "bytes with the manifest's digest"}, "with the manifest's digest", false},
		{"not an A/B disk", func(n *node) {
			n.locate = func(cmdline.Config) (Disk, error) { return Disk{}, errors.New("root is vda2 labelled \"root\"") }
		}, []string{"step=update-check status=fail", `labelled \"root\"`}, "labelled", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t)
			// Slot B holds an older image with a blessed entry: a refusal must leave it.
			n.espFile(boot.EntriesDir+"/imgctl-b.conf", boot.Entry{Slot: "b", Version: 1600000000}.Marshal())
			n.espFile(boot.SlotDir("b")+"/vmlinuz", []byte("old kernel"))
			c.setup(n)
			err := n.run()
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Errorf("Run: %v, want error %q", err, c.err)
			}
			n.has(t, c.line...)
			if n.rebooted != 0 && !c.fetch {
				t.Error("rebooted")
			}
			ents := n.entries()
			switch {
			case c.line[0] == "step=update-install status=ok":
				if !slices.Contains(ents, "imgctl-b+3.conf") {
					t.Errorf("entries %v: want imgctl-b+3.conf", ents)
				}
			case strings.HasPrefix(c.line[0], "step=update-install status=fail") && c.name != "root too large":
				// The install began: slot B's old entry is gone and no new one was written.
				if slices.ContainsFunc(ents, func(e string) bool { return strings.HasPrefix(e, "imgctl-b") }) {
					t.Errorf("entries %v after a failed install: want none for slot b", ents)
				}
				if _, err := os.Stat(filepath.Join(n.espDir, "imgctl/b/vmlinuz")); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("slot b's old kernel after a failed install: %v", err)
				}
			default:
				if !slices.Contains(ents, "imgctl-b.conf") {
					t.Errorf("entries %v: slot b's entry was touched", ents)
				}
				if b, err := os.ReadFile(filepath.Join(n.espDir, "imgctl/b/vmlinuz")); string(b) != "old kernel" {
					t.Errorf("slot b's kernel was touched: %q, %v", b, err)
				}
			}
		})
	}
}

// TestUpdateReports: with a metadata server, a refused or failed update is reported (phase
// update, not ok, naming the image); an install is not (bless reports the outcome once the new
// slot proved itself).
func TestUpdateReports(t *testing.T) {
	var mu sync.Mutex
	var got []nodeapi.Report
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		rep, err := nodeapi.ParseReport(data)
		if err != nil || r.URL.Path != nodeapi.ReportPath {
			t.Errorf("report %s: %v", r.URL.Path, err)
			return
		}
		mu.Lock()
		got = append(got, *rep)
		mu.Unlock()
	}))
	defer srv.Close()
	sender := report.New(&metadata.Imgctl{URL: srv.URL, Credential: "node-secret", Insecure: true}, report.Options{})

	n := newNode(t)
	n.report = sender
	arm := newImage(t, rootData(3), "v2-arm", "1.21.13", "arm64")
	n.publish(arm)
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(got) != 1 || got[0].Phase != nodeapi.PhaseUpdate || got[0].OK || got[0].Image != arm.digest || got[0].Version != "v2-arm" ||
		got[0].Failed != StepCheck || got[0].RootDigest != digestOf(n.v1.root) {
		t.Errorf("reports %+v: want one failed update report for %s", got, arm.digest)
	}
	got = nil
	mu.Unlock()

	n.publish(v2(t))
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	n.has(t, "step=update-install status=ok")
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 0 {
		t.Errorf("an install sent reports %+v", got)
	}
}

// TestUpdateReusesBootFiles: a kernel and initrd the running slot already has on the ESP (same
// digest) are copied from there, not fetched: a kubelet update fetches no boot files.
func TestUpdateReusesBootFiles(t *testing.T) {
	n := newNode(t)
	d := rootData(1)
	copy(d[100*verity.BlockSize:120*verity.BlockSize], rootData(2))
	im := newImageBoot(t, d, "v2", "1.21.14", "amd64", n.v1.kernel, n.v1.initrd)
	n.publish(im)
	if err := n.run(); err != nil {
		t.Fatal(err)
	}
	for _, p := range n.requests {
		if p == "/blobs/"+digestOf(n.v1.kernel) || p == "/blobs/"+digestOf(n.v1.initrd) {
			t.Errorf("fetched %s, which the running slot's ESP directory holds", p)
		}
	}
	for rel, want := range map[string][]byte{"imgctl/b/vmlinuz": n.v1.kernel, "imgctl/b/initrd.img": n.v1.initrd} {
		if got, err := os.ReadFile(filepath.Join(n.espDir, rel)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %q, %v", rel, got, err)
		}
	}
	n.has(t, "step=update-install status=ok", "boot-files-reused=2")

	// A running slot's file that no longer matches its digest (a changed ESP) is not trusted:
	// the next image's kernel is fetched.
	n2 := newNode(t)
	n2.espFile(boot.SlotDir("a")+"/vmlinuz", []byte("kernel v1 but changed"))
	n2.publish(im)
	if err := n2.run(); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(n2.requests, "/blobs/"+digestOf(n.v1.kernel)) {
		t.Errorf("requests %v: the kernel was not fetched though the running slot's copy differs", n2.requests)
	}
	if got, _ := os.ReadFile(filepath.Join(n2.espDir, "imgctl/b/vmlinuz")); !bytes.Equal(got, n.v1.kernel) {
		t.Errorf("imgctl/b/vmlinuz = %q", got)
	}
}

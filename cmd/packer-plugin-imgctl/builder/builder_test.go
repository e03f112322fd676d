package builder

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
)

// build is one test build: a fixture spec with a fake kernel and bootloader (so raw builds
// in-process, no Debian downloads) and its own store, cache, lock and output directory.
type build struct {
	dir, spec, agent string
	fixture          *buildtest.Fixture
}

func newBuild(t *testing.T) *build {
	t.Helper()
	f := buildtest.NewFixture(t)
	agent := f.WithBoot(t, buildtest.BootOptions{})
	return &build{dir: t.TempDir(), spec: f.SpecFile(t), agent: agent, fixture: f}
}

// config is the builder's configuration for b, with extra fields.
func (b *build) config(extra map[string]any) map[string]any {
	c := map[string]any{
		"packer_build_name": "node",
		"spec_file":         b.spec,
		"node_agent":        b.agent,
		"store":             filepath.Join(b.dir, "store"),
		"cache_dir":         filepath.Join(b.dir, "cache"),
		"lock_file":         filepath.Join(b.dir, "imgctl.lock"),
		"output_directory":  filepath.Join(b.dir, "out"),
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func (b *build) out() string { return filepath.Join(b.dir, "out") }

// prepared is a Builder prepared with cfg.
// testImgctlVersion is what main stamps as the imgctl version in the tests' builders.
const testImgctlVersion = "v9.9.9-test"

func prepared(t *testing.T, cfg map[string]any) *Builder {
	t.Helper()
	bl := Builder{ImgctlVersion: testImgctlVersion}
	vars, warns, err := bl.Prepare(cfg)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if len(warns) != 0 {
		t.Errorf("Prepare warnings: %v", warns)
	}
	if want := []string{"ImageDigest", "ImageVersion", "AMIs"}; !slices.Equal(vars, want) {
		t.Errorf("generated variables = %v, want %v", vars, want)
	}
	return &bl
}

// TestRunBuildsRaw: a real small build of the raw target; the artifact names the image by
// its digest, lists the files written into output_directory, and its generated data names
// the image; Destroy removes the files and keeps the image in the store.
func TestRunBuildsRaw(t *testing.T) {
	b := newBuild(t)
	bl := prepared(t, b.config(nil))
	ui := &packer.MockUi{}
	art, err := bl.Run(context.Background(), ui, &packer.MockHook{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Packer's UI gets the steps, the libraries' progress and log lines.
	said := map[string]bool{}
	for _, m := range ui.SayMessages {
		for _, want := range []string{"building the image…", "write disk: done in ", "msg=\"built image\"", "built image "} {
			if strings.HasPrefix(m.Message, want) || strings.Contains(m.Message, want) && strings.HasPrefix(want, "msg=") {
				said[want] = true
			}
		}
	}
	if len(said) != 4 {
		var all []string
		for _, m := range ui.SayMessages {
			all = append(all, m.Message)
		}
		t.Errorf("the UI got only %v of the expected lines:\n%s", said, strings.Join(all, "\n"))
	}
	st, err := store.Open(context.Background(), filepath.Join(b.dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := st.List(context.Background())
	if err != nil || len(imgs) != 1 {
		t.Fatalf("store holds %d images (%v), want 1", len(imgs), err)
	}
	img := imgs[0]
	// The image records the imgctl version the plugin was built from, as imgctl build records
	// its own: the same inputs give the same image digest whichever front end built it.
	if img.Config.Imgctl != testImgctlVersion {
		t.Errorf("image config's imgctl = %q, want %q (the imgctl version, not the plugin's name)", img.Config.Imgctl, testImgctlVersion)
	}
	if art.BuilderId() != "imgctl.image" || art.Id() != img.Digest().String() {
		t.Errorf("artifact %s id %q, want imgctl.image and %s", art.BuilderId(), art.Id(), img.Digest())
	}
	var names []string
	for _, f := range art.Files() {
		if filepath.Dir(f) != b.out() {
			t.Errorf("file %s is not in output_directory %s", f, b.out())
		}
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
		names = append(names, filepath.Base(f))
	}
	slices.Sort(names)
	if want := []string{"disk.raw", "initrd.img", "rootfs.squashfs", "vmlinuz"}; !slices.Equal(names, want) {
		t.Errorf("files %v, want %v", names, want)
	}
	gen, _ := art.State("generated_data").(map[string]any)
	if gen["ImageDigest"] != img.Digest().String() || gen["ImageVersion"] != img.Config.Version || gen["AMIs"] != "" {
		t.Errorf("generated_data = %v", gen)
	}
	if s := art.String(); !strings.Contains(s, img.Config.Version) || !strings.Contains(s, img.Digest().String()) {
		t.Errorf("String() = %q, want the version and the digest", s)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "imgctl.lock")); err != nil {
		t.Errorf("the lock file was not written: %v", err)
	}
	if err := art.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, f := range art.Files() {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("after Destroy, %s: %v", f, err)
		}
	}
	if _, err := st.Resolve(context.Background(), img.Digest().String()); err != nil {
		t.Errorf("Destroy removed the image from the store: %v", err)
	}
}

// TestRunLockedFailsWithChangedSources: with locked, a spec whose sources no longer match the
// lock fails the build naming the changed sources and the field; the lock stays as it was and
// nothing is left in output_directory.
func TestRunLockedFailsWithChangedSources(t *testing.T) {
	b := newBuild(t)
	ctx := context.Background()
	if _, err := prepared(t, b.config(map[string]any{"targets": []string{"rootfs"}, "output_directory": filepath.Join(b.dir, "first")})).
		Run(ctx, &packer.MockUi{}, &packer.MockHook{}); err != nil {
		t.Fatal(err)
	}
	lockPath := filepath.Join(b.dir, "imgctl.lock")
	before, err := os.ReadFile(lockPath)
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "hello"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := "extra=file://" + other + "/"
	art, err := prepared(t, b.config(map[string]any{"locked": true, "sources": []string{src}})).Run(ctx, &packer.MockUi{}, &packer.MockHook{})
	want := "building the image: lock_file " + lockPath + ": the lock file is out of date (set locked = false, or update_lock = true, to update it):\n"
	changed := "\n  extra file://" + other + "/: (none) → sha256:"
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), changed) || art != nil {
		t.Fatalf("Run: %v\nwant %s… with %s…", err, want, changed)
	}
	if !errors.Is(err, builders.ErrLockChanged) || strings.Contains(err.Error(), "--locked") {
		t.Errorf("Run: %v: not ErrLockChanged, or names a flag", err)
	}
	if after, _ := os.ReadFile(lockPath); string(after) != string(before) {
		t.Errorf("the lock changed")
	}
	if _, err := os.Stat(b.out()); !os.IsNotExist(err) {
		t.Errorf("output_directory after the failed build: %v", err)
	}
}

// TestRunSigns: with sign_key the built image carries a signature the public key verifies.
func TestRunSigns(t *testing.T) {
	b := newBuild(t)
	priv, pub, err := sign.GenerateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	art, err := prepared(t, b.config(map[string]any{"targets": []string{"rootfs"}, "sign_key": priv})).Run(context.Background(), &packer.MockUi{}, &packer.MockHook{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), filepath.Join(b.dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Resolve(context.Background(), art.Id())
	if err != nil {
		t.Fatal(err)
	}
	key, err := sign.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&sign.Policy{Keys: []ed25519.PublicKey{key}}).Verify(context.Background(), st, img); err != nil {
		t.Errorf("the built image's signature: %v", err)
	}
}

// TestRunOnErrorAbortKeeps: under packer build -on-error=abort a failed build is left as it is
// for inspection (no cleanup), as Packer's builders do.
func TestRunOnErrorAbortKeeps(t *testing.T) {
	b := newBuild(t)
	priv := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(priv, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, onError := range []string{"cleanup", "abort"} {
		out := filepath.Join(b.dir, "out-"+onError)
		bl := prepared(t, b.config(map[string]any{"targets": []string{"rootfs"}, "output_directory": out, "packer_on_error": onError}))
		bl.config.SignKey = priv // unreadable only once the build ran: a failure after the build
		_, err := bl.Run(context.Background(), &packer.MockUi{}, &packer.MockHook{})
		if err == nil || !strings.Contains(err.Error(), "sign_key") {
			t.Fatalf("%s: Run: %v, want the sign_key failure", onError, err)
		}
		_, serr := os.Stat(filepath.Join(out, "rootfs.tar"))
		if kept := serr == nil; kept != (onError == "abort") {
			t.Errorf("-on-error=%s: output kept %v (%v)", onError, kept, serr)
		}
	}
}

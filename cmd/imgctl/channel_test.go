package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	"github.com/imgctl/imgctl/images/update"
)

// buildImages builds n small images (rootfs target) into dir's store and returns their digests.
func buildImages(t *testing.T, dir string, n int) []string {
	t.Helper()
	var out []string
	for i := range n {
		content := filepath.Join(dir, "content", string(rune('a'+i)))
		os.MkdirAll(filepath.Join(content, "etc"), 0o755)
		os.WriteFile(filepath.Join(content, "etc/motd"), []byte{byte('a' + i), '\n'}, 0o644)
		spec := writeSpec(t, dir, "file://"+content+"/")
		stdout, stderr, err := run(t, dir, "-q", "build", "-f", spec, "--target", "rootfs", "--lock", filepath.Join(dir, "imgctl.lock"))
		if err != nil {
			t.Fatalf("build: %v\n%s", err, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		out = append(out, lines[len(lines)-1])
	}
	return out
}

func TestChannelsPromoteRollbackHistory(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 3)
	must := func(args ...string) string {
		t.Helper()
		out, stderr, err := run(t, dir, args...)
		if err != nil {
			t.Fatalf("imgctl %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	fails := func(want string, args ...string) {
		t.Helper()
		_, _, err := run(t, dir, args...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("imgctl %s: err = %v, want one containing %q", strings.Join(args, " "), err, want)
		}
	}
	must("promote", img[0], "--to", "nightly", "--reason", "first build")
	must("promote", "nightly", "--to", "staging")
	must("promote", img[1][7:19], "--to", "nightly") // a digest prefix
	fails("never in channel staging", "promote", "nightly", "--to", "prod")
	must("promote", "nightly", "--to", "prod", "--force", "--reason", "hotfix")
	must("promote", img[2], "--to", "nightly")
	must("promote", "nightly", "--to", "staging")

	// Bad input.
	fails("unknown channel", "promote", img[0], "--to", "qa")
	fails("not found", "promote", "sha256:"+strings.Repeat("0", 64), "--to", "nightly")
	fails("--to CHANNEL is required", "promote", img[0])
	fails("unknown channel", "rollback", "qa")
	fails("nothing to roll back to", "rollback", "prod")

	// Rollback chain on staging: img2 -> img0 (its previous), then nothing further.
	out := must("-o", "json", "rollback", "staging", "--reason", "bad kernel")
	var e channel.Entry
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatal(err)
	}
	if string(e.To) != img[0] || string(e.From) != img[2] || e.Action != channel.ActionRollback || e.Reason != "bad kernel" {
		t.Errorf("rollback entry = %+v", e)
	}

	var h channel.History
	if err := json.Unmarshal([]byte(must("-o", "json", "channel", "history", "prod")), &h); err != nil {
		t.Fatal(err)
	}
	if len(h.Entries) != 1 || !h.Entries[0].Forced || h.Entries[0].Reason != "hotfix" || h.Entries[0].Who == "" || !strings.HasPrefix(h.Entries[0].Tool, "imgctl ") {
		t.Errorf("prod history = %+v", h)
	}
	list := must("channel", "list")
	for _, want := range []string{"nightly", "staging", "prod", img[2][7:19], img[0][7:19], img[1][7:19]} {
		if !strings.Contains(list, want) {
			t.Errorf("channel list lacks %q:\n%s", want, list)
		}
	}
	if got := must("channel", "order"); strings.TrimSpace(got) != "nightly -> staging -> prod" {
		t.Errorf("order = %q", got)
	}
}

func TestPromoteRefusesCorruptImage(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 1)
	// Corrupt the rootfs blob of the image.
	out, _, err := run(t, dir, "-o", "json", "images", "inspect", img[0])
	if err != nil {
		t.Fatal(err)
	}
	var insp struct {
		Config struct{ Rootfs struct{ Digest string } }
	}
	json.Unmarshal([]byte(out), &insp)
	blob := filepath.Join(dir, "store", "blobs", "sha256", strings.TrimPrefix(insp.Config.Rootfs.Digest, "sha256:"))
	os.Chmod(blob, 0o644)
	if err := os.WriteFile(blob, []byte("corrupt"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, dir, "promote", img[0], "--to", "nightly")
	if err == nil || !strings.Contains(err.Error(), insp.Config.Rootfs.Digest) || !strings.Contains(err.Error(), "store verify") {
		t.Fatalf("promote of a corrupt image: %v", err)
	}
	stdout, _, err := run(t, dir, "store", "verify")
	if err == nil || !strings.Contains(stdout, insp.Config.Rootfs.Digest) {
		t.Errorf("store verify: %v\n%s", err, stdout)
	}
	if out, _, _ := run(t, dir, "-o", "json", "channel", "history", "nightly"); strings.Contains(out, "promote") {
		t.Errorf("history changed by a refused promotion:\n%s", out)
	}
}

func TestSigningAndTrustPolicy(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 2)
	keys := filepath.Join(dir, "keys")
	if _, stderr, err := run(t, dir, "key", "generate", "--dir", keys); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if _, _, err := run(t, dir, "key", "generate", "--dir", keys); err == nil {
		t.Error("key generate overwrote an existing key")
	}
	// Trust the key: promotions of unsigned images are refused from now on.
	policy := `{"publicKeys": ["` + filepath.Join(keys, "imgctl.pub") + `"]}`
	if err := os.WriteFile(filepath.Join(dir, "store", "trust.json"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, dir, "promote", img[0], "--to", "nightly"); err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Fatalf("unsigned promote: %v", err)
	}
	if _, stderr, err := run(t, dir, "sign", img[0], "--key", filepath.Join(keys, "imgctl.key")); err != nil {
		t.Fatalf("sign: %v\n%s", err, stderr)
	}
	if out, _, err := run(t, dir, "verify", img[0]); err != nil || !strings.Contains(out, "signature ok") {
		t.Fatalf("verify: %v %s", err, out)
	}
	if _, stderr, err := run(t, dir, "promote", img[0], "--to", "nightly"); err != nil {
		t.Fatalf("signed promote: %v\n%s", err, stderr)
	}
	// promote --sign-key signs and promotes in one step.
	if _, stderr, err := run(t, dir, "promote", img[1], "--to", "nightly", "--sign-key", filepath.Join(keys, "imgctl.key")); err != nil {
		t.Fatalf("promote --sign-key: %v\n%s", err, stderr)
	}
	// A key the policy does not list is not enough.
	other := filepath.Join(dir, "other")
	run(t, dir, "key", "generate", "--dir", other)
	if _, _, err := run(t, dir, "verify", img[0], "--key", filepath.Join(other, "imgctl.pub")); err == nil {
		t.Error("verify with an untrusted key succeeded")
	}
	if out, _, err := run(t, dir, "store", "verify"); err != nil {
		t.Errorf("store verify after signing: %v\n%s", err, out)
	}
}

func TestGCKeepsWhatChannelsReference(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 4)
	for _, i := range []int{0, 1, 2} {
		if _, stderr, err := run(t, dir, "promote", img[i], "--to", "nightly"); err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
	}
	// keep 1: nightly's head (img2) and one rollback target (img1); img0 and the never promoted
	// img3 go (any age).
	out, stderr, err := run(t, dir, "-o", "json", "gc", "--keep", "1", "--older-than", "0", "--dry-run")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(out, img[0]) || !strings.Contains(out, img[3]) || strings.Count(out, `"DeletedImages"`) != 1 {
		t.Errorf("dry run report:\n%s", out)
	}
	if _, _, err := run(t, dir, "images", "inspect", img[0]); err != nil {
		t.Fatal("dry run deleted an image")
	}
	if _, stderr, err := run(t, dir, "gc", "--keep", "1", "--older-than", "0"); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for i, want := range []bool{false, true, true, false} {
		_, _, err := run(t, dir, "images", "inspect", img[i])
		if (err == nil) != want {
			t.Errorf("after gc, image %d present = %v, want %v", i, err == nil, want)
		}
	}
	if out, _, err := run(t, dir, "store", "verify"); err != nil {
		t.Errorf("store verify after gc: %v\n%s", err, out)
	}
	// The default --older-than (24h) keeps fresh images, promoted or not.
	if out, stderr, err := run(t, dir, "gc"); err != nil || !strings.Contains(out, "deleted 0 images") {
		t.Errorf("gc with the default --older-than: %v\n%s%s", err, out, stderr)
	}
}

func TestPushPullWithChannel(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 1)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	repo := strings.TrimPrefix(reg.URL, "http://") + "/imgctl/node"
	if _, stderr, err := run(t, dir, "promote", img[0], "--to", "nightly"); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	out, stderr, err := run(t, dir, "push", "nightly", repo, "--channel", "nightly")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, img[0]) {
		t.Errorf("push printed %q, want the digest %s", out, img[0])
	}
	if !strings.Contains(stderr, "✓ push ") {
		t.Errorf("push stderr lacks its phase line:\n%s", stderr)
	}
	other := t.TempDir()
	out, stderr, err = run(t, other, "pull", repo+":nightly")
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, img[0]) {
		t.Errorf("pull printed %q, want %s", out, img[0])
	}
	if !strings.Contains(stderr, "✓ pull ") {
		t.Errorf("pull stderr lacks its phase line:\n%s", stderr)
	}
	if out, _, err := run(t, other, "store", "verify"); err != nil {
		t.Errorf("store verify after pull: %v\n%s", err, out)
	}
	// --channel must match the pushed image.
	if _, _, err := run(t, dir, "push", img[0], repo, "--channel", "staging"); err == nil || !strings.Contains(err.Error(), "--channel staging") {
		t.Errorf("push --channel of another image: %v", err)
	}
}

func TestChannelsInARegistry(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 2)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	repo := strings.TrimPrefix(reg.URL, "http://") + "/imgctl/node"
	for _, d := range img {
		if _, stderr, err := run(t, dir, "push", d, repo); err != nil {
			t.Fatalf("push: %v\n%s", err, stderr)
		}
	}
	must := func(args ...string) string {
		t.Helper()
		out, stderr, err := run(t, dir, args...)
		if err != nil {
			t.Fatalf("imgctl %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	must("promote", img[0], "--to", "nightly", "--registry", repo)
	must("promote", "nightly", "--to", "staging", "--registry", repo)
	must("promote", img[1], "--to", "nightly", "--registry", repo, "--reason", "next")
	if _, _, err := run(t, dir, "promote", "nightly", "--to", "prod", "--registry", repo); err == nil || !strings.Contains(err.Error(), "never in channel staging") {
		t.Errorf("skipping a stage in the registry: %v", err)
	}
	out := must("-o", "json", "rollback", "nightly", "--registry", repo)
	var e channel.Entry
	if err := json.Unmarshal([]byte(out), &e); err != nil || string(e.To) != img[0] || e.Seq != 3 {
		t.Errorf("rollback in the registry: %v %+v", err, e)
	}
	list := must("channel", "list", "--registry", repo)
	if !strings.Contains(list, img[0][7:19]) || !strings.Contains(list, "staging") {
		t.Errorf("channel list --registry:\n%s", list)
	}
	var h channel.History
	if err := json.Unmarshal([]byte(must("-o", "json", "channel", "history", "nightly", "--registry", repo)), &h); err != nil || len(h.Entries) != 3 || h.Entries[1].Reason != "next" {
		t.Errorf("registry history = %+v (%v)", h, err)
	}
	// The local store's channels did not move.
	if out := must("-o", "json", "channel", "history", "nightly"); strings.Contains(out, "promote") {
		t.Errorf("local history changed:\n%s", out)
	}
	// An image that is not in the registry cannot be promoted there.
	if _, _, err := run(t, dir, "promote", "sha256:"+strings.Repeat("1", 64), "--to", "nightly", "--registry", repo); err == nil {
		t.Error("promoting a missing image in the registry succeeded")
	}
}

// imgctl channel pointer refuses what GET /v1/channels/CHANNEL refuses, naming the channel,
// and a refusal leaves --output's file as it was.
func TestChannelPointerRefusals(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 1) // rootfs target only: nothing a disk node can install
	if _, stderr, err := run(t, dir, "promote", img[0], "--to", "nightly"); err != nil {
		t.Fatalf("promote: %v\n%s", err, stderr)
	}
	out := filepath.Join(dir, "prod.json")
	if err := os.WriteFile(out, []byte("old pointer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ channel, want string }{
		{"qa", `channel "qa": unknown channel`},
		{"prod", "channel prod: channel is empty (promote an image into it)"},
		{"nightly", "channel nightly points to image 1.21.13-"},
	} {
		stdout, _, err := run(t, dir, "channel", "pointer", c.channel, "--output", out)
		if err == nil || !strings.Contains(err.Error(), c.want) || stdout != "" {
			t.Errorf("channel pointer %s: err = %v, stdout %q; want an error containing %q", c.channel, err, stdout, c.want)
		}
	}
	_, _, err := run(t, dir, "channel", "pointer", "nightly")
	if want := "which nodes cannot install in place: invalid update document: manifest " + img[0] + ": "; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("channel pointer of an image without a root squashfs: %v", err)
	}
	if data, err := os.ReadFile(out); err != nil || string(data) != "old pointer\n" {
		t.Errorf("--output after refusals: %q, %v; want the old content", data, err)
	}
}

// imgctl channel pointer prints the pointer of the channel's image, or replaces --output with it.
func TestChannelPointer(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := storetest.PutUpdatable(t, st, "1.0.0", 1700000000)
	if _, stderr, err := run(t, dir, "promote", img.Digest().String(), "--to", "nightly"); err != nil {
		t.Fatalf("promote: %v\n%s", err, stderr)
	}
	stdout, stderr, err := run(t, dir, "channel", "pointer", "nightly")
	if err != nil {
		t.Fatalf("channel pointer: %v\n%s", err, stderr)
	}
	p, err := update.DecodePointer(strings.NewReader(stdout))
	if err != nil {
		t.Fatalf("%v:\n%s", err, stdout)
	}
	want := update.Pointer{SchemaVersion: 1, MediaType: update.PointerMediaType, Channel: "nightly", Image: img.Digest().String(),
		Version: "1.0.0", Kubernetes: "1.21.13", Architecture: "amd64"}
	if p != want {
		t.Errorf("pointer %+v, want %+v", p, want)
	}
	out := filepath.Join(dir, "www", "v1", "channels", "nightly")
	os.MkdirAll(filepath.Dir(out), 0o755)
	os.WriteFile(out, []byte("old pointer\n"), 0o644)
	if stdout, stderr, err := run(t, dir, "channel", "pointer", "nightly", "--output", out); err != nil || stdout != "" {
		t.Fatalf("channel pointer --output: %v, stdout %q\n%s", err, stdout, stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil || string(data) != stdout {
		t.Errorf("--output wrote %q (%v), stdout gave %q", data, err, stdout)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Errorf("--output left %d files in its directory, want 1", len(ents))
	}
}

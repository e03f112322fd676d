package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
)

const noPolicy = "warning: no trust policy ("

// cli runs imgctl in dir and fails the test on error.
func cli(t *testing.T, dir string, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errOut, err := run(t, dir, args...)
	if err != nil {
		t.Fatalf("imgctl %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out, errOut
}

func keyPair(t *testing.T, dir string) (priv, pub string) {
	t.Helper()
	priv, pub, err := sign.GenerateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

func keyID(t *testing.T, pub string) string {
	t.Helper()
	k, err := sign.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sign.KeyID(k)
}

// TestTrustLocalStore: without a policy every promote and rollback says so in one line;
// imgctl trust add creates the policy (and a whole store if there is none), after which
// unsigned images are refused and nothing is said.
func TestTrustLocalStore(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 2)
	_, errOut := cli(t, dir, "promote", img[0], "--to", "nightly")
	want := "warning: no trust policy (" + filepath.Join(dir, "store", "trust.json") + "): promoting unsigned images is allowed; add one with imgctl trust add KEY\n"
	if errOut != want {
		t.Errorf("promote without a policy printed %q, want %q", errOut, want)
	}
	cli(t, dir, "promote", img[1], "--to", "nightly")
	if _, errOut := cli(t, dir, "rollback", "nightly"); strings.Count(errOut, noPolicy) != 1 || !strings.Contains(errOut, "rolling back to unsigned images is allowed") {
		t.Errorf("rollback without a policy printed %q", errOut)
	}

	keys := filepath.Join(t.TempDir(), "keys")
	priv, pub := keyPair(t, keys)
	if _, _, err := run(t, dir, "trust", "add", priv); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Errorf("trust add of a private key: %v", err)
	}
	out, _ := cli(t, dir, "trust", "add", pub)
	id := keyID(t, pub)
	if !strings.Contains(out, "trusted key "+id) {
		t.Errorf("trust add printed %q", out)
	}
	if out, _ := cli(t, dir, "trust", "add", pub); !strings.Contains(out, "already trusted") {
		t.Errorf("second trust add printed %q", out)
	}
	// The policy does not depend on the key file staying where it was.
	if err := os.RemoveAll(keys); err != nil {
		t.Fatal(err)
	}
	if out, _ := cli(t, dir, "trust", "list"); !strings.Contains(out, id) {
		t.Errorf("trust list = %q, want key %s", out, id)
	}
	_, errOut, err := run(t, dir, "promote", img[1], "--to", "nightly")
	if err == nil || !strings.Contains(err.Error(), "unsigned") || strings.Contains(errOut, noPolicy) {
		t.Errorf("unsigned promote under a policy: %v\n%s", err, errOut)
	}
	_, errOut, err = run(t, dir, "rollback", "nightly", "--to", img[1])
	if err == nil || !strings.Contains(err.Error(), "unsigned") || strings.Contains(errOut, noPolicy) {
		t.Errorf("rollback to an unsigned image under a policy: %v\n%s", err, errOut)
	}
	if out, _ := cli(t, dir, "store", "verify"); !strings.Contains(out, "ok") {
		t.Errorf("store verify: %s", out)
	}
}

// TestTrustAddCreatesStore: trust add before the store exists makes a whole store (that
// verify and build accept), not a directory holding only a policy.
func TestTrustAddCreatesStore(t *testing.T) {
	dir := t.TempDir()
	_, pub := keyPair(t, filepath.Join(dir, "keys"))
	cli(t, dir, "trust", "add", pub)
	if _, err := os.Stat(filepath.Join(dir, "store", "oci-layout")); err != nil {
		t.Fatalf("trust add left no store: %v", err)
	}
	cli(t, dir, "store", "verify")
	var list struct {
		Present bool
		Keys    []struct{ KeyID string }
	}
	out, _ := cli(t, dir, "-o", "json", "trust", "list")
	if err := json.Unmarshal([]byte(out), &list); err != nil || !list.Present || len(list.Keys) != 1 || list.Keys[0].KeyID != keyID(t, pub) {
		t.Errorf("trust list = %s (%v)", out, err)
	}
	img := buildImages(t, dir, 1)
	if _, _, err := run(t, dir, "promote", img[0], "--to", "nightly"); err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Errorf("unsigned promote: %v", err)
	}
}

// TestTrustRegistry: promote --registry and rollback --registry apply the policy kept in the
// registry, never the local store's: a fresh store with no policy cannot promote an unsigned
// image into a registry whose channels have one, and a local policy does not replace it.
func TestTrustRegistry(t *testing.T) {
	signer := t.TempDir()
	img := buildImages(t, signer, 2)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	repo := strings.TrimPrefix(reg.URL, "http://") + "/imgctl/node"
	for _, d := range img {
		cli(t, signer, "push", d, repo)
	}
	runner := t.TempDir() // a new CI runner: empty store, no policy

	// No policy in the registry: allowed, with a warning naming the registry's policy.
	_, errOut := cli(t, runner, "promote", img[0], "--to", "nightly", "--registry", repo)
	want := "warning: no trust policy (" + repo + ":_trust): promoting unsigned images is allowed; add one with imgctl trust add KEY --registry " + repo + "\n"
	if errOut != want {
		t.Errorf("promote --registry without a policy printed %q, want %q", errOut, want)
	}
	if out, _ := cli(t, runner, "trust", "list", "--registry", repo); !strings.Contains(out, "no trust policy") {
		t.Errorf("trust list --registry = %q", out)
	}

	keys := t.TempDir()
	priv, pub := keyPair(t, keys)
	out, _ := cli(t, runner, "trust", "add", pub, "--registry", repo)
	if !strings.Contains(out, "trusted key "+keyID(t, pub)) || !strings.Contains(out, repo+":_trust@sha256:") {
		t.Errorf("trust add --registry printed %q", out)
	}
	if out, _ := cli(t, signer, "trust", "list", "--registry", repo); !strings.Contains(out, keyID(t, pub)) {
		t.Errorf("trust list --registry = %q", out)
	}
	if _, err := os.Stat(filepath.Join(runner, "store", "trust.json")); err == nil {
		t.Error("trust add --registry wrote a local policy")
	}

	// The fresh runner store can no longer promote an unsigned image there.
	_, errOut, err := run(t, runner, "promote", img[1], "--to", "nightly", "--registry", repo)
	if err == nil || !strings.Contains(err.Error(), "trust policy of "+repo) || !strings.Contains(err.Error(), "unsigned") || strings.Contains(errOut, noPolicy) {
		t.Fatalf("unsigned promote --registry from a fresh store: %v\n%s", err, errOut)
	}
	t.Logf("refused: %v", err)

	// Publishing a local channel to the registry (push --channel) applies the registry's
	// policy too.
	cli(t, signer, "promote", img[0], "--to", "nightly")
	cli(t, signer, "promote", img[0], "--to", "staging")
	_, errOut, err = run(t, signer, "push", img[0], repo, "--channel", "staging")
	if err == nil || !strings.Contains(err.Error(), "unsigned") || strings.Contains(errOut, noPolicy) {
		t.Errorf("push --channel of an unsigned image under the registry's policy: %v\n%s", err, errOut)
	}
	if out, _, _ := run(t, signer, "-o", "json", "channel", "history", "staging", "--registry", repo); strings.Contains(out, "promote") {
		t.Errorf("refused push --channel moved the registry's staging:\n%s", out)
	}

	// The signer's local policy trusts another key only: it is not the one applied.
	_, otherPub := keyPair(t, filepath.Join(t.TempDir(), "other"))
	cli(t, signer, "trust", "add", otherPub)
	if _, _, err := run(t, signer, "promote", img[1], "--to", "nightly", "--registry", repo); err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Errorf("unsigned promote --registry: %v", err)
	}
	cli(t, signer, "sign", img[1], "--key", priv)
	// Once the signature is in the registry, the fresh runner can promote the image.
	copySignatures(t, filepath.Join(signer, "store"), img[1], repo)
	if _, errOut := cli(t, runner, "promote", img[1], "--to", "nightly", "--registry", repo); strings.Contains(errOut, noPolicy) {
		t.Errorf("promote under the registry's policy warned: %q", errOut)
	}
	// The signer's local policy (another key) does not apply to the registry's channels.
	if _, errOut := cli(t, signer, "promote", "nightly", "--to", "staging", "--registry", repo); strings.Contains(errOut, noPolicy) {
		t.Errorf("promote under the registry's policy warned: %q", errOut)
	}
	// The local store's policy still applies locally.
	if _, _, err := run(t, signer, "promote", img[1], "--to", "nightly"); err == nil || !strings.Contains(err.Error(), "trusted key") {
		t.Errorf("local promote of an image signed by a key only the registry trusts: %v", err)
	}
	// Rollback --registry applies the registry's policy too: img0 is unsigned.
	if _, _, err := run(t, signer, "rollback", "nightly", "--registry", repo); err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Errorf("rollback --registry to an unsigned image: %v", err)
	}
}

// copySignatures copies the signature manifests (and their blobs) of image d from the store in
// storeDir to repo, unchanged, as push does.
func copySignatures(t *testing.T, storeDir, d, repo string) {
	t.Helper()
	st, err := store.Open(t.Context(), storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Resolve(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	sigs, err := sign.Signatures(t.Context(), st, img)
	if err != nil || len(sigs) == 0 {
		t.Fatalf("signatures of %s: %v, %v", d, sigs, err)
	}
	lp, err := layout.FromPath(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sigs {
		h, err := v1.NewHash(s.Manifest.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		li, err := lp.Image(h)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.NewDigest(repo + "@" + h.String())
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, li); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPullTagMismatchCLI: pull refuses a tag that serves another version unless told.
func TestPullTagMismatchCLI(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 1)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	repo := strings.TrimPrefix(reg.URL, "http://") + "/imgctl/node"
	cli(t, dir, "push", img[0], repo)
	ref, err := name.ParseReference(repo + "@" + img[0])
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(repo + ":9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Tag(tag, desc); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, _, err := run(t, other, "pull", repo+":9.9.9"); err == nil || !strings.Contains(err.Error(), "tag 9.9.9 serves version") || !strings.Contains(err.Error(), "--allow-tag-mismatch") {
		t.Errorf("pull of a tag serving another version: %v", err)
	}
	if out, _ := cli(t, other, "pull", repo+":9.9.9", "--allow-tag-mismatch"); !strings.Contains(out, img[0]) {
		t.Errorf("pull --allow-tag-mismatch printed %q", out)
	}
}

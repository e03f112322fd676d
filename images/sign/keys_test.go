package sign

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys", "release") // created
	privPath, pubPath, err := GenerateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if privPath != filepath.Join(dir, PrivateKeyFile) || pubPath != filepath.Join(dir, PublicKeyFile) {
		t.Errorf("paths = %s, %s", privPath, pubPath)
	}
	for path, want := range map[string]os.FileMode{privPath: 0o600, pubPath: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("key directory: %v, %v", fi.Mode(), err)
	}

	priv, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) {
		t.Error("public key file does not match the private key")
	}
	msg := []byte("payload")
	if !ed25519.Verify(pub, msg, ed25519.Sign(priv, msg)) {
		t.Error("loaded keys do not sign and verify")
	}
	for path, typ := range map[string]string{privPath: "PRIVATE KEY", pubPath: "PUBLIC KEY"} {
		data, _ := os.ReadFile(path)
		if b, _ := pem.Decode(data); b == nil || b.Type != typ {
			t.Errorf("%s: want a %q PEM block, got\n%s", path, typ, data)
		}
	}

	// A second pair in another directory is a different key.
	_, pub2Path, err := GenerateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pub2, err := LoadPublicKey(pub2Path)
	if err != nil || pub2.Equal(pub) {
		t.Errorf("second key = %v, %v", pub2, err)
	}
	// KeyID is the SHA-256 of the DER in the .pub file.
	data, _ := os.ReadFile(pubPath)
	b, _ := pem.Decode(data)
	if sum := sha256.Sum256(b.Bytes); KeyID(pub) != hex.EncodeToString(sum[:]) || KeyID(pub) == KeyID(pub2) {
		t.Errorf("KeyID = %q, want sha256 of the PKIX DER %x", KeyID(pub), sum)
	}
}

func TestGenerateKeyRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath, err := GenerateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	privBefore, _ := os.ReadFile(privPath)
	pubBefore, _ := os.ReadFile(pubPath)
	_, _, err = GenerateKey(dir)
	if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), privPath) {
		t.Fatalf("second GenerateKey = %v, want fs.ErrExist naming %s", err, privPath)
	}
	privAfter, _ := os.ReadFile(privPath)
	pubAfter, _ := os.ReadFile(pubPath)
	if !bytes.Equal(privBefore, privAfter) || !bytes.Equal(pubBefore, pubAfter) {
		t.Error("existing key files were changed")
	}

	// Only the public half present: still refused, and no private key is left behind.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, PublicKeyFile), pubBefore, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := GenerateKey(dir2); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), PublicKeyFile) {
		t.Fatalf("GenerateKey over a lone public key = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, PrivateKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("private key written although the public key exists: %v", err)
	}
}

func writePEM(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadKeyErrors(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPub, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edPrivDER, _ := x509.MarshalPKCS8PrivateKey(edPriv)
	edPubDER, _ := x509.MarshalPKIXPublicKey(edPub)

	garbage := filepath.Join(t.TempDir(), "garbage.key")
	if err := os.WriteFile(garbage, []byte("this is not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.key")

	privCases := []struct {
		name, path, want string
	}{
		{"garbage", garbage, "no PEM data found"},
		{"ecdsa", writePEM(t, "ec.key", "PRIVATE KEY", ecPriv), "not an ed25519 key (it is an ECDSA key)"},
		{"public key", writePEM(t, "ed.pub", "PUBLIC KEY", edPubDER), "holds a public key"},
		{"cosign encrypted", writePEM(t, "cosign.key", "ENCRYPTED SIGSTORE PRIVATE KEY", []byte("x")), "encrypted cosign key"},
		{"other PEM", writePEM(t, "cert.pem", "CERTIFICATE", []byte("x")), `PEM block is "CERTIFICATE"`},
		{"corrupt DER", writePEM(t, "bad.key", "PRIVATE KEY", []byte("not DER")), "bad.key"},
		{"missing", missing, "no such file"},
	}
	for _, c := range privCases {
		t.Run("private/"+c.name, func(t *testing.T) {
			k, err := LoadPrivateKey(c.path)
			if err == nil {
				t.Fatalf("loaded %v", k)
			}
			if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name %s and say %q", err, c.path, c.want)
			}
		})
	}
	if _, err := LoadPrivateKey(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing private key: %v, want fs.ErrNotExist", err)
	}

	pubCases := []struct {
		name, path, want string
	}{
		{"garbage", garbage, "no PEM data found"},
		{"ecdsa", writePEM(t, "ec.pub", "PUBLIC KEY", ecPub), "not an ed25519 key (it is an ECDSA key)"},
		{"rsa", writePEM(t, "rsa.pub", "PUBLIC KEY", rsaPub), "not an ed25519 key (it is an RSA key)"},
		{"private key", writePEM(t, "ed.key", "PRIVATE KEY", edPrivDER), "holds a private key"},
		{"corrupt DER", writePEM(t, "bad.pub", "PUBLIC KEY", []byte("not DER")), "bad.pub"},
		{"missing", missing, "no such file"},
	}
	for _, c := range pubCases {
		t.Run("public/"+c.name, func(t *testing.T) {
			k, err := LoadPublicKey(c.path)
			if err == nil {
				t.Fatalf("loaded %v", k)
			}
			if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name %s and say %q", err, c.path, c.want)
			}
		})
	}

	// The PEM files of other tools load when they hold ed25519 keys.
	if k, err := LoadPrivateKey(writePEM(t, "ok.key", "PRIVATE KEY", edPrivDER)); err != nil || !k.Equal(edPriv) {
		t.Errorf("PKCS#8 ed25519 key: %v", err)
	}
	if k, err := LoadPublicKey(writePEM(t, "ok.pub", "PUBLIC KEY", edPubDER)); err != nil || !k.Equal(edPub) {
		t.Errorf("PKIX ed25519 key: %v", err)
	}
}

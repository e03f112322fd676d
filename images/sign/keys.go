package sign

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgctl/imgctl/layers/localfile"
)

// Key file names GenerateKey writes.
const (
	PrivateKeyFile = "imgctl.key"
	PublicKeyFile  = "imgctl.pub"
)

// PEM block types of the key files.
const (
	privateKeyPEMType = "PRIVATE KEY" // PKCS#8
	publicKeyPEMType  = "PUBLIC KEY"  // PKIX (SubjectPublicKeyInfo)
)

// GenerateKey makes an ed25519 key pair in dir (created 0700 if missing): PrivateKeyFile, an
// unencrypted PKCS#8 PEM file of mode 0600, and PublicKeyFile, a PKIX PEM file of mode 0644
// (the format `cosign verify --key` reads). It refuses, with an error wrapping fs.ErrExist,
// if either file exists, so a key is never overwritten and no half-replaced pair is left.
func GenerateKey(dir string) (privPath, pubPath string, err error) {
	privPath = filepath.Join(dir, PrivateKeyFile)
	pubPath = filepath.Join(dir, PublicKeyFile)
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("generating key: %s already exists (remove it first to replace the key pair): %w", p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("generating key: %w", err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generating key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", fmt.Errorf("generating key: encoding private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", "", fmt.Errorf("generating key: encoding public key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("generating key: %w", err)
	}
	if err := writeNew(privPath, pem.EncodeToMemory(&pem.Block{Type: privateKeyPEMType, Bytes: privDER}), 0o600); err != nil {
		return "", "", fmt.Errorf("generating key: %w", err)
	}
	if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: publicKeyPEMType, Bytes: pubDER}), 0o644); err != nil {
		_ = os.Remove(privPath) // no private key without its public half
		return "", "", fmt.Errorf("generating key: %w", err)
	}
	return privPath, pubPath, nil
}

// writeNew creates path (failing if it exists), writes data with the given mode whatever the
// umask, and syncs it. A failed write leaves no file.
func writeNew(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

// LoadPrivateKey reads an unencrypted PKCS#8 PEM ed25519 private key, as GenerateKey writes.
// Errors name the file and say what was found instead.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	block, err := readPEM(path, "private")
	if err != nil {
		return nil, err
	}
	switch block.Type {
	case privateKeyPEMType:
	case "ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY":
		return nil, fmt.Errorf("loading private key %s: it is an encrypted cosign key; imgctl reads an unencrypted PKCS#8 %q PEM block (make one with imgctl's key generation)", path, privateKeyPEMType)
	case publicKeyPEMType:
		return nil, fmt.Errorf("loading private key %s: it holds a public key, expected a PKCS#8 %q PEM block", path, privateKeyPEMType)
	default:
		return nil, fmt.Errorf("loading private key %s: PEM block is %q, expected a PKCS#8 %q block", path, block.Type, privateKeyPEMType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("loading private key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("loading private key %s: not an ed25519 key (it is %s)", path, keyKind(k))
	}
	return priv, nil
}

// LoadPublicKey reads a PKIX PEM ed25519 public key, as GenerateKey writes (and cosign's
// `--key` files are). Errors name the file and say what was found instead.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := localfile.ReadFile(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("loading public key: %w", err)
	}
	return ParsePublicKey(data, path)
}

// ParsePublicKey decodes a PKIX PEM ed25519 public key (the content of an imgctl.pub file);
// name says where data came from, for errors.
func ParsePublicKey(data []byte, name string) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("loading public key %s: no PEM data found, expected a %q PEM block", name, publicKeyPEMType)
	}
	switch block.Type {
	case publicKeyPEMType:
	case privateKeyPEMType, "ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
		return nil, fmt.Errorf("loading public key %s: it holds a private key, expected a PKIX %q PEM block (the .pub file)", name, publicKeyPEMType)
	default:
		return nil, fmt.Errorf("loading public key %s: PEM block is %q, expected a PKIX %q block", name, block.Type, publicKeyPEMType)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("loading public key %s: %w", name, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("loading public key %s: not an ed25519 key (it is %s)", name, keyKind(k))
	}
	return pub, nil
}

// EncodePublicKey is pub as a PKIX PEM file, as GenerateKey writes it (the encoding is
// deterministic: a key has one).
func EncodePublicKey(pub ed25519.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub) // cannot fail for an ed25519.PublicKey
	return pem.EncodeToMemory(&pem.Block{Type: publicKeyPEMType, Bytes: der})
}

func readPEM(path, which string) (*pem.Block, error) {
	data, err := localfile.ReadFile(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("loading %s key: %w", which, err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		want := publicKeyPEMType
		if which == "private" {
			want = privateKeyPEMType
		}
		return nil, fmt.Errorf("loading %s key %s: no PEM data found, expected a %q PEM block", which, path, want)
	}
	return block, nil
}

func keyKind(k any) string {
	switch k.(type) {
	case *ecdsa.PrivateKey, *ecdsa.PublicKey:
		return "an ECDSA key"
	case *rsa.PrivateKey, *rsa.PublicKey:
		return "an RSA key"
	}
	return fmt.Sprintf("a %T", k)
}

// KeyID identifies a public key: the lowercase hex SHA-256 of its PKIX DER encoding (the
// sigstore key ID convention). Signatures record the signer's KeyID, unverified, so that an
// untrusted or altered signature can be reported by key.
func KeyID(pub ed25519.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub) // cannot fail for an ed25519.PublicKey
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

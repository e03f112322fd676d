package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	"sigs.k8s.io/yaml"
)

// PolicyFile is the name of a store's trust policy, in the store directory (see
// PolicyForStore). OCI tools ignore extra files in a layout directory.
const PolicyFile = "trust.json"

// Policy says which keys an image must be signed by: any one valid signature by any one of
// Keys suffices.
type Policy struct {
	Keys []ed25519.PublicKey
	// KeyFiles are the files Keys were loaded from, in the same order (LoadPolicy fills it), for
	// messages. It may be empty for a policy built in code.
	KeyFiles []string
}

// policyDoc is the policy file format (see LoadPolicy).
type policyDoc struct {
	PublicKeys []string `json:"publicKeys"`
}

// LoadPolicy reads a trust policy file: JSON, or YAML when the name ends in .yaml or .yml,
// with the fields of
//
//	{"publicKeys": ["imgctl.pub", "/etc/imgctl/release.pub"]}
//
// where each entry is a PKIX PEM ed25519 public key file (as GenerateKey writes), relative
// to the policy file's directory unless absolute. At least one key is required and unknown
// fields are rejected, so that a misspelt field cannot silently weaken the policy. Errors
// name the file and, for a key, its entry.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading trust policy: %w", err)
	}
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".yaml" || ext == ".yml" {
		if data, err = yaml.YAMLToJSON(data); err != nil {
			return nil, fmt.Errorf("loading trust policy %s: %w", path, err)
		}
	}
	var doc policyDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("loading trust policy %s: %w (want {\"publicKeys\": [\"path/to/imgctl.pub\", …]})", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("loading trust policy %s: data after the JSON object", path)
	}
	if len(doc.PublicKeys) == 0 {
		return nil, fmt.Errorf("loading trust policy %s: publicKeys is empty: a policy must trust at least one key", path)
	}
	p := &Policy{}
	for i, k := range doc.PublicKeys {
		if k == "" {
			return nil, fmt.Errorf("loading trust policy %s: publicKeys[%d] is empty", path, i)
		}
		if !filepath.IsAbs(k) {
			k = filepath.Join(filepath.Dir(path), k)
		}
		pub, err := LoadPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("loading trust policy %s: publicKeys[%d]: %w", path, i, err)
		}
		p.Keys = append(p.Keys, pub)
		p.KeyFiles = append(p.KeyFiles, k)
	}
	return p, nil
}

// PolicyForStore loads the trust policy of the store in storeDir, STOREDIR/trust.json. It
// returns nil, nil when there is none: then nothing is enforced. A policy file that exists
// but is unreadable or invalid (or names a missing key) is an error, never "no policy".
func PolicyForStore(storeDir string) (*Policy, error) {
	path := filepath.Join(storeDir, PolicyFile)
	// Lstat, so that a dangling symlink is an error from LoadPolicy rather than no policy.
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("loading trust policy: %w", err)
	}
	return LoadPolicy(path)
}

// Hook returns p.Verify bound to st, the form of channel.Log's Verify hook, or nil when p is
// nil (no policy, so nothing to enforce).
func (p *Policy) Hook(st *store.Store) func(context.Context, store.Image) error {
	if p == nil {
		return nil
	}
	return func(ctx context.Context, img store.Image) error { return p.Verify(ctx, st, img) }
}

// Verify checks that img, an image in st, has a valid signature by one of p's keys. It first
// recomputes the digest of the image's manifest as stored, then accepts a signature only if
// it verifies with a trusted key and its payload names exactly that digest. It returns nil,
// or an error naming the image digest that wraps ErrUnsigned (no signature at all),
// ErrBadSignature (a signature cannot be read, or verifies with a trusted key but was made for
// another image, or claims a trusted key but does not verify: altered) or ErrUntrusted
// (signatures, none by a trusted key).
// A nil policy is an error: callers skip verification when PolicyForStore finds none.
func (p *Policy) Verify(ctx context.Context, st *store.Store, img store.Image) error {
	d := img.Digest()
	if err := p.check(d); err != nil {
		return err
	}
	if err := checkManifest(ctx, st, img); err != nil {
		return fmt.Errorf("verifying image %s: %w", d, err)
	}
	sigs, err := Signatures(ctx, st, img)
	if err != nil {
		return fmt.Errorf("verifying image %s: %w", d, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return p.VerifySignatures(d, sigs)
}

// check refuses a nil or empty policy, or one holding a key that is not an ed25519 key.
func (p *Policy) check(d digest.Digest) error {
	if p == nil {
		return fmt.Errorf("verifying image %s: no trust policy", d)
	}
	if len(p.Keys) == 0 {
		return fmt.Errorf("verifying image %s: the trust policy lists no keys", d)
	}
	for i, k := range p.Keys {
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("verifying image %s: trusted key %s has %d bytes, not an ed25519 public key", d, p.keyName(i), len(k))
		}
	}
	return nil
}

// VerifySignatures is Verify for signatures found elsewhere than in a store (a registry's
// referrers): it checks that one of sigs, signatures of the image with manifest digest d, is
// valid and made by one of p's keys, with the errors Verify returns. The caller must have
// checked that d is the digest of the image's manifest.
func (p *Policy) VerifySignatures(d digest.Digest, sigs []Signature) error {
	if err := p.check(d); err != nil {
		return err
	}
	ids := make([]string, len(p.Keys))
	for i, k := range p.Keys {
		ids[i] = KeyID(k)
	}
	if len(sigs) == 0 {
		return fmt.Errorf("image %s: %w", d, ErrUnsigned)
	}
	var bad []string
	for _, s := range sigs {
		mismatch := true
		for _, k := range p.Keys {
			err := s.Verify(k, d)
			if err == nil {
				return nil
			}
			if !errors.Is(err, ErrKeyMismatch) {
				// Every such error wraps ErrBadSignature, which the final error names once.
				msg := strings.TrimPrefix(err.Error(), ErrBadSignature.Error()+": ")
				bad = append(bad, fmt.Sprintf("signature %s: %s", s.Manifest.Digest, msg))
				mismatch = false
				break
			}
		}
		if i := slices.Index(ids, s.KeyID); mismatch && i >= 0 {
			bad = append(bad, fmt.Sprintf("signature %s claims trusted key %s but does not verify with it (payload or signature altered)",
				s.Manifest.Digest, p.keyName(i)))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("image %s: %w: %s", d, ErrBadSignature, strings.Join(bad, "; "))
	}
	return fmt.Errorf("image %s: %w (%d %s checked against %s)", d, ErrUntrusted, len(sigs), plural(len(sigs), "signature"), p.keyList())
}

func (p *Policy) keyName(i int) string {
	if i < len(p.KeyFiles) && p.KeyFiles[i] != "" {
		return p.KeyFiles[i]
	}
	return KeyID(p.Keys[i])
}

func (p *Policy) keyList() string {
	names := make([]string, len(p.Keys))
	for i := range p.Keys {
		names[i] = p.keyName(i)
	}
	return fmt.Sprintf("%d trusted %s: %s", len(names), plural(len(names), "key"), strings.Join(names, ", "))
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgctl/imgctl/layers/atomicfile"
	"github.com/imgctl/imgctl/layers/flock"
)

// TrustedKeysDir is where AddStoreKey copies the keys it trusts, inside the store directory:
// STOREDIR/trusted-keys/KEYID.pub, listed in trust.json by that relative path, so that the
// policy does not depend on where the key file was when it was added.
const TrustedKeysDir = "trusted-keys"

// policyLock serializes AddStoreKey calls on one store (flock, so across processes too).
const policyLock = PolicyFile + ".lock"

// AddStoreKey makes the trust policy of the store in storeDir (STOREDIR/trust.json, see
// PolicyForStore) trust pub, creating the policy if there is none. The key is copied to
// STOREDIR/trusted-keys/KEYID.pub and its relative path appended to publicKeys; the entries
// already there are kept as they are. Adding a key the policy already trusts (under any file
// name) changes nothing and returns added false. An existing policy that does not load is an
// error and is left alone. Both files are written atomically (temp, fsync, rename) under a
// lock, so concurrent adds do not lose each other's keys. storeDir must be an existing store:
// the caller opens it first, so that no directory holds a policy and no store.
func AddStoreKey(ctx context.Context, storeDir string, pub ed25519.PublicKey) (keyPath string, added bool, err error) {
	if len(pub) != ed25519.PublicKeySize {
		return "", false, fmt.Errorf("trusting key: %d bytes, not an ed25519 public key", len(pub))
	}
	id := KeyID(pub)
	policy := filepath.Join(storeDir, PolicyFile)
	fail := func(err error) (string, bool, error) {
		return "", false, fmt.Errorf("trusting key %s in %s: %w", id, policy, err)
	}
	unlock, err := flock.Lock(ctx, filepath.Join(storeDir, policyLock), 0o644, nil)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = unlock() }()

	p, err := PolicyForStore(storeDir)
	if err != nil {
		return fail(err)
	}
	var doc policyDoc
	if p != nil {
		for i, k := range p.Keys {
			if k.Equal(pub) {
				return p.KeyFiles[i], false, nil
			}
		}
		data, err := os.ReadFile(policy)
		if err != nil {
			return fail(err)
		}
		// LoadPolicy just decoded it strictly.
		if err := json.Unmarshal(data, &doc); err != nil {
			return fail(err)
		}
	}

	rel := filepath.Join(TrustedKeysDir, id+".pub")
	keyPath = filepath.Join(storeDir, rel)
	pemData := EncodePublicKey(pub)
	switch old, err := os.ReadFile(keyPath); {
	case err == nil && bytes.Equal(old, pemData):
	case err == nil || errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(keyPath), 0o755); err != nil {
			return fail(err)
		}
		if err := atomicfile.Write("", keyPath, pemData, 0o644); err != nil {
			return fail(err)
		}
	default:
		return fail(err)
	}
	doc.PublicKeys = append(doc.PublicKeys, filepath.ToSlash(rel))
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := atomicfile.Write("", policy, append(data, '\n'), 0o644); err != nil {
		return fail(err)
	}
	return keyPath, true, nil
}

package sign

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// keyDir makes a key pair in dir/sub and returns the public key's path.
func keyDir(t *testing.T, dir, sub string) string {
	t.Helper()
	_, pub, err := GenerateKey(filepath.Join(dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	relPub := keyDir(t, dir, "keys/release")
	absPub := keyDir(t, t.TempDir(), "ci")
	wantRel, _ := LoadPublicKey(relPub)
	wantAbs, _ := LoadPublicKey(absPub)

	for _, c := range []struct{ name, content string }{
		{"policy.json", `{"publicKeys": ["keys/release/imgctl.pub", "` + absPub + `"]}`},
		{"policy.yaml", "publicKeys:\n  - keys/release/imgctl.pub\n  - " + absPub + "\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := LoadPolicy(writeFile(t, filepath.Join(dir, c.name), c.content))
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Keys) != 2 || !p.Keys[0].Equal(wantRel) || !p.Keys[1].Equal(wantAbs) {
				t.Errorf("keys = %v", p.Keys)
			}
			if len(p.KeyFiles) != 2 || p.KeyFiles[0] != relPub || p.KeyFiles[1] != absPub {
				t.Errorf("key files = %v, want %s and %s", p.KeyFiles, relPub, absPub)
			}
		})
	}
}

func TestLoadPolicyErrors(t *testing.T) {
	dir := t.TempDir()
	keyDir(t, dir, "k")
	privPath := filepath.Join(dir, "k", PrivateKeyFile)
	cases := []struct {
		name, content string
		want          []string
	}{
		{"not JSON", `publicKeys = ["k/imgctl.pub"]`, []string{"invalid character"}},
		{"misspelt field", `{"publicKey": ["k/imgctl.pub"]}`, []string{`unknown field "publicKey"`}},
		{"wrong type", `{"publicKeys": "k/imgctl.pub"}`, []string{"cannot unmarshal string"}},
		{"no keys", `{"publicKeys": []}`, []string{"publicKeys is empty"}},
		{"absent keys", `{}`, []string{"publicKeys is empty"}},
		{"empty entry", `{"publicKeys": ["k/imgctl.pub", ""]}`, []string{"publicKeys[1] is empty"}},
		{"missing key file", `{"publicKeys": ["k/imgctl.pub", "nope.pub"]}`, []string{"publicKeys[1]", filepath.Join(dir, "nope.pub")}},
		{"private key listed", `{"publicKeys": ["` + privPath + `"]}`, []string{"publicKeys[0]", privPath, "holds a private key"}},
		{"trailing data", `{"publicKeys": ["k/imgctl.pub"]} {}`, []string{"data after the JSON object"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeFile(t, filepath.Join(dir, "trust.json"), c.content)
			p, err := LoadPolicy(path)
			if err == nil {
				t.Fatalf("loaded %+v", p)
			}
			for _, w := range append(c.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	if _, err := LoadPolicy(filepath.Join(dir, "absent.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing policy file: %v", err)
	}
	if _, err := LoadPolicy(writeFile(t, filepath.Join(dir, "p.yaml"), "publicKeys: [unclosed\n")); err == nil {
		t.Error("bad YAML loaded")
	}
}

func TestPolicyForStore(t *testing.T) {
	storeDir := t.TempDir()
	p, err := PolicyForStore(storeDir)
	if p != nil || err != nil {
		t.Fatalf("no trust.json: %v, %v; want nil, nil", p, err)
	}
	keyDir(t, storeDir, "keys")
	writeFile(t, filepath.Join(storeDir, PolicyFile), `{"publicKeys": ["keys/imgctl.pub"]}`)
	p, err = PolicyForStore(storeDir)
	if err != nil || p == nil || len(p.Keys) != 1 {
		t.Fatalf("PolicyForStore = %+v, %v", p, err)
	}

	// A policy that names a missing key is an error, not "no policy".
	writeFile(t, filepath.Join(storeDir, PolicyFile), `{"publicKeys": ["gone/imgctl.pub"]}`)
	if p, err := PolicyForStore(storeDir); p != nil || err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key: %v, %v", p, err)
	}
	// So is a trust.json that is a dangling symlink.
	linkDir := t.TempDir()
	if err := os.Symlink(filepath.Join(linkDir, "elsewhere.json"), filepath.Join(linkDir, PolicyFile)); err != nil {
		t.Fatal(err)
	}
	if p, err := PolicyForStore(linkDir); p != nil || err == nil {
		t.Errorf("dangling symlink: %v, %v", p, err)
	}
}

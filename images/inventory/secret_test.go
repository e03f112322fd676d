package inventory

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testKeyPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// indent indents every line of s by n spaces.
func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+pad)
}

// TestSecretsNeverInErrors: whatever is wrong with a secret, inline or in a secretFile, neither
// Parse's errors nor a Watcher's log lines quote it.
func TestSecretsNeverInErrors(t *testing.T) {
	const secretToken = "qwerty.0123456789secretx" // malformed on purpose (one character too many)
	const goodToken = "zyxwvu.9876543210zyxwvu"
	key := testKeyPEM(t)
	keyBody := strings.Split(key, "\n")[1] // a line of the key's base64
	cases := map[string]struct{ inline, file string }{
		"scalar secret":          {inline: "  secret: " + goodToken + "\n"},
		"list secret":            {inline: "  secret: [" + goodToken + "]\n"},
		"token as a key":         {inline: "  secret: {" + goodToken + ": x}\n"},
		"token under a key":      {inline: "  secret: {bootstrapToken: {" + goodToken + ": 1}}\n"},
		"malformed token":        {inline: "  secret: {bootstrapToken: " + secretToken + ", caCertHashes: [\"" + zeroHash + "\"]}\n"},
		"token as a list":        {inline: "  secret: {bootstrapToken: [" + goodToken + "]}\n"},
		"binary token":           {inline: "  secret: {bootstrapToken: !!binary " + "c2VjcmV0" + "}\n"},
		"misplaced token field":  {inline: "  " + goodToken + ": x\n"},
		"key in caKey of a node": {inline: "  secret:\n    caKey: |\n" + indent(key, 6) + "\n"},
		"key in clientKey alone": {inline: "  secret:\n    clientKey: |\n" + indent(strings.Replace(key, keyBody, keyBody[:10]+"AAAA"+keyBody[14:], 1), 6) + "\n"},
		"key as certificate":     {inline: "  config: {cluster: {caCertificate: \"" + strings.ReplaceAll(key, "\n", `\n`) + "\"}}\n"},
		"file: malformed token":  {file: "bootstrapToken: " + secretToken + "\ncaCertHashes: [\"" + zeroHash + "\"]\n"},
		"file: scalar":           {file: goodToken + "\n"},
		"file: unclosed quote":   {file: "bootstrapToken: \"" + goodToken + "\n"},
		"file: bad indentation":  {file: "bootstrapToken: " + goodToken + "\n  caKey: " + goodToken + "\n"},
		"file: two documents":    {file: "bootstrapToken: " + goodToken + "\n---\n" + goodToken + "\n"},
		"file: unknown field":    {file: "bootstrapToken: " + goodToken + "\n" + goodToken + ": 1\n"},
		"file: control char":     {file: "bootstrapToken: " + goodToken + "\x01\n"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			src := head + okMachine + c.inline
			if c.file != "" {
				src += "  secretFile: s.yaml\n"
				if err := os.WriteFile(filepath.Join(dir, "s.yaml"), []byte(c.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// Without the group's secret, so that the machine's own is what is checked.
			src = strings.Replace(src, "  secret: {bootstrapToken: "+token+", caCertHashes: [\""+zeroHash+"\"]}\n", "", 1)
			path := filepath.Join(dir, "inv.yaml")
			good := head + okMachine
			if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			w, err := NewWatcher(t.Context(), path, nil, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			err = w.Reload(t.Context())
			if err == nil {
				t.Fatalf("Reload accepted %q", src)
			}
			for _, text := range []string{err.Error(), logs.String()} {
				for _, secret := range []string{goodToken, secretToken, "0123456789secret", keyBody, keyBody[:20], "c2VjcmV0"} {
					if strings.Contains(text, secret) {
						t.Errorf("a secret shows in:\n%s", text)
					}
				}
			}
			t.Logf("%v", err)
		})
	}
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "conf")
	if err := os.MkdirAll(filepath.Join(sub, "secrets"), 0o755); err != nil {
		t.Fatal(err)
	}
	abs := filepath.Join(dir, "abs.yaml")
	write := func(p, s string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(sub, "secrets", "w.yaml"), "# comment\nbootstrapToken: "+token+"\ncaCertHashes: [\""+zeroHash+"\"]\n", 0o600)
	write(abs, "bootstrapToken: "+token+"\ncaCertHashes: [\""+oneHash+"\"]\n", 0o644)
	inv := filepath.Join(sub, "inv.yaml")
	src := strings.Replace(head, "  secret: {bootstrapToken: "+token+", caCertHashes: [\""+zeroHash+"\"]}\n", "  secretFile: secrets/w.yaml\n", 1) +
		okMachine + "- name: node-2\n  group: workers\n  macs: [\"52:54:00:00:00:02\"]\n  secretFile: " + abs + "\n"
	write(inv, src, 0o600)
	got, err := Load(inv)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	n1, _ := got.Machine("node-1")
	n2, _ := got.Machine("node-2")
	if n1.Secret.CACertHashes[0] != zeroHash || n2.Secret.CACertHashes[0] != oneHash {
		t.Errorf("secrets: node-1 %v, node-2 %v: want the group's relative file and the machine's absolute one", n1.Secret.CACertHashes, n2.Secret.CACertHashes)
	}
	if len(got.Warnings) != 1 || !strings.Contains(got.Warnings[0], abs+" holds secrets but has mode 0644: group or others can read it (run chmod 600 "+abs+")") {
		t.Errorf("Warnings = %q, want one about %s's mode", got.Warnings, abs)
	}
	// Load from a different working directory: secretFile is relative to the inventory.
	t.Chdir(dir)
	if _, err := Load(filepath.Join("conf", "inv.yaml")); err != nil {
		t.Errorf("Load from another directory: %v", err)
	}

	// Located problems in a secret file name that file and its line.
	write(filepath.Join(sub, "secrets", "w.yaml"), "bootstrapToken: "+token+"\ncaCertHashes: [sha256:00]\ncaKey: x\n", 0o600)
	_, err = Load(inv)
	want := []string{
		filepath.Join(sub, "secrets", "w.yaml") + `:2: caCertHashes[0]: "sha256:00" is malformed (expected sha256: and 64 lower-case hex digits) (NodeConfig of machine "node-1")`,
		filepath.Join(sub, "secrets", "w.yaml") + `:3: caKey: no PEM private key (NodeConfig of machine "node-1")`,
		filepath.Join(sub, "secrets", "w.yaml") + `:3: caKey: only allowed for role master (role is node) (NodeConfig of machine "node-1")`,
	}
	if got := errLines(err); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}

	// Inline secrets in an inventory others can read: a warning.
	write(inv, head+okMachine, 0o644)
	got, err = Load(inv)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Warnings) != 1 || !strings.Contains(got.Warnings[0], inv+" holds secrets but has mode 0644") {
		t.Errorf("Warnings = %q", got.Warnings)
	}
	// Not a regular file: refused without blocking.
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "load inventory") {
		t.Errorf("Load(a directory) = %v", err)
	}
}

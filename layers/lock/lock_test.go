package lock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "imgctl.lock")
	if f, err := Load(p); f != nil || err != nil {
		t.Fatalf("missing lock: got %v, %v", f, err)
	}
	f := &File{Version: Version, SourceDateEpoch: 1700000000, Sources: []Source{
		{Role: "runtime", URI: "deb://b", Digest: digest.Digest("sha256:" + strings.Repeat("b", 64)), Resolved: "runc=1"},
		{Role: "base", URI: "mmdebstrap://a", Digest: digest.Digest("sha256:" + strings.Repeat("a", 64))},
	}}
	if err := f.Save(p); err != nil {
		t.Fatal(err)
	}
	g, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if g.Sources[0].Role != "base" || g.Lookup("runtime", "deb://b").Resolved != "runc=1" || g.Lookup("base", "deb://b") != nil {
		t.Errorf("round trip lost data: %+v", g)
	}
	a, _ := f.Marshal()
	b, _ := g.Marshal()
	if string(a) != string(b) {
		t.Error("marshal is not deterministic")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"garbage": "{not json",
		"version": `{"version": 9, "sources": []}`,
		"unknown": `{"version": 1, "surprise": true}`,
		"digest":  `{"version": 1, "sources": [{"role":"base","uri":"x","digest":"md5:abc"}]}`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
}

package lock

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestLoadRejectsTrailingData: a lock file is one JSON document; what follows it (a second
// document from a bad merge, a truncated rewrite's leftovers) was silently ignored.
func TestLoadRejectsTrailingData(t *testing.T) {
	p := filepath.Join(t.TempDir(), "imgctl.lock")
	for _, body := range []string{`{"version": 1} {"version": 1}`, "{\"version\": 1}\n]", `{"version": 1}x`} {
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("Load(%q) = %v, want an error naming the file", body, err)
		}
	}
}

// FuzzLoad: Load accepts only one complete, valid lock document and names the file when it
// refuses; what it accepts marshals to a fixed point that loads back equal (sources sorted).
func FuzzLoad(f *testing.F) {
	good := &File{Version: Version, SourceDateEpoch: 1700000000, Sources: []Source{
		{Role: "runtime", URI: "deb://b?x=1&y=2", Digest: digest.Digest("sha256:" + strings.Repeat("b", 64)), Resolved: "runc=1"},
		{Role: "base", URI: "mmdebstrap://a", Digest: digest.Digest("sha256:" + strings.Repeat("a", 64)), URL: "http://deb.example/a"},
	}}
	b, err := good.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"version":1,"sourceDateEpoch":-5,"sources":null}`))
	f.Add([]byte(`{"version": 1, "sources": [{"role":"base","uri":"x","digest":"md5:abc"}]}`))
	f.Add([]byte(`{"version": 1} {}`))
	f.Add([]byte(`{"Version": 1, "SOURCES": [{"Role":"\u00e9","uri":"\ud800"}]}`))
	dir := f.TempDir()
	p := filepath.Join(dir, "imgctl.lock")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		lf, err := Load(p)
		if err != nil {
			if lf != nil || !strings.Contains(err.Error(), p) {
				t.Fatalf("Load error %v (file %v) does not name the file", err, lf)
			}
			return
		}
		if lf == nil {
			t.Fatal("Load of an existing file returned nil, nil")
		}
		if !json.Valid(data) {
			t.Fatalf("Load accepted %q, which is not one JSON document", data)
		}
		if lf.Version != Version {
			t.Fatalf("Load accepted version %d", lf.Version)
		}
		for _, s := range lf.Sources {
			if s.Digest.Validate() != nil {
				t.Fatalf("Load accepted digest %q", s.Digest)
			}
			if got := lf.Lookup(s.Role, s.URI); got == nil || got.Role != s.Role || got.URI != s.URI {
				t.Fatalf("Lookup(%q, %q) = %v", s.Role, s.URI, got)
			}
		}
		m1, err := lf.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, m1, 0o644); err != nil {
			t.Fatal(err)
		}
		again, err := Load(p)
		if err != nil {
			t.Fatalf("Load of Marshal's output: %v\n%s", err, m1)
		}
		m2, err := again.Marshal()
		if err != nil || string(m1) != string(m2) {
			t.Fatalf("Marshal is not a fixed point (%v):\n%s\n%s", err, m1, m2)
		}
		// Sorted as Marshal sorts, the sources are the ones loaded, unchanged.
		want := slices.Clone(lf.Sources)
		slices.SortStableFunc(want, func(a, b Source) int {
			return strings.Compare(a.Role+"\x00"+a.URI, b.Role+"\x00"+b.URI)
		})
		if len(want) == 0 && len(again.Sources) == 0 {
			return
		}
		if !reflect.DeepEqual(want, again.Sources) {
			t.Fatalf("sources changed in a round trip:\n%+v\n%+v", want, again.Sources)
		}
	})
}

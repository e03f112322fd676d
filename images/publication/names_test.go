package publication

import (
	"crypto/sha256"
	"strings"
	"testing"
)

func TestAMIName(t *testing.T) {
	for _, c := range []struct {
		prefix, version, want, err string
	}{
		{DefaultNamePrefix, "1.21.13-6.1.0-20261126.1", "imgctl-1.21.13-6.1.0-20261126.1", ""},
		{"team (prod) ", "1.0", "team (prod) 1.0", ""},
		{"", "ab", "", "3 to 128"},
		{strings.Repeat("p", 120), "1.21.13-x", "", "3 to 128"},
		{"bad;", "1.0", "", `';' is not allowed`},
		{"x$(reboot)", "1.0", "", `'$' is not allowed`},
	} {
		got, err := AMIName(c.prefix, c.version)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("AMIName(%q, %q) = %q, %v; want error with %q", c.prefix, c.version, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("AMIName(%q, %q) = %q, %v; want %q", c.prefix, c.version, got, err, c.want)
		}
	}
}

func TestParameters(t *testing.T) {
	if p, err := ChannelParameter("/imgctl/nodes", "prod"); err != nil || p != "/imgctl/nodes/prod/image_id" {
		t.Errorf("ChannelParameter = %q, %v", p, err)
	}
	if p, err := VersionParameter("/a", "1.21.13-6.1.0-20261126.1"); err != nil || p != "/a/1.21.13-6.1.0-20261126.1/image_id" {
		t.Errorf("VersionParameter = %q, %v", p, err)
	}
	for _, bad := range []string{"", "imgctl", "/", "/imgctl/", "//x", "/aws/x", "/SSM", "/a b", "/a/../b/c;d", "/" + strings.Repeat("a/", 10) + "a", "/" + strings.Repeat("x", 901)} {
		if err := CheckSSMPrefix(bad); err == nil {
			t.Errorf("CheckSSMPrefix(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"", "a/b", "x y", "prod\n"} {
		if _, err := ChannelParameter("/imgctl", bad); err == nil {
			t.Errorf("ChannelParameter(%q) accepted", bad)
		}
	}
}

func TestHashes(t *testing.T) {
	h := NewHashes(BlockSize, 6144)
	h.Set(5, sha256.Sum256([]byte("a")))
	h.Set(0, sha256.Sum256([]byte("b")))
	h.Set(6143, sha256.Sum256([]byte("c")))
	h.Set(7, sha256.Sum256([]byte("d")))
	h.Delete(7)
	data, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var g Hashes
	if err := g.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if g.BlockSize != BlockSize || g.Blocks != 6144 || g.Len() != 3 {
		t.Fatalf("decoded %d blocks of %d, %d hashes", g.Blocks, g.BlockSize, g.Len())
	}
	if got := g.Indexes(); len(got) != 3 || got[0] != 0 || got[1] != 5 || got[2] != 6143 {
		t.Errorf("Indexes = %v", got)
	}
	for i := range int64(8) {
		if !h.Same(&g, i) {
			t.Errorf("block %d differs after a round trip", i)
		}
	}
	o := NewHashes(BlockSize, 6144)
	o.Set(5, sha256.Sum256([]byte("a")))
	if o.Same(h, 0) || !o.Same(h, 5) || !o.Same(h, 1) {
		t.Error("Same: wrong answer")
	}
	again, _ := g.MarshalBinary()
	if string(again) != string(data) {
		t.Error("encoding is not deterministic")
	}
	corrupt := map[string][]byte{
		"empty":      nil,
		"magic":      append([]byte("nope"), data[4:]...),
		"truncated":  data[:len(data)-1],
		"block size": append(append([]byte(hashesMagic), 0, 0, 0, 0, 0, 0, 0x10, 0x01), data[len(hashesMagic)+8:]...),
		"out of order": func() []byte {
			b := append([]byte(nil), data...)
			e := len(hashesMagic) + 16
			copy(b[e:e+8], b[e+40:e+48]) // the first entry's index becomes the second's
			return b
		}(),
	}
	for name, b := range corrupt {
		var x Hashes
		if err := x.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

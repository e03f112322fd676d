package dm

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

func superblock(mod func(b []byte)) []byte {
	b := make([]byte, 8192+SuperblockSize)
	sb := b[8192:]
	copy(sb, "verity")
	le := binary.LittleEndian
	le.PutUint32(sb[8:], 1)
	le.PutUint32(sb[12:], 1)
	copy(sb[32:], "sha256")
	le.PutUint32(sb[64:], 4096)
	le.PutUint32(sb[68:], 4096)
	le.PutUint64(sb[72:], 2)
	le.PutUint16(sb[80:], 3)
	copy(sb[88:], []byte{7, 8, 9})
	if mod != nil {
		mod(sb)
	}
	return b
}

func TestReadSuperblock(t *testing.T) {
	sb, err := ReadSuperblock(bytes.NewReader(superblock(nil)), 8192)
	if err != nil {
		t.Fatal(err)
	}
	if sb.DataBlocks != 2 || !bytes.Equal(sb.Salt, []byte{7, 8, 9}) || sb.Algorithm != "sha256" {
		t.Errorf("got %+v", sb)
	}
	le := binary.LittleEndian
	for name, c := range map[string]struct {
		mod  func([]byte)
		want string
	}{
		"no signature": {func(b []byte) { b[0] = 'X' }, `no verity superblock at offset 8192`},
		"version 2":    {func(b []byte) { le.PutUint32(b[8:], 2) }, "version 2, want 1"},
		"chrome os":    {func(b []byte) { le.PutUint32(b[12:], 0) }, "hash type 0"},
		"sha1":         {func(b []byte) { copy(b[32:], "sha1\x00\x00") }, `algorithm "sha1"`},
		"512 blocks":   {func(b []byte) { le.PutUint32(b[64:], 512) }, "block sizes 512/4096"},
		"wrong blocks": {func(b []byte) { le.PutUint64(b[72:], 3) }, "3 data blocks end at 12288"},
		"huge salt":    {func(b []byte) { le.PutUint16(b[80:], 300) }, "salt size 300"},
	} {
		if _, err := ReadSuperblock(bytes.NewReader(superblock(c.mod)), 8192); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	if _, err := ReadSuperblock(bytes.NewReader(superblock(nil)), 9000); err == nil {
		t.Error("superblock past the end: no error")
	}
}

// veritysetup's own superblock reads back as the format the init maps.
func TestReadSuperblockOfVeritysetup(t *testing.T) {
	testenv.Tools(t, "veritysetup")
	f := filepath.Join(t.TempDir(), "img")
	data := bytes.Repeat([]byte("imgctl"), 5*4096/6+1)[:5*4096]
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("veritysetup", "format", "--hash-offset=20480", "--salt=0102030405", "--", f, f).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup format: %v\n%s", err, out)
	}
	r, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sb, err := ReadSuperblock(r, 20480)
	if err != nil {
		t.Fatal(err)
	}
	if sb.DataBlocks != 5 || !bytes.Equal(sb.Salt, []byte{1, 2, 3, 4, 5}) {
		t.Errorf("got %+v, want 5 blocks, salt 0102030405", sb)
	}
}

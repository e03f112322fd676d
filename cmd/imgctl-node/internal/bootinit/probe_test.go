package bootinit

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func image(t *testing.T, size int, patch func([]byte)) string {
	t.Helper()
	b := make([]byte, size)
	patch(b)
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbeFS(t *testing.T) {
	tests := []struct {
		name  string
		size  int
		patch func([]byte)
		want  string
	}{
		{"blank", 1 << 20, func([]byte) {}, ""},
		{"ext4", 1 << 20, func(b []byte) { binary.LittleEndian.PutUint16(b[1080:], 0xEF53) }, "ext4"},
		{"xfs", 1 << 20, func(b []byte) { copy(b, "XFSB") }, "xfs"},
		{"luks", 1 << 20, func(b []byte) { copy(b, "LUKS\xba\xbe") }, "luks"},
		{"btrfs", 1 << 20, func(b []byte) { copy(b[65600:], "_BHRfS_M") }, "btrfs"},
		{"small blank", 8192, func([]byte) {}, ""},
	}
	for _, tc := range tests {
		got, err := probeFS(image(t, tc.size, tc.patch))
		if err != nil || got != tc.want {
			t.Errorf("%s: probeFS = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := probeFS(image(t, 1024, func([]byte) {})); err == nil {
		t.Error("probeFS of a 1 KiB device succeeded")
	}
}

func TestDetectImage(t *testing.T) {
	sq := image(t, 4096, func(b []byte) { copy(b, "hsqs") })
	ero := image(t, 4096, func(b []byte) { binary.LittleEndian.PutUint32(b[1024:], 0xE0F5E1E2) })
	ext := image(t, 4096, func(b []byte) { binary.LittleEndian.PutUint16(b[1080:], 0xEF53) })
	if got, err := detectImage(sq); got != "squashfs" || err != nil {
		t.Errorf("squashfs: %q, %v", got, err)
	}
	if got, err := detectImage(ero); got != "erofs" || err != nil {
		t.Errorf("erofs: %q, %v", got, err)
	}
	if _, err := detectImage(ext); err == nil || !strings.Contains(err.Error(), "neither squashfs nor erofs") {
		t.Errorf("ext4 image: err = %v", err)
	}
}

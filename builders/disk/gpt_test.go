package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"testing"
)

// TestGPTBytes pins the protective MBR, the primary and the backup GPT of a test disk: a change
// of the GPT encoding (such as moving it to images/boot/gpt) must not change a disk's bytes,
// or the same spec would no longer give the same disk.raw.
func TestGPTBytes(t *testing.T) {
	path, l, _ := writeTestDisk(t, t.TempDir(), "sha256:feedface")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	h.Write(readRange(t, f, 0, 34*512))
	h.Write(readRange(t, f, l.DiskSize-33*512, 33*512))
	const want = "6c7769d57c79b0f674364cf666134786e992fec7834bf32bbf625ad7d2295263"
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("GPT sectors hash to %s, want %s", got, want)
	}
}

package bootauth

import (
	"context"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSignedButInvalid: even a correctly signed token (as if the key leaked, or a future version
// wrote it) whose fields are not valid is refused before any field reaches the file system.
func TestSignedButInvalid(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "serve")
	a, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	img := "sha256:" + strings.Repeat("ab", 32)
	id := strings.Repeat("0", 32)
	for _, c := range []struct{ name, payload string }{
		{"path in node", "v1_.._" + id + "_1_9999999999999999__stable_" + img + "_"},
		{"slash in node", "v1_a/b_" + id + "_1_9999999999999999__stable_" + img + "_"},
		{"short ID", "v1_web-1_0000_1_9999999999999999__stable_" + img + "_"},
		{"expires before issued", "v1_web-1_" + id + "_2_1__stable_" + img + "_"},
		{"bad number", "v1_web-1_" + id + "_x_9999999999999999__stable_" + img + "_"},
		{"bad image", "v1_web-1_" + id + "_1_9999999999999999__stable_sha256:ab_"},
		{"bad MAC", "v1_web-1_" + id + "_1_9999999999999999_52:54:00:AB:CD:EF_stable_" + img + "_"},
		{"missing field", "v1_web-1_" + id + "_1_9999999999999999_stable_" + img + "_"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sum := a.sum([]byte(c.payload))
			tok := c.payload + hex.EncodeToString(sum[:])
			if _, err := a.Authorize(context.Background(), tok, netip.MustParseAddr("10.0.0.1")); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("Authorize = %v, want ErrInvalidToken", err)
			}
		})
	}
	ents, err := os.ReadDir(filepath.Join(dir, BootsDir))
	if err != nil || len(ents) != 0 {
		t.Errorf("boots directory: %v, %v; want empty", ents, err)
	}
	// The same construction with valid fields is accepted: the cases above fail for their field.
	good := "v1_web-1_" + id + "_1_9999999999999999__stable_" + img + "_"
	sum := a.sum([]byte(good))
	if _, err := a.Authorize(context.Background(), good+hex.EncodeToString(sum[:]), netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
}

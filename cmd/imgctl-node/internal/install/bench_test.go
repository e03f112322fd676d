package install

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgctl/imgctl/images/imageinfo"
)

// BenchmarkVerifyBinaries measures verify-binaries on one 60 MiB binary (the size of a
// kubelet), from the page cache: go test -run '^$' -bench VerifyBinaries ./cmd/imgctl-node/internal/install/
func BenchmarkVerifyBinaries(b *testing.B) {
	const size = 60 << 20
	root := b.TempDir()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	p := filepath.Join(root, "usr/bin/kubelet")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o755); err != nil {
		b.Fatal(err)
	}
	info := &imageinfo.Info{SchemaVersion: imageinfo.SchemaVersion, Kubernetes: "1.21.13",
		Binaries: map[string]string{"/usr/bin/kubelet": digest(string(data))}}
	m, err := info.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/imgctl"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, imageinfo.Path), m, 0o644); err != nil {
		b.Fatal(err)
	}
	in := &installer{root: root, log: slog.New(slog.DiscardHandler), parallel: 1}
	b.SetBytes(size)
	for b.Loop() {
		res, err := in.verifyBinaries(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if res.kv[3] != int64(size) {
			b.Fatalf("hashed %v bytes, want %d", res.kv[3], size)
		}
	}
}

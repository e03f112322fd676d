package main

import (
	"archive/tar"
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLimitFlagsInHelp(t *testing.T) {
	for _, args := range [][]string{{"build", "--help"}, {"layers", "inspect", "--help"}} {
		out, _, err := run(t, t.TempDir(), args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, s := range []string{"--max-source-size size", "(default 8.0GiB)", "--max-expansion-ratio ratio", "(default 100)",
			"--min-transfer-rate rate", "(default 1.0KiB/s)", "--transfer-rate-window duration", "(default 30s)"} {
			if !strings.Contains(out, s) {
				t.Errorf("%v lacks %q:\n%s", args, s, out)
			}
		}
	}
}

func TestLimitFlagsReachSources(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2 << 20})
	tw.Write(make([]byte, 2<<20))
	tw.Close()
	p := filepath.Join(dir, "big.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := run(t, dir, "layers", "inspect", "--max-source-size", "1MiB", "file://"+p)
	if err == nil || !strings.Contains(err.Error(), "1.0 MiB (1048576 bytes) per source (--max-source-size)") {
		t.Fatalf("err = %v, want the 1 MiB limit", err)
	}
	if _, _, err := run(t, dir, "layers", "inspect", "--max-source-size", "0", "file://"+p); err != nil {
		t.Fatalf("--max-source-size 0 (no limit): %v", err)
	}
	for _, bad := range [][]string{{"--max-source-size", "lots"}, {"--max-expansion-ratio", "-2"}, {"--min-transfer-rate", "fast"}, {"--transfer-rate-window", "-1s"}} {
		_, _, err := run(t, dir, append([]string{"layers", "inspect"}, append(bad, "file://"+p)...)...)
		if err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: err = %v, want a usage error naming the flag", bad, err)
		}
	}
}

func TestLimitFlagsReachDownloads(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	uri := srv.URL + "/endless.tar#sha256=" + strings.Repeat("ab", 32)
	_, _, err := run(t, dir, "layers", "inspect", "--max-source-size", "1MiB", uri)
	if err == nil || !strings.Contains(err.Error(), srv.URL+"/endless.tar sent more than the limit of 1.0 MiB") {
		t.Fatalf("err = %v, want the download stopped at 1 MiB", err)
	}
	for _, sub := range []string{"tmp", "tmp/partial"} {
		es, _ := os.ReadDir(filepath.Join(dir, "cache", sub))
		for _, e := range es {
			if !e.IsDir() {
				t.Errorf("left in the cache: %s/%s", sub, e.Name())
			}
		}
	}
}

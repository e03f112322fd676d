package source

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/limits"
)

// paxSparseTar returns a PAX tar (format 1.0 sparse, as GNU tar --sparse writes it) holding
// one file named name of logical size realSize whose only data, at its end, is data. Go's
// tar.Writer cannot write sparse files, so the extended header is patched in by hand.
func paxSparseTar(t *testing.T, name string, realSize int64, data []byte) []byte {
	t.Helper()
	rec := func(k, v string) string {
		s := " " + k + "=" + v + "\n"
		n := len(s) + 1
		for len(strconv.Itoa(n))+len(s) != n {
			n++
		}
		return strconv.Itoa(n) + s
	}
	recs := rec("GNU.sparse.major", "1") + rec("GNU.sparse.minor", "0") +
		rec("GNU.sparse.name", name) + rec("GNU.sparse.realsize", strconv.FormatInt(realSize, 10))
	sparseMap := fmt.Sprintf("1\n%d\n%d\n", realSize-int64(len(data)), len(data))
	sparseMap += strings.Repeat("\x00", 512-len(sparseMap))

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name string
		body []byte
	}{{"PaxHeaders/" + name, []byte(recs)}, {"GNUSparseFile.0/" + name, append([]byte(sparseMap), data...)}} {
		hdr := &tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body)), Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	// Turn the first entry into the PAX extended header of the second and fix its checksum.
	b[156] = tar.TypeXHeader
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// tarOf returns a tar holding one regular file.
func tarOf(t *testing.T, name string, body io.Reader, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(tw, body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zeroTar returns a tar holding one file of n zero bytes.
func zeroTar(t *testing.T, name string, n int64) []byte {
	return tarOf(t, name, io.LimitReader(zeros{}, n), n)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	t.Helper()
	zw, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zw.Close()
	return zw.EncodeAll(b, nil)
}

// arDeb returns a Debian package with the given data.tar member (name and bytes).
func arDeb(t *testing.T, dataName string, data []byte) []byte {
	t.Helper()
	const ctl = "Package: bomb\nVersion: 1\nArchitecture: all\n"
	control := tarOf(t, "./control", strings.NewReader(ctl), int64(len(ctl)))
	var b bytes.Buffer
	b.WriteString("!<arch>\n")
	for _, m := range []struct {
		name string
		body []byte
	}{{"debian-binary", []byte("2.0\n")}, {"control.tar", control}, {dataName, data}} {
		fmt.Fprintf(&b, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", m.name, 0, 0, 0, "100644", len(m.body))
		b.Write(m.body)
		if len(m.body)%2 == 1 {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// diskUsage sums the blocks allocated under dir.
func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func assertNoTempFiles(t *testing.T, ca *cache.Cache) {
	t.Helper()
	for _, sub := range []string{"tmp", "tmp/partial"} {
		es, err := os.ReadDir(filepath.Join(ca.Dir(), sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if !e.IsDir() {
				t.Errorf("temp file left: %s/%s", sub, e.Name())
			}
		}
	}
}

// materializeFile writes b to a file named name and materializes it as a local source.
func materializeFile(t *testing.T, env *Env, name string, b []byte) (URI, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := Parse("file://" + p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pin, err := env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Materialize(ctx, u, pin)
	return u, err
}

func limitEnv(t *testing.T, l limits.Limits) *Env {
	t.Helper()
	ca, err := cache.Open(filepath.Join(t.TempDir(), "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Cache: ca, Fetch: &fetch.Client{Attempts: 1, Limits: l}, Limits: l}
}

func TestSparseTarRefusedByRatio(t *testing.T) {
	in := paxSparseTar(t, "disk.img", 2<<30, bytes.Repeat([]byte("data"), 2048))
	if len(in) > 12<<10 {
		t.Fatalf("the sparse tar is %d bytes, want about 10 KiB", len(in))
	}
	// The fixture really is sparse: Go's reader expands it to 2 GiB.
	tr := tar.NewReader(bytes.NewReader(in))
	if hdr, err := tr.Next(); err != nil || hdr.Name != "disk.img" || hdr.Size != 2<<30 {
		t.Fatalf("fixture: %+v, %v", hdr, err)
	}
	env := limitEnv(t, limits.Limits{}) // the defaults: 8 GiB, 100×
	u, err := materializeFile(t, env, "sparse.tar", in)
	if !errors.Is(err, limits.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	for _, s := range []string{u.Raw, `entry "disk.img"`, "2.0 GiB", "--max-expansion-ratio"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	t.Log(err)
	if du := diskUsage(t, env.Cache.Dir()); du > 4<<20 {
		t.Errorf("cache dir uses %d bytes after refusing", du)
	}
	assertNoTempFiles(t, env.Cache)
}

func TestCompressionBombRefusedByRatio(t *testing.T) {
	bomb := zeroTar(t, "zeros", 16<<20)
	for _, c := range []struct {
		name string
		file []byte
	}{
		{"bomb.tar.gz", gzipped(t, bomb)},
		{"bomb.tar.zst", zstded(t, bomb)},
		{"bomb.deb", arDeb(t, "data.tar.gz", gzipped(t, bomb))},
		{"bomb-zst.deb", arDeb(t, "data.tar.zst", zstded(t, bomb))},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := limitEnv(t, limits.Limits{MaxExpansionRatio: 20})
			u, err := materializeFile(t, env, c.name, c.file)
			if !errors.Is(err, limits.ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			for _, s := range []string{u.Raw, `entry "zeros"`, "× the", "--max-expansion-ratio"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
			if du := diskUsage(t, env.Cache.Dir()); du > 4<<20 {
				t.Errorf("cache dir uses %d bytes after refusing", du)
			}
			assertNoTempFiles(t, env.Cache)
		})
	}
}

func TestOrdinaryInputsPassLimits(t *testing.T) {
	random := make([]byte, 256<<10)
	for i := range random {
		random[i] = byte(i*7919 + i>>8)
	}
	ordinary := tarOf(t, "usr/bin/tool", bytes.NewReader(random), int64(len(random)))
	tiny := zeroTar(t, "etc/empty", 0)
	for _, c := range []struct {
		name string
		file []byte
	}{
		{"ordinary.tar.gz", gzipped(t, ordinary)},
		{"tiny.tar.gz", gzipped(t, tiny)}, // 10 KiB from 100 bytes: the slack covers it
		{"tiny.deb", arDeb(t, "data.tar.zst", zstded(t, tiny))},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := limitEnv(t, limits.Limits{})
			if _, err := materializeFile(t, env, c.name, c.file); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSourceSizeLimitOnLayerTar(t *testing.T) {
	env := limitEnv(t, limits.Limits{MaxSourceSize: 1 << 20})
	_, err := materializeFile(t, env, "big.tar", zeroTar(t, "big", 3<<20))
	if !errors.Is(err, limits.ErrTooLarge) || !strings.Contains(err.Error(), "--max-source-size") {
		t.Fatalf("err = %v, want ErrTooLarge naming --max-source-size", err)
	}
	assertNoTempFiles(t, env.Cache)
}

func TestRemoteEndlessSourceLeavesNothing(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	env := limitEnv(t, limits.Limits{MaxSourceSize: 1 << 20})
	env.Fetch.StallTimeout = 5 * time.Second
	u, err := Parse(srv.URL + "/endless.tar#sha256=" + digest.FromString("x").Encoded())
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Materialize(context.Background(), u, Pin{URI: u.Raw, Digest: digest.FromString("x")})
	if !errors.Is(err, limits.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if du := diskUsage(t, env.Cache.Dir()); du > 2<<20 {
		t.Errorf("cache dir uses %d bytes", du)
	}
	assertNoTempFiles(t, env.Cache)
}

// TestBoundedWriterStreams checks the byte-level bound that backs the per-entry check: tar
// headers and padding, and content a reader yields beyond its header, are counted too.
func TestBoundedWriterStreams(t *testing.T) {
	env := &Env{Limits: limits.Limits{MaxExpansionRatio: 2}}
	var sink bytes.Buffer
	out := env.boundedTarOut(&sink, "", 0) // 0 bytes of input: only the slack is allowed
	hdr := &tar.Header{Name: "small", Typeflag: tar.TypeReg, Mode: 0o644, Size: 600 << 10}
	var err error
	for i := 0; err == nil && i < 4; i++ {
		h := *hdr
		h.Name = fmt.Sprintf("small%d", i)
		err = out.add(&h, io.LimitReader(zeros{}, h.Size))
	}
	if !errors.Is(err, limits.ErrTooLarge) || !strings.Contains(err.Error(), `entry "small1"`) {
		t.Fatalf("err = %v, want ErrTooLarge on the second entry", err)
	}
	if sink.Len() > limits.ExpansionSlack {
		t.Errorf("%d bytes written past the %d allowed", sink.Len(), limits.ExpansionSlack)
	}
}

func TestOCIArchiveOverSizeLimit(t *testing.T) {
	host := startRegistry(t)
	img := testImage(t, "amd64", true) // two random 2048-byte layers
	dg := push(t, host+"/test/big:1", img)
	env := newTestEnv(t)
	env.Limits.MaxSourceSize = 3 << 10
	u, err := Parse("oci://" + host + "/test/big@" + dg + "#image=" + archivePath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Materialize(context.Background(), u, Pin{URI: u.Raw, Digest: u.Digest})
	if !errors.Is(err, limits.ErrTooLarge) || !strings.Contains(err.Error(), "--max-source-size") {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if es, _ := os.ReadDir(filepath.Join(env.Cache.Dir(), "blobs", "sha256")); len(es) != 0 {
		t.Errorf("%d blobs downloaded before refusing", len(es))
	}
	assertNoTempFiles(t, env.Cache)
}

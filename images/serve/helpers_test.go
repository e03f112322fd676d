package serve

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// pxeImage is a netboot image in a test store and its artifacts' digests.
type pxeImage struct {
	store.Image
	Kernel, Initrd, Root digest.Digest
	KernelBytes          []byte
}

// putPXE stores a netboot image whose artifacts' bytes derive from version; rootSize makes the
// root that large (for disconnect tests).
func putPXE(t testing.TB, st *store.Store, version string, epoch int64, rootSize int, cmdline string) pxeImage {
	t.Helper()
	ctx := context.Background()
	root := bytes.Repeat([]byte("root of "+version+"\n"), 1)
	if rootSize > len(root) {
		root = append(root, bytes.Repeat([]byte{'r'}, rootSize-len(root))...)
	}
	files := []struct {
		name, mt string
		data     []byte
		ann      map[string]string
	}{
		{manifest.KernelArtifact, manifest.KernelMediaType, []byte("kernel of " + version), map[string]string{manifest.AnnotationKernelRelease: "6.1.0-test"}},
		{manifest.InitrdArtifact, manifest.InitrdMediaType, []byte("initrd of " + version), nil},
		{manifest.RootSquashfsArtifact, manifest.SquashfsMediaType, root, map[string]string{manifest.AnnotationKernelCmdline: cmdline}},
	}
	var arts []manifest.Artifact
	var ds []digest.Digest
	for _, f := range files {
		d, n, err := st.WriteBlob(ctx, bytes.NewReader(f.data), int64(len(f.data)), "")
		if err != nil {
			t.Fatal(err)
		}
		arts = append(arts, manifest.Artifact{Name: f.name, MediaType: f.mt, Digest: d, Size: n, Annotations: f.ann})
		ds = append(ds, d)
	}
	desc, err := st.PutImage(ctx, storetest.Config(version, epoch), arts)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Resolve(ctx, desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	return pxeImage{Image: img, Kernel: ds[0], Initrd: ds[1], Root: ds[2], KernelBytes: files[0].data}
}

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testLogger(buf *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// start runs s on a loopback port until the test ends and returns its base URL.
func start(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return "http://" + ln.Addr().String()
}

// get fetches url (with optional header pairs) and returns the status and body.
func get(t *testing.T, method, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return resp, string(body)
}

// rawRequest sends a request line as written (no client-side path cleaning) and returns the
// status line and the whole response.
func rawRequest(t *testing.T, addr, target string) (status, resp string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(c)
	status, _, _ = strings.Cut(string(data), "\r\n")
	return status, string(data)
}

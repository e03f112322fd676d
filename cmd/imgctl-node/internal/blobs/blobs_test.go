package blobs

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/update"
)

func client(url string) *Client {
	return &Client{Server: url, Attempts: 3, Backoff: time.Millisecond, MaxBackoff: time.Millisecond,
		HeaderTimeout: time.Second, StallTimeout: 200 * time.Millisecond}
}

func TestGet(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch r.URL.Path {
		case "/flaky":
			if n == 1 {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, "pointer")
		case "/big":
			io.WriteString(w, strings.Repeat("x", 100))
		case "/down":
			http.Error(w, "down", http.StatusBadGateway)
		case "/stall":
			w.Write([]byte("a"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := client(srv.URL)
	ctx := context.Background()

	if b, err := c.Get(ctx, srv.URL+"/flaky", 64); err != nil || string(b) != "pointer" || calls.Load() != 2 {
		t.Errorf("flaky: %q, %v after %d calls; want the second answer", b, err, calls.Load())
	}
	calls.Store(0)
	if _, err := c.Get(ctx, srv.URL+"/missing", 64); err == nil || !strings.Contains(err.Error(), "404 Not Found") || calls.Load() != 1 {
		t.Errorf("404: %v after %d calls; want no retry", err, calls.Load())
	}
	if _, err := c.Get(ctx, srv.URL+"/big", 64); err == nil || !strings.Contains(err.Error(), "more than the 64 allowed") && !strings.Contains(err.Error(), "100 bytes, more than") {
		t.Errorf("big: %v", err)
	}
	calls.Store(0)
	if _, err := c.Get(ctx, srv.URL+"/down", 64); err == nil || !strings.Contains(err.Error(), "GET "+srv.URL+"/down: gave up after 3 attempts") || calls.Load() != 3 {
		t.Errorf("down: %v after %d calls", err, calls.Load())
	}
	if _, err := c.Get(ctx, srv.URL+"/stall", 64); err == nil || !strings.Contains(err.Error(), "no data for 200ms") {
		t.Errorf("stall: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Get(cctx, srv.URL+"/flaky", 64); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestRange(t *testing.T) {
	blob := []byte("0123456789abcdef")
	const d = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	var mode atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != update.BlobsPathPrefix+d {
			http.NotFound(w, r)
			return
		}
		switch mode.Load() {
		case "long":
			w.Header().Set("Content-Range", "bytes 4-7/16")
			w.WriteHeader(http.StatusPartialContent)
			w.(http.Flusher).Flush() // chunked: no Content-Length
			w.Write(blob[4:10])
			return
		case "length":
			w.Header().Set("Content-Range", "bytes 4-7/16")
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[4:9])
			return
		case "total":
			w.Header().Set("Content-Range", "bytes 4-7/17")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[4:8])
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(blob)))
	}))
	defer srv.Close()
	c := client(srv.URL)
	b := update.Blob{Digest: d, Size: 16}
	read := func() (string, error) {
		rc, err := c.Range(context.Background(), b, 4, 4)
		if err != nil {
			return "", err
		}
		defer rc.Close()
		got, err := io.ReadAll(rc)
		return string(got), err
	}
	mode.Store("")
	if got, err := read(); err != nil || got != "4567" {
		t.Errorf("range: %q, %v", got, err)
	}
	for _, c := range []struct{ mode, want string }{
		{"long", "more bytes than the range"},
		{"length", "Content-Length 5, want 4"},
		{"total", `Content-Range "bytes 4-7/17", want "bytes 4-7/16"`},
	} {
		mode.Store(c.mode)
		if got, err := read(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q, %v; want an error containing %q", c.mode, got, err, c.want)
		}
	}
	if _, err := c.Range(context.Background(), b, 12, 8); err == nil || !strings.Contains(err.Error(), "outside the blob's 16 bytes") {
		t.Errorf("range past the end: %v", err)
	}
	var p *Permanent
	if _, err := c.Range(context.Background(), update.Blob{Digest: "sha256:" + strings.Repeat("1", 64), Size: 16}, 0, 4); !errors.As(err, &p) {
		t.Errorf("404 is not permanent: %v", err)
	}
}

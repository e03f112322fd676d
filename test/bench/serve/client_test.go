package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// The load generator's own HTTP/1.1 client must count exactly the body bytes, in every framing a
// server may choose, and must not take a cut-short body or an error status for a success:
// otherwise the bench would report throughput nobody received.
func TestConnGet(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Header().Set("Content-Length", "3145728")
			_, _ = io.WriteString(w, big)
		case "/chunked":
			for range 3 {
				_, _ = io.WriteString(w, big[:1<<20])
				w.(http.Flusher).Flush()
			}
		case "/close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "bye")
		case "/missing":
			http.NotFound(w, r)
		case "/short":
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, "only 16 bytes..\n")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the connection is cut after 16 of 100 bytes
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	c, err := dialConn(context.Background(), addr, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range []string{"/length", "/chunked", "/length"} { // one keep-alive connection
		n, err := c.getOK(p)
		if err != nil || n != 3<<20 {
			t.Fatalf("GET %s: %d bytes, %v; want %d bytes", p, n, err, 3<<20)
		}
	}
	if _, err := c.getOK("/missing"); err == nil || !strings.Contains(err.Error(), "status 404") {
		t.Errorf("GET /missing: %v, want a status 404 error", err)
	}
	if _, err := c.getOK("/close"); err == nil || !strings.Contains(err.Error(), "closed the keep-alive connection") {
		t.Errorf("GET /close: %v, want a closed-connection error", err)
	}
	// -splice: bodies with a Content-Length go from the socket to /dev/null
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cs, err := dialConn(context.Background(), addr, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	cs.null = null
	for _, p := range []string{"/length", "/chunked", "/length"} {
		n, err := cs.getOK(p)
		if err != nil || n != 3<<20 {
			t.Fatalf("GET %s (splice): %d bytes, %v; want %d bytes", p, n, err, 3<<20)
		}
	}
	c2, err := dialConn(context.Background(), addr, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n, err := c2.getOK("/short"); !errors.Is(err, io.ErrUnexpectedEOF) || n != 16 {
		t.Errorf("GET /short: %d bytes, %v; want 16 bytes and an unexpected EOF", n, err)
	}
	c2.Close()
	c2, err = dialConn(context.Background(), addr, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	c2.null = null
	if n, err := c2.getOK("/short"); !errors.Is(err, io.ErrUnexpectedEOF) || n != 16 {
		t.Errorf("GET /short (splice): %d bytes, %v; want 16 bytes and an unexpected EOF", n, err)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {0, 1}} {
		if got := pct(ds, c.p); got != c.want {
			t.Errorf("pct(1..100 µs, %v) = %v, want %v", c.p, got, c.want)
		}
	}
}

// The memory row adds nginx's workers to its master: rssTree must find a process's children.
func TestRSSTree(t *testing.T) {
	self, n, err := rssTree(os.Getpid())
	if err != nil || self <= 0 || n != 1 {
		t.Fatalf("rssTree(self) = %d KiB, %d processes, %v; want > 0 KiB of 1 process", self, n, err)
	}
	p, err := os.StartProcess("/bin/sleep" /* any child that stays up */, []string{"sleep", "10"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Kill(); _, _ = p.Wait() }()
	withChild, n, err := rssTree(os.Getpid())
	if err != nil || n != 2 || withChild <= self/2 {
		t.Fatalf("rssTree(self with a child) = %d KiB, %d processes, %v; want 2 processes", withChild, n, err)
	}
}

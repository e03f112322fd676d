package fetch

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/limits"
)

// endless writes data until the client goes away; it reports how much it sent.
func endless(sent chan<- int64) func(w http.ResponseWriter, r *http.Request, n int) {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		buf := make([]byte, 32<<10)
		var total int64
		defer func() { sent <- total }()
		for r.Context().Err() == nil {
			m, err := w.Write(buf)
			total += int64(m)
			if err != nil {
				return
			}
		}
	}
}

func TestEndlessBodyStopsAtLimit(t *testing.T) {
	for _, pinned := range []bool{true, false} {
		t.Run(map[bool]string{true: "pinned", false: "unpinned"}[pinned], func(t *testing.T) {
			sent := make(chan int64, 4)
			srv, rec := serve(t, endless(sent))
			ca := newCache(t)
			c := fastClient()
			c.Limits.MaxSourceSize = 1 << 20
			var want digest.Digest
			if pinned {
				want = digest.FromString("never")
			}
			_, err := c.Fetch(context.Background(), ca, srv.URL+"/endless", want)
			if !errors.Is(err, limits.ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			for _, s := range []string{srv.URL + "/endless", "1.0 MiB (1048576 bytes)"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
			if n := len(rec.list()); n != 1 {
				t.Errorf("%d requests: a body over the limit must not be retried", n)
			}
			assertEmpty(t, ca)
		})
	}
}

func TestDeclaredLengthOverLimitFailsBeforeWriting(t *testing.T) {
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Length", "2147483648")
		w.WriteHeader(http.StatusOK)
		w.Write(make([]byte, 64<<10))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ca := newCache(t)
	c := fastClient()
	c.Limits.MaxSourceSize = 1 << 20
	var written int64
	c.Progress = func(p Progress) { written = max(written, p.Complete) }
	_, err := c.Fetch(context.Background(), ca, srv.URL+"/big", digest.FromString("big"))
	if !errors.Is(err, limits.ErrTooLarge) || !strings.Contains(err.Error(), "2.0 GiB (2147483648 bytes)") {
		t.Fatalf("err = %v, want ErrTooLarge naming the declared 2 GiB", err)
	}
	if written != 0 {
		t.Errorf("%d bytes written before refusing", written)
	}
	if n := len(rec.list()); n != 1 {
		t.Errorf("%d requests", n)
	}
	assertEmpty(t, ca)
}

func TestResumeOverLimitDropsPartial(t *testing.T) {
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Range", "bytes 100-1999999/2000000")
		w.Header().Set("Content-Length", "1999900")
		w.WriteHeader(http.StatusPartialContent)
	})
	ca := newCache(t)
	want := digest.FromString("resume")
	if err := os.WriteFile(ca.PartialPath(want), make([]byte, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	c := fastClient()
	c.Limits.MaxSourceSize = 1 << 20
	_, err := c.Fetch(context.Background(), ca, srv.URL+"/r", want)
	if !errors.Is(err, limits.ErrTooLarge) {
		t.Fatalf("err = %v", err)
	}
	assertEmpty(t, ca)
}

func TestDripTooSlowFails(t *testing.T) {
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Length", "1000000")
		w.WriteHeader(http.StatusOK)
		for {
			if _, err := w.Write([]byte{'x'}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	ca := newCache(t)
	c := fastClient()
	c.Attempts = 2
	c.StallTimeout = time.Minute // the drip never stalls: only the rate catches it
	c.Limits.MinTransferRate = 1 << 10
	c.Limits.RateWindow = 200 * time.Millisecond
	start := time.Now()
	_, err := c.Fetch(context.Background(), ca, srv.URL+"/drip", digest.FromString("drip"))
	el := time.Since(start)
	if !errors.Is(err, limits.ErrTooSlow) || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrTooSlow and ErrUnreachable", err)
	}
	for _, s := range []string{srv.URL + "/drip", "B/s", "minimum 1.0KiB/s"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	t.Logf("after %v: %v", el, err)
	if el > 3*time.Second {
		t.Errorf("took %v with a 200ms window", el)
	}
	if n := len(rec.list()); n != 2 {
		t.Errorf("%d requests, want 2 attempts", n)
	}
}

func TestGetDripTooSlowFails(t *testing.T) {
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		for {
			if _, err := w.Write([]byte{'x'}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	c := fastClient()
	c.Attempts = 1
	c.Limits.MinTransferRate = 1 << 10
	c.Limits.RateWindow = 100 * time.Millisecond
	_, err := c.Get(context.Background(), srv.URL+"/index")
	if !errors.Is(err, limits.ErrTooSlow) {
		t.Fatalf("err = %v, want ErrTooSlow", err)
	}
}

func TestFastTransferPassesRateCheck(t *testing.T) {
	data := blob(256 << 10)
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Length", "262144")
		for i := 0; i < len(data); i += 32 << 10 {
			w.Write(data[i : i+32<<10])
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
	})
	c := fastClient()
	c.Attempts = 1
	c.Limits.MinTransferRate = 1 << 10
	c.Limits.RateWindow = 50 * time.Millisecond
	ca := newCache(t)
	d, err := c.Fetch(context.Background(), ca, srv.URL+"/ok", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
}

func TestFileURLOverLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(p, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ca := newCache(t)
	c := fastClient()
	c.Limits.MaxSourceSize = 1 << 20
	_, err := c.Fetch(context.Background(), ca, "file://"+p, "")
	if !errors.Is(err, limits.ErrTooLarge) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v", err)
	}
	assertEmpty(t, ca)
}

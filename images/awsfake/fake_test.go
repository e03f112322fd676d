package awsfake

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

func TestServerDispatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "upstream:"+r.URL.Path+":"+string(b))
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	s := &Server{Upstream: u}
	var seen []string
	s.Use(HandlerFunc(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		seen = append(seen, "first:"+string(body))
		if !strings.HasPrefix(r.URL.Path, "/snapshots") {
			return false
		}
		io.WriteString(w, "fake")
		return true
	}))
	base, err := s.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	post := func(path, body string) (int, string) {
		resp, err := http.Post(base+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, got := post("/snapshots/x", "a"); code != 200 || got != "fake" {
		t.Errorf("handled: %d %q", code, got)
	}
	if code, got := post("/", "Action=DescribeImages"); code != 200 || got != "upstream:/:Action=DescribeImages" {
		t.Errorf("passed on: %d %q", code, got)
	}
	if len(seen) != 2 || seen[1] != "first:Action=DescribeImages" {
		t.Errorf("handler saw %q", seen)
	}
	if code, _ := post("/", string(bytes.Repeat([]byte("x"), maxBody+1))); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", code)
	}
	bare := &Server{}
	if base, err = bare.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if code, _ := post("/other", ""); code != http.StatusNotImplemented {
		t.Errorf("no upstream: %d", code)
	}
}

// A block's body is read into one buffer of its declared length, not grown from 512 bytes by
// io.ReadAll (which allocated and cleared about 2.5 times each 512 KiB block: a fifth of the
// CPU of make bench's AMI upload went there, measured as the uploader's).
func TestServerReadsBodyOnce(t *testing.T) {
	s := &Server{}
	var got int
	s.Use(HandlerFunc(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		got += len(body)
		return true
	}))
	block := bytes.Repeat([]byte{7}, 512<<10)
	const n = 16
	testenv.MaxAlloc(t, n*640<<10, "serving 16 bodies of 512 KiB", func() {
		for range n {
			r := httptest.NewRequest(http.MethodPut, "/snapshots/snap-1/blocks/0", bytes.NewReader(block))
			s.ServeHTTP(httptest.NewRecorder(), r)
		}
	})
	if got != n*len(block) {
		t.Fatalf("the handler saw %d bytes, want %d", got, n*len(block))
	}
	// the declared length is only a hint: a body longer than it says is still read whole
	r := httptest.NewRequest(http.MethodPut, "/x", bytes.NewReader(block))
	r.ContentLength = 10
	got = 0
	s.ServeHTTP(httptest.NewRecorder(), r)
	if got != len(block) {
		t.Fatalf("a body over its Content-Length: the handler saw %d bytes, want %d", got, len(block))
	}
}

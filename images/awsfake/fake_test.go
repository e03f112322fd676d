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

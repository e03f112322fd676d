package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

func TestKubeletHealthz(t *testing.T) {
	failing := "[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n"
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string // "" = healthy
	}{
		{"ok", 200, "ok", ""},
		{"ok with newline", 200, "ok\n", ""},
		{"failing check", 500, failing, `500 Internal Server Error: "[+]ping ok\n[+]log ok\n[-]syncloop failed`},
		{"200 but not ok", 200, "not ok", `200 OK: "not ok"`},
		{"200 empty", 200, "", `200 OK: ""`},
		{"ok but 503", 503, "ok", `503 Service Unavailable: "ok"`},
		{"long body cut", 500, strings.Repeat("x", 10000), `"` + strings.Repeat("x", maxHealthzBody) + `…"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet || r.URL.Path != "/healthz" {
					t.Errorf("request %s %s", r.Method, r.URL.Path)
				}
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			err := KubeletHealthz(context.Background(), srv.URL+"/healthz")
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("err = %v; want healthy", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v; want an error containing %q", err, tc.want)
			case tc.want != "" && len(err.Error()) > 2*maxHealthzBody+100:
				t.Errorf("error of %d bytes: the body is not cut", len(err.Error()))
			}
		})
	}
}

func TestKubeletHealthzDoesNotFollowRedirects(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			w.Write([]byte("ok"))
			return
		}
		http.Redirect(w, r, "/ok", http.StatusFound)
	}))
	defer srv.Close()
	if err := KubeletHealthz(context.Background(), srv.URL+"/ok"); err != nil {
		t.Fatalf("control: %v", err)
	}
	if err := KubeletHealthz(context.Background(), srv.URL+"/healthz"); err == nil || !strings.Contains(err.Error(), "302") {
		t.Errorf("err = %v; want the 302 reported", err)
	}
}

func TestKubeletHealthzTimeoutAndDown(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := KubeletHealthz(ctx, srv.URL+"/healthz")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("hanging kubelet: err = %v after %v; want DeadlineExceeded after 100ms", err, time.Since(start))
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := KubeletHealthz(context.Background(), "http://"+addr+"/healthz"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("kubelet down: err = %v; want connection refused", err)
	}
	if err := KubeletHealthz(context.Background(), "::not a url"); err == nil {
		t.Error("bad URL: no error")
	}
}

// TestKubeletHealthzDefaultURL serves healthz on the kubelet's port if it is free here.
func TestKubeletHealthzDefaultURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:10248")
	if err != nil {
		testenv.Missing(t, "port 10248 is taken (a kubelet here?): %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Write([]byte("ok"))
		} else {
			http.NotFound(w, r)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := KubeletHealthz(context.Background(), ""); err != nil {
		t.Errorf("default URL: %v", err)
	}
}

// Package awsfake is an in-process AWS endpoint for tests and benchmarks, for what the real
// peer (moto_server, see StartMoto) lacks: EBS direct APIs that check every block's checksum,
// length and the aggregate, and fault injection (throttling, 5xx, dropped connections, a copy
// stuck pending, a snapshot in error). Requests no handler takes are passed to an upstream
// (moto), so one endpoint URL serves a whole test.
package awsfake

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// Handler serves the requests it recognizes and reports whether it did. body is the request's
// whole body (also left readable in r.Body).
type Handler interface {
	ServeAWS(w http.ResponseWriter, r *http.Request, body []byte) bool
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(w http.ResponseWriter, r *http.Request, body []byte) bool

// ServeAWS implements Handler.
func (f HandlerFunc) ServeAWS(w http.ResponseWriter, r *http.Request, body []byte) bool {
	return f(w, r, body)
}

// maxBody bounds a request body the fake reads (an EBS block is 512 KiB).
const maxBody = 8 << 20

// Server dispatches each request to the first handler that takes it, else to Upstream.
type Server struct {
	// Upstream receives what no handler takes (nil: 501 Not Implemented).
	Upstream *url.URL

	mu       sync.Mutex
	handlers []Handler
	srv      *http.Server
	url      string
}

// Use appends handlers; earlier ones are asked first. Safe while serving.
func (s *Server) Use(h ...Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers = append(s.handlers, h...)
}

// Start listens on 127.0.0.1 and serves until Close or ctx ends. It returns the endpoint URL.
func (s *Server) Start(ctx context.Context) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	s.url = "http://" + l.Addr().String()
	go s.srv.Serve(l)
	context.AfterFunc(ctx, func() { s.srv.Close() })
	return s.url, nil
}

// URL is the endpoint Start returned.
func (s *Server) URL() string { return s.url }

// Close stops serving and drops open connections.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("request body over %d bytes", maxBody), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	hs := append([]Handler(nil), s.handlers...)
	s.mu.Unlock()
	for _, h := range hs {
		r.Body = io.NopCloser(bytes.NewReader(body))
		if h.ServeAWS(w, r, body) {
			return
		}
	}
	if s.Upstream == nil {
		http.Error(w, "awsfake: no handler for "+r.Method+" "+r.URL.Path, http.StatusNotImplemented)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	proxy := httputil.NewSingleHostReverseProxy(s.Upstream)
	proxy.ErrorLog = nil
	proxy.ServeHTTP(w, r)
}

// readBody reads r's whole body, at most maxBody bytes, into a buffer of its declared length
// (io.ReadAll would grow one from 512 bytes, allocating and clearing about 2.5 times each
// 512 KiB block).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	var b bytes.Buffer
	if n := r.ContentLength; n > 0 {
		b.Grow(int(min(n, maxBody) + bytes.MinRead))
	}
	_, err := b.ReadFrom(http.MaxBytesReader(w, r.Body, maxBody))
	return b.Bytes(), err
}

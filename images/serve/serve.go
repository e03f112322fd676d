// Package serve is imgctl serve: the HTTP server that netboots a bare-metal fleet from an image
// store. It serves a static iPXE chain script, each node's own iPXE script for the image its
// channel points to at request time, the image blobs by digest (sendfile, ranges, immutable
// caching), each node's NodeConfig (secrets only with the node's per-boot credential), and
// takes the nodes' boot reports. The only state is in the store directory, so replicas on one
// store answer alike. cmd/imgctl wires flags to it; nothing here prints or exits.
package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgctl/imgctl/images/store"
)

// Defaults of Options.
const (
	DefaultMaxConns          = 4096
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 90 * time.Second
	DefaultShutdownTimeout   = 15 * time.Second
	// DefaultMinBlobRate is the slowest a blob download may go (bytes/s) before the server
	// gives up on it: a blob's write deadline is WriteTimeout + size / MinBlobRate.
	DefaultMinBlobRate = 1 << 20
	// DefaultRefresh is how long the server trusts what it read from the store (the reachable
	// blobs, a channel's head) before it looks again: a promotion reaches the next boot within
	// it.
	DefaultRefresh = time.Second
)

// Options configure a Server. Store is required.
type Options struct {
	Store *store.Store
	// TLS, if set, serves TLS on the same listener as plain HTTP (told apart by the first byte
	// of each connection).
	TLS *tls.Config
	// MaxConns caps the connections open at once; more wait in the kernel's accept queue.
	MaxConns int
	// ReadHeaderTimeout bounds reading a request's headers (slowloris), ReadTimeout the whole
	// request with its body, WriteTimeout a response (a blob gets more: see MinBlobRate),
	// IdleTimeout a keep-alive connection between requests, ShutdownTimeout the wait for
	// requests in flight when the context of Serve ends.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout, ShutdownTimeout time.Duration
	MinBlobRate                                                                int64
	// Refresh bounds how stale the server's view of the store may be (DefaultRefresh).
	Refresh time.Duration
	// Registry gets the server's metrics; nil: a new registry with the Go runtime collectors.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	Now      func() time.Time
}

// Server serves one store. Its handlers are safe for concurrent use.
type Server struct {
	o   Options
	st  *store.Store
	log *slog.Logger
	m   *metrics
	cat *catalogs
}

// New checks o and returns a server.
func New(o Options) (*Server, error) {
	if o.Store == nil {
		return nil, errors.New("serve: no store")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&o.ReadTimeout, DefaultReadTimeout)
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.IdleTimeout, DefaultIdleTimeout)
	def(&o.ShutdownTimeout, DefaultShutdownTimeout)
	def(&o.Refresh, DefaultRefresh)
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MinBlobRate <= 0 {
		o.MinBlobRate = DefaultMinBlobRate
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		registerRuntime(o.Registry)
	}
	s := &Server{o: o, st: o.Store, log: o.Logger, m: newMetrics(o.Registry)}
	s.cat = newCatalogs(s)
	if _, err := s.cat.get(context.Background(), true); err != nil {
		return nil, err
	}
	return s, nil
}

// Handler is the server's HTTP handler: every route, instrumented.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern, name string, h http.HandlerFunc) { mux.Handle(pattern, s.instrument(name, h)) }
	route("GET /healthz", "healthz", s.healthz)
	mux.Handle("GET /metrics", s.instrument("metrics", s.m.handler()))
	route("GET /blobs/{digest}", "blobs", s.blob)
	route("/", "other", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	return mux
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if _, err := s.cat.get(r.Context(), false); err != nil {
		http.Error(w, "store unreadable (see the server's log)", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// Serve answers connections from ln until ctx ends, then shuts down gracefully: it stops
// accepting, lets requests in flight finish for up to ShutdownTimeout, then closes what is
// left. It returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	l := newListener(ln, s.tlsConfig(), s.o.MaxConns, s.o.ReadHeaderTimeout, s.log, s.m.connections.Add)
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.o.ReadHeaderTimeout,
		ReadTimeout:       s.o.ReadTimeout,
		WriteTimeout:      s.o.WriteTimeout,
		IdleTimeout:       s.o.IdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	scheme := "http"
	if s.o.TLS != nil {
		scheme = "http and https"
	}
	s.log.Info("serving", "addr", ln.Addr().String(), "scheme", scheme, "store", s.st.Dir())
	select {
	case err := <-errc:
		_ = l.Close()
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "timeout", s.o.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.o.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		s.log.Warn("requests still running at the shutdown timeout: closing their connections", "timeout", s.o.ShutdownTimeout)
		_ = srv.Close()
	}
	<-errc
	return nil
}

// tlsConfig is o.TLS for HTTP/1.1 (the node agent and curl speak it; no HTTP/2 on this path).
func (s *Server) tlsConfig() *tls.Config {
	if s.o.TLS == nil {
		return nil
	}
	c := s.o.TLS.Clone()
	c.NextProtos = []string{"http/1.1"}
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

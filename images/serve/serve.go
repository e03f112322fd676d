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
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgctl/imgctl/images/bootauth"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/rollout"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/update"
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

// Options configure a Server. Store, Channels, Inventory, Auth and Reports are required.
type Options struct {
	Store    *store.Store
	Channels channel.Backend
	// Inventory returns the current inventory (an inventory.Watcher's Current).
	Inventory func() *inventory.Inventory
	// Auth issues and checks the nodes' per-boot credentials.
	Auth *bootauth.Authority
	// Reports keeps the nodes' boot reports.
	Reports *rollout.Reports
	// AdvertiseURL is the base URL nodes reach this server at (http://HOST:PORT[/PATH]);
	// empty: the scheme and Host of each request.
	AdvertiseURL string
	// InsecureSecrets allows credentials and secrets over plain HTTP (without TLS, node
	// scripts then carry imgctl.metadata-insecure). Without it and without TLS, node scripts
	// carry no credential and nodes get their public config only.
	InsecureSecrets bool
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
	o         Options
	st        *store.Store
	log       *slog.Logger
	m         *metrics
	cat       *catalogs
	heads     *heads
	scripts   scriptCache
	advertise *url.URL // parsed AdvertiseURL, nil if none
	pin       string   // imgctl.metadata-pin of the TLS certificate
	// credentials: node scripts carry a boot credential (TLS, or InsecureSecrets).
	credentials bool
}

// New checks o and returns a server.
func New(o Options) (*Server, error) {
	switch {
	case o.Store == nil:
		return nil, errors.New("serve: no store")
	case o.Channels == nil:
		return nil, errors.New("serve: no channels")
	case o.Inventory == nil:
		return nil, errors.New("serve: no inventory")
	case o.Auth == nil:
		return nil, errors.New("serve: no boot credential authority")
	case o.Reports == nil:
		return nil, errors.New("serve: no boot reports")
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
	s.heads = &heads{s: s}
	if o.AdvertiseURL != "" {
		u, err := url.Parse(o.AdvertiseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !validHost(u.Host) || u.User != nil ||
			u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(u.Path, "${} \t\n") {
			return nil, fmt.Errorf("advertise URL %q: expected http(s)://HOST[:PORT][/PATH] with no user, query or fragment", o.AdvertiseURL)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		s.advertise = u
	}
	if o.TLS != nil {
		if len(o.TLS.Certificates) != 1 {
			return nil, fmt.Errorf("serve: TLS needs exactly one certificate (nodes pin it), got %d", len(o.TLS.Certificates))
		}
		pin, err := CertificatePin(o.TLS.Certificates[0])
		if err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
		s.pin = pin
	}
	s.credentials = o.TLS != nil || o.InsecureSecrets
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
	route("GET "+BlobsPath+"{digest}", "blobs", s.blob)
	route("GET "+ChainScriptPath, "boot.ipxe", s.chainScript)
	route("GET "+NodeScriptPath, "ipxe", s.nodeScript)
	route("GET "+nodeapi.NodeConfigPath, "nodeconfig", s.nodeConfig)
	route("POST "+nodeapi.ReportPath, "reports", s.report)
	route("GET "+update.ChannelPathPrefix+"{channel}", "channels", s.channelPointer)
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

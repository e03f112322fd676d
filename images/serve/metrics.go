package serve

import (
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus metrics (namespace imgctl_serve).
type metrics struct {
	reg          *prometheus.Registry
	requests     *prometheus.CounterVec   // route, code
	bytes        *prometheus.CounterVec   // route
	latency      *prometheus.HistogramVec // route
	connections  prometheus.Gauge
	boots        *prometheus.CounterVec // channel: node scripts served
	bootFailures *prometheus.CounterVec // channel: scripts refused (error script) and failed boot reports
	reports      *prometheus.CounterVec // channel, phase, ok
	reloadErrors prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) *metrics {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "imgctl_serve", Name: "requests_total",
			Help: "HTTP requests by route and status code."}, []string{"route", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "imgctl_serve", Name: "response_bytes_total",
			Help: "Response body bytes sent, by route."}, []string{"route"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "imgctl_serve", Name: "request_duration_seconds",
			Help:    "Time to answer a request (a blob: until its last byte was written), by route.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 1, 5, 30, 120}}, []string{"route"}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "imgctl_serve", Name: "open_connections",
			Help: "Connections accepted and not yet closed."}),
		boots: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "imgctl_serve", Name: "boots_total",
			Help: "Node boot scripts served, by channel (\"\" for a pinned image)."}, []string{"channel"}),
		bootFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "imgctl_serve", Name: "boot_failures_total",
			Help: "Boots that failed, by channel: error scripts served and failed boot reports."}, []string{"channel"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "imgctl_serve", Name: "boot_reports_total",
			Help: "Boot reports received, by channel, phase and outcome."}, []string{"channel", "phase", "ok"}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "imgctl_serve", Name: "inventory_reload_errors_total",
			Help: "Inventory reloads that failed (the previous inventory stays in use)."}),
	}
	f(m.requests)
	f(m.bytes)
	f(m.latency)
	f(m.connections)
	f(m.boots)
	f(m.bootFailures)
	f(m.reports)
	f(m.reloadErrors)
	return m
}

// registerRuntime adds the Go runtime and process collectors (a registry of our own has none).
func registerRuntime(reg *prometheus.Registry) {
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// instrument wraps h, the handler of one route, with metrics and a request log line (debug
// level: at thousands of boots a second, a line per request is for debugging). The line has
// the method, the path without its query (the query carries no secret, but keep lines
// short), status, bytes and duration: never a header, so never a credential.
func (s *Server) instrument(route string, h http.Handler) http.Handler {
	requests := map[int]prometheus.Counter{}
	for _, code := range []int{200, 206, 304, 400, 401, 403, 404, 405, 409, 413, 416, 500, 503} {
		requests[code] = s.m.requests.WithLabelValues(route, strconv.Itoa(code))
	}
	bytes := s.m.bytes.WithLabelValues(route)
	latency := s.m.latency.WithLabelValues(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		d := time.Since(start)
		if c, ok := requests[code]; ok {
			c.Inc()
		} else {
			s.m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		}
		bytes.Add(float64(sw.n))
		latency.Observe(d.Seconds())
		if s.log.Enabled(r.Context(), slog.LevelDebug) {
			s.log.LogAttrs(r.Context(), slog.LevelDebug, "request", slog.String("route", route), slog.String("method", r.Method),
				slog.String("path", r.URL.Path), slog.String("remote", r.RemoteAddr), slog.Int("status", code),
				slog.Int64("bytes", sw.n), slog.Duration("duration", d))
		}
	})
}

// statusWriter records the status and body bytes; it keeps ReadFrom (sendfile) and Unwrap
// (http.ResponseController) working.
type statusWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(writerOnly{w.ResponseWriter}, r)
	}
	w.n += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// InventoryReloadFailed counts a failed inventory reload (imgctl_serve_inventory_reload_errors_total).
func (s *Server) InventoryReloadFailed() { s.m.reloadErrors.Inc() }

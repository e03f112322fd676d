package serve

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/store/storetest"
)

// selfSigned is a certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgctl-serve-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestTLSAndPlainHTTPOnOnePort(t *testing.T) {
	st := storetest.Open(t)
	cert := selfSigned(t)
	s, _ := newTestServer(t, st, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 500 * time.Millisecond})
	base := start(t, s)
	addr := strings.TrimPrefix(base, "http://")

	if resp, body := get(t, "GET", base+"/healthz"); resp.StatusCode != 200 || body != "ok\n" || resp.TLS != nil {
		t.Fatalf("plain: %s %q", resp.Status, body)
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" || resp.TLS == nil {
		t.Fatalf("tls: %s %q", resp.Status, body)
	}
	c.CloseIdleConnections()

	// A client that connects and sends nothing holds its slot only until the first-byte deadline.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = silent.Close() }()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Error("the server sent something to a silent client")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("silent client kept for %v", d)
	}
}

// A client that sends its headers slowly (slowloris) is cut off at ReadHeaderTimeout.
func TestSlowHeadersAreCutOff(t *testing.T) {
	st := storetest.Open(t)
	s, _ := newTestServer(t, st, Options{ReadHeaderTimeout: 300 * time.Millisecond})
	base := start(t, s)
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	begin := time.Now()
	closed := false
	for time.Since(begin) < 5*time.Second {
		if _, err := io.WriteString(c, "X"); err != nil {
			closed = true
			break
		}
		if err := c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1024)); err != nil && !isTimeout(err) {
			closed = true
			break
		}
	}
	if !closed {
		t.Fatal("a client trickling its headers was not cut off in 5s")
	}
	if d := time.Since(begin); d < 250*time.Millisecond {
		t.Errorf("cut off after %v, before ReadHeaderTimeout", d)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// MaxConns caps connections: the next one waits until one closes.
func TestMaxConns(t *testing.T) {
	st := storetest.Open(t)
	s, _ := newTestServer(t, st, Options{MaxConns: 2})
	base := start(t, s)
	addr := strings.TrimPrefix(base, "http://")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// Make sure both are accepted (each answers a request).
	for _, c := range held {
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 512)); err != nil {
			t.Fatal(err)
		}
	}
	third, err := net.Dial("tcp", addr) // the kernel queues it
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = third.Close() }()
	if _, err := io.WriteString(third, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = third.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := third.Read(make([]byte, 512)); err == nil {
		t.Fatal("a third connection was served with MaxConns 2")
	}
	_ = held[0].Close()
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := third.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "200 OK") {
		t.Fatalf("third connection after one closed: %q %v", buf[:n], err)
	}
	_ = held[1].Close()
}

// The context's end shuts the server down: a request in flight finishes, Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 32<<20, "")
	s, _ := newTestServer(t, st, Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/blobs/" + string(img.Root))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	n, err := io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil || n != 32<<20 {
		t.Errorf("request in flight at shutdown: %d bytes, %v", n, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("still accepting after shutdown")
	}
}

func TestMetricsAndRequestLog(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	s, logs := newTestServer(t, st, Options{})
	base := start(t, s)
	get(t, "GET", base+"/blobs/"+string(img.Kernel), "Authorization", "Bearer sekrit-token-value")
	get(t, "GET", base+"/nope?credential=sekrit-query")
	_, body := get(t, "GET", base+"/metrics")
	for _, want := range []string{
		`imgctl_serve_requests_total{code="200",route="blobs"} 1`,
		`imgctl_serve_requests_total{code="404",route="other"} 1`,
		`imgctl_serve_response_bytes_total{route="blobs"} ` + strconv.Itoa(len(img.KernelBytes)),
		`imgctl_serve_request_duration_seconds_bucket{route="blobs",le="+Inf"} 1`,
		`imgctl_serve_open_connections`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	l := logs.String()
	if !strings.Contains(l, "msg=request route=blobs method=GET path=/blobs/"+string(img.Kernel)) {
		t.Errorf("no request log line:\n%s", l)
	}
	if strings.Contains(l, "sekrit") {
		t.Errorf("the log shows a credential:\n%s", l)
	}
}

// conn and statusWriter keep ReadFrom, so that http.ServeContent on a file reaches the TCP
// connection's ReadFrom (sendfile).
func TestReadFromReachesTheConnection(t *testing.T) {
	inner := &readFromConn{}
	c := &conn{Conn: inner, release: func() {}}
	if _, err := c.ReadFrom(strings.NewReader("abc")); err != nil || !inner.called {
		t.Errorf("conn.ReadFrom did not reach the inner connection's ReadFrom (%v)", err)
	}
	rw := &readFromWriter{}
	sw := &statusWriter{ResponseWriter: rw}
	if n, err := sw.ReadFrom(strings.NewReader("abcd")); err != nil || n != 4 || !rw.called || sw.n != 4 || sw.code != 200 {
		t.Errorf("statusWriter.ReadFrom: n=%d called=%v counted=%d code=%d", n, rw.called, sw.n, sw.code)
	}
}

type readFromConn struct {
	net.Conn
	called bool
}

func (c *readFromConn) ReadFrom(r io.Reader) (int64, error) {
	c.called = true
	return io.Copy(io.Discard, r)
}

type readFromWriter struct {
	http.ResponseWriter
	called bool
}

func (w *readFromWriter) ReadFrom(r io.Reader) (int64, error) {
	w.called = true
	return io.Copy(io.Discard, r)
}

// A client that stops reading a blob is cut off once the blob's write deadline passes
// (WriteTimeout + size/MinBlobRate), so it cannot hold a connection forever.
func TestSlowBlobReaderIsCutOff(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 64<<20, "")
	s, _ := newTestServer(t, st, Options{WriteTimeout: 300 * time.Millisecond, MinBlobRate: 1 << 40})
	base := start(t, s)
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	if _, err := io.WriteString(c, "GET /blobs/"+string(img.Root)+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// The client reads nothing: the server gives up at the deadline and frees the connection.
	deadline := time.Now().Add(5 * time.Second)
	for gaugeValue(t, s) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the server still holds the connection of a client that stopped reading: no write deadline")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

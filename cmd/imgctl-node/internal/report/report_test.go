package report

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/nodeapi"
)

const cred = "s3cret-cred"

var digest = "sha256:" + strings.Repeat("ab", 32)

// server is a metadata server's report endpoint: it checks each report as imgctl serve does.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	bodies   [][]byte
	reports  []*nodeapi.Report
	answer   func(n int) int // status of the nth request (1-based); nil: 204
}

func newServer(t *testing.T, tls bool) *server {
	s := &server{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, nodeapi.MaxReportBytes+1))
		s.mu.Lock()
		s.requests = append(s.requests, r)
		s.bodies = append(s.bodies, body)
		n := len(s.requests)
		s.mu.Unlock()
		if r.Method != http.MethodPost || r.URL.Path != "/boot"+nodeapi.ReportPath {
			http.NotFound(w, r)
			return
		}
		if nodeapi.CredentialFromHeader(r.Header.Get(nodeapi.AuthorizationHeader)) != cred {
			http.Error(w, "bad credential", http.StatusUnauthorized)
			return
		}
		rep, err := nodeapi.ParseReport(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.reports = append(s.reports, rep)
		s.mu.Unlock()
		if s.answer != nil {
			if code := s.answer(n); code != http.StatusNoContent {
				http.Error(w, "try later", code)
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	if tls {
		s.Server = httptest.NewTLSServer(h)
	} else {
		s.Server = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

func (s *server) cmdline() string {
	return "console=ttyS0 imgctl.metadata=" + s.URL + "/boot imgctl.credential=" + cred + " imgctl.metadata-insecure=1"
}

var fast = Options{Attempts: 3, Timeout: time.Second, Backoff: time.Millisecond, Budget: 5 * time.Second}

// logTo is Options with a logger writing to buf.
func logTo(o Options, buf *bytes.Buffer) Options {
	o.Logger = slog.New(slog.NewTextHandler(buf, nil))
	return o
}

func steps() []steplog.Record {
	return []steplog.Record{
		{Name: "cmdline", Status: steplog.OK, Latency: 2 * time.Millisecond},
		{Name: "dhcp", Status: steplog.OK, Latency: 1500 * time.Millisecond},
		{Name: "fetch-root", Status: steplog.Fail, Latency: 3 * time.Second,
			Err: `Get "https://user:pw@10.0.0.1/blobs/x?t=tok3n": ` + cred + " refused\nsecond line\x1b[2J"},
	}
}

// TestSendPosts: the report reaches URL + nodeapi.ReportPath as POST with the bearer credential
// and a JSON body the server's strict parser accepts, without the credential or URL secrets.
func TestSendPosts(t *testing.T) {
	srv := newServer(t, false)
	var logs bytes.Buffer
	s := FromCmdline(srv.cmdline(), logTo(fast, &logs))
	r := s.Build(nodeapi.PhaseInit, steps(), errors.New("fetch-root failed"), digest, "")
	if err := s.Send(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if srv.count() != 1 || len(srv.reports) != 1 {
		t.Fatalf("server saw %d requests, %d reports; want 1", srv.count(), len(srv.reports))
	}
	req, got := srv.requests[0], srv.reports[0]
	if ct := req.Header.Get("Content-Type"); ct != nodeapi.ReportMediaType {
		t.Errorf("Content-Type = %q", ct)
	}
	if got.Phase != nodeapi.PhaseInit || got.OK || got.Failed != "fetch-root" || got.RootDigest != digest || len(got.Steps) != 3 {
		t.Errorf("report = %+v", got)
	}
	if e := got.Steps[2].Error; e != `Get "https://10.0.0.1/blobs/x?REDACTED": REDACTED refused second line [2J` {
		t.Errorf("step error = %q", e)
	}
	if got.Steps[1] != (nodeapi.Step{Name: "dhcp", Status: "ok", Millis: 1500}) {
		t.Errorf("step = %+v", got.Steps[1])
	}
	for _, sec := range []string{cred, "tok3n", "user:pw"} {
		if bytes.Contains(srv.bodies[0], []byte(sec)) || strings.Contains(logs.String(), sec) {
			t.Errorf("the body or the log shows %q", sec)
		}
	}
	if !strings.Contains(logs.String(), `msg="boot report sent" phase=init ok=false url=`+srv.URL+`/boot/v1/reports attempts=1`) {
		t.Errorf("log = %s", logs.String())
	}

	// configure: ok, with the role.
	r = s.Build(nodeapi.PhaseConfigure, steps()[:2], nil, digest, "node")
	if err := s.Send(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if got := srv.reports[1]; got.Phase != nodeapi.PhaseConfigure || !got.OK || got.Failed != "" || got.Role != "node" {
		t.Errorf("report = %+v", got)
	}
}

// TestNotConfigured: without a metadata URL and a credential no report is made or sent.
func TestNotConfigured(t *testing.T) {
	srv := newServer(t, false)
	for _, line := range []string{
		"console=ttyS0",
		"imgctl.metadata=" + srv.URL + "/boot",
		"imgctl.credential=" + cred,
	} {
		s := FromCmdline(line, fast)
		if s != nil {
			t.Errorf("%s: got a sender", line)
		}
		if err := s.Send(context.Background(), s.Build(nodeapi.PhaseInit, steps(), nil, "", "")); err != nil {
			t.Errorf("%s: nil sender: %v", line, err)
		}
	}
	if srv.count() != 0 {
		t.Fatalf("server saw %d requests", srv.count())
	}
}

// TestSendBounded: a server that never answers costs at most Budget, whatever Attempts and
// Timeout allow; and the defaults never hold a boot longer than about 10 s.
func TestSendBounded(t *testing.T) {
	var n atomic.Int32
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = io.Copy(io.Discard, r.Body) // the server notices a closed connection only after the body
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	defer hang.Close()
	defer close(stop)
	line := "imgctl.metadata=" + hang.URL + " imgctl.credential=" + cred + " imgctl.metadata-insecure=1"
	for _, tc := range []struct {
		name      string
		o         Options
		max       time.Duration
		wantTries int32
	}{
		{"timeouts", Options{Attempts: 3, Timeout: 200 * time.Millisecond, Backoff: 10 * time.Millisecond, Budget: 5 * time.Second}, 1500 * time.Millisecond, 3},
		{"budget", Options{Attempts: 3, Timeout: 5 * time.Second, Backoff: 10 * time.Millisecond, Budget: 400 * time.Millisecond}, 1200 * time.Millisecond, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.Store(0)
			var logs bytes.Buffer
			s := FromCmdline(line, logTo(tc.o, &logs))
			start := time.Now()
			err := s.Send(context.Background(), s.Build(nodeapi.PhaseInit, steps()[:1], nil, "", ""))
			if el := time.Since(start); err == nil || el > tc.max {
				t.Fatalf("Send = %v after %s, want an error within %s", err, el, tc.max)
			}
			if n.Load() != tc.wantTries {
				t.Errorf("%d attempts, want %d", n.Load(), tc.wantTries)
			}
			if lines := strings.Count(logs.String(), "\n"); lines != 1 || !strings.Contains(logs.String(), `level=WARN msg="boot report not sent"`) {
				t.Errorf("log (%d lines) = %s", lines, logs.String())
			}
		})
	}
	d := Options{}.withDefaults()
	if worst := min(d.Budget, time.Duration(d.Attempts)*d.Timeout+3*d.Backoff*2); worst > 10*time.Second {
		t.Errorf("the defaults allow %s", worst)
	}
}

// TestSendRejected: a 400 (the server refused the report) is logged once and not retried; a
// 5xx is retried.
func TestSendRejected(t *testing.T) {
	srv := newServer(t, false)
	var logs bytes.Buffer
	s := FromCmdline(srv.cmdline(), logTo(fast, &logs))
	bad := s.Build(nodeapi.PhaseInit, steps(), nil, "", "")
	bad.Time = time.Time{} // the server's parser refuses it; send it past our own check
	body := `{"phase":"init","ok":true,"steps":[],"time":"0001-01-01T00:00:00Z"}`
	_, _, err := s.post(context.Background(), []byte(body))
	if err == nil || !strings.Contains(err.Error(), "400 Bad Request: report: time: required") {
		t.Fatalf("post = %v", err)
	}
	if err := s.Send(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "time: required") || srv.count() != 1 {
		t.Fatalf("Send = %v after %d requests, want our own check to refuse it", err, srv.count())
	}

	srv.answer = func(int) int { return http.StatusBadRequest }
	logs.Reset()
	err = s.Send(context.Background(), s.Build(nodeapi.PhaseInit, steps(), nil, "", ""))
	if err == nil || !strings.Contains(err.Error(), "400 Bad Request: try later") || srv.count() != 2 {
		t.Fatalf("Send = %v after %d requests, want one 400", err, srv.count())
	}
	if !strings.Contains(logs.String(), `level=WARN msg="boot report not sent" phase=init url=`+srv.URL+`/boot/v1/reports attempts=1`) {
		t.Errorf("log = %s", logs.String())
	}

	srv.answer = func(n int) int {
		if n < 5 {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	}
	if err := s.Send(context.Background(), s.Build(nodeapi.PhaseInit, steps(), nil, "", "")); err != nil || srv.count() != 5 {
		t.Fatalf("Send = %v after %d requests, want success at the third attempt", err, srv.count())
	}
}

// TestSendPinned: reports follow imgctl.metadata-pin like the NodeConfig fetch.
func TestSendPinned(t *testing.T) {
	srv := newServer(t, true)
	sum := sha256.Sum256(srv.Certificate().Raw)
	base := "imgctl.metadata=" + srv.URL + "/boot imgctl.credential=" + cred + " imgctl.metadata-pin="
	s := FromCmdline(base+"sha256:"+hex.EncodeToString(sum[:]), fast)
	if err := s.Send(context.Background(), s.Build(nodeapi.PhaseConfigure, steps()[:1], nil, "", "node")); err != nil || srv.count() != 1 {
		t.Fatalf("Send = %v after %d requests", err, srv.count())
	}
	s = FromCmdline(base+digest, fast)
	err := s.Send(context.Background(), s.Build(nodeapi.PhaseConfigure, steps()[:1], nil, "", "node"))
	if err == nil || !strings.Contains(err.Error(), "does not match imgctl.metadata-pin") || srv.count() != 1 {
		t.Fatalf("Send = %v after %d requests, want a pin mismatch, not retried", err, srv.count())
	}
	// Plain http for the credential needs the opt-in, for reports too.
	plain := newServer(t, false)
	s = FromCmdline("imgctl.metadata="+plain.URL+"/boot imgctl.credential="+cred, fast)
	if err := s.Send(context.Background(), s.Build(nodeapi.PhaseInit, steps()[:1], nil, "", "")); err == nil ||
		!strings.Contains(err.Error(), "refusing to send the node credential over plain http") || plain.count() != 0 {
		t.Fatalf("Send = %v after %d requests", err, plain.count())
	}
}

// TestBuild: the newest nodeapi.MaxSteps steps, errors clipped to the server's limit, Failed the
// last failed step, and always a report the server accepts.
func TestBuild(t *testing.T) {
	var many []steplog.Record
	for i := 0; i < 100; i++ {
		many = append(many, steplog.Record{Name: "module", Status: steplog.Fail, Err: strings.Repeat("é", 400)})
	}
	many = append(many, steplog.Record{Name: "Mount Root", Status: steplog.Fail, Err: "x"})
	var s *Sender
	r := s.Build(nodeapi.PhaseInit, many, errors.New("boom"), "", "")
	if len(r.Steps) != nodeapi.MaxSteps || r.Failed != "mount-root" || len(r.Steps[0].Error) > 512 {
		t.Fatalf("%d steps, failed %q, error %d bytes", len(r.Steps), r.Failed, len(r.Steps[0].Error))
	}
	b, err := reportJSON(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodeapi.ParseReport(b); err != nil {
		t.Fatal(err)
	}
	if r := s.Build(nodeapi.PhaseConfigure, nil, errors.New("boom"), "", ""); r.Failed != "configure" || r.Validate() != nil {
		t.Errorf("no steps: %+v, %v", r, r.Validate())
	}
}

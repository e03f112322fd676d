// Package report sends the node's boot reports to the imgctl metadata server: POST
// URL + nodeapi.ReportPath with the node credential, under the same rules as the NodeConfig
// fetch (https, or plain http only with imgctl.metadata-insecure; imgctl.metadata-pin; no proxy;
// no redirects). A report is a courtesy to whoever watches the rollout: sending it is bounded
// (Budget), never fails the boot, and a failure is one log line.
package report

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/metadata"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/redact"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/layers/backoff"
)

// Defaults for Options: at most 3 attempts of 3 s with about 0.5 s and 1 s between them, and
// never more than Budget in all.
const (
	DefaultAttempts = 3
	DefaultTimeout  = 3 * time.Second
	DefaultBackoff  = 500 * time.Millisecond
	DefaultBudget   = 10 * time.Second
)

// maxError bounds a step's error text in a report (nodeapi's limit).
const maxError = 512

// Options bound Send. Zero fields take the defaults above.
type Options struct {
	Attempts int
	Timeout  time.Duration // per attempt
	Backoff  time.Duration // before the second attempt; doubles, ±50% jitter
	Budget   time.Duration // the whole Send, waits included
	Logger   *slog.Logger  // nil: discard
	Now      func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.Budget <= 0 {
		o.Budget = DefaultBudget
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Sender posts reports to one metadata server.
type Sender struct {
	target  *metadata.Imgctl
	o       Options
	secrets []string // besides the credential, never sent (Redact)
}

// Redact adds secrets (a NodeConfig's keys and tokens) that Build removes from step errors,
// besides the node credential.
func (s *Sender) Redact(secrets ...string) {
	if s != nil {
		s.secrets = append(s.secrets, secrets...)
	}
}

// FromCmdline returns a Sender for the metadata server on a kernel command line
// (imgctl.metadata=, imgctl.credential=, imgctl.metadata-insecure, imgctl.metadata-pin=), or
// nil when it has no server URL or no credential: the server takes reports from known boots only.
func FromCmdline(line string, o Options) *Sender {
	t := metadata.ImgctlFromCmdline(line)
	if t.URL == "" || t.Credential == "" {
		return nil
	}
	return &Sender{target: t, o: o.withDefaults()}
}

// New returns a Sender for target (tests; FromCmdline on a node).
func New(target *metadata.Imgctl, o Options) *Sender {
	return &Sender{target: target, o: o.withDefaults()}
}

// Build makes the report of a phase from the steps finished so far: ok unless failed is not nil,
// then Failed names the last failed step. Step errors lose URLs' secrets, the node credential
// and control characters, and are clipped to nodeapi's limit; at most nodeapi.MaxSteps steps
// (the newest) are kept.
func (s *Sender) Build(phase nodeapi.Phase, steps []steplog.Record, failed error, rootDigest, role string) nodeapi.Report {
	r := nodeapi.Report{Phase: phase, OK: failed == nil, RootDigest: rootDigest, Role: role, Time: s.opts().Now().UTC()}
	if len(steps) > nodeapi.MaxSteps {
		steps = steps[len(steps)-nodeapi.MaxSteps:]
	}
	var secrets []string
	if s != nil {
		secrets = append([]string{s.target.Credential}, s.secrets...)
	}
	r.Steps = make([]nodeapi.Step, 0, len(steps))
	for _, st := range steps {
		name := stepName(st.Name)
		r.Steps = append(r.Steps, nodeapi.Step{
			Name: name, Status: st.Status, Millis: st.Latency.Milliseconds(), Error: clip(redact.Text(st.Err, secrets...), maxError),
		})
		if failed != nil && st.Status == steplog.Fail {
			r.Failed = name
		}
	}
	if failed != nil && r.Failed == "" {
		r.Failed = string(phase) // failed before any step line
	}
	return r
}

func (s *Sender) opts() Options {
	if s == nil {
		return Options{}.withDefaults()
	}
	return s.o
}

var notStepChar = regexp.MustCompile(`[^a-z0-9-]+`)

// stepName makes a step line's name a valid report step name (they are already).
func stepName(n string) string {
	n = strings.Trim(notStepChar.ReplaceAllString(strings.ToLower(n), "-"), "-")
	if n == "" {
		n = "step"
	}
	return clip(n, 64)
}

// clip cuts s to at most n bytes at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isRuneStart(b byte) bool { return b&0xc0 != 0x80 }

// Send posts r, retrying a refused connection, a timeout or a 5xx answer, within Budget. A 4xx
// answer, a redirect, a pin mismatch or a credential refused for plain http end it at once. It
// logs one line (Info when sent, Warn when not) and returns the error, which the caller only
// needs for tests: a report never fails the boot. A nil Sender sends nothing.
func (s *Sender) Send(ctx context.Context, r nodeapi.Report) error {
	if s == nil {
		return nil
	}
	o := s.o
	start := o.Now()
	body, err := reportJSON(r)
	if err != nil {
		o.Logger.Warn("boot report not sent", "phase", string(r.Phase), "err", err)
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.Budget)
	defer cancel()
	var u string
	attempt := 0
	for {
		attempt++
		var retry bool
		u, retry, err = s.post(ctx, body)
		if err == nil {
			o.Logger.Info("boot report sent", "phase", string(r.Phase), "ok", r.OK, "url", u, "attempts", attempt)
			return nil
		}
		if !retry || attempt >= o.Attempts || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(backoff.Delay(o.Backoff, o.Budget, attempt))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
	}
	o.Logger.Warn("boot report not sent", "phase", string(r.Phase), "url", u, "attempts", attempt,
		"elapsed", o.Now().Sub(start).Round(time.Millisecond).String(), "err", err)
	return err
}

// post is one attempt; retry says whether another may help.
func (s *Sender) post(ctx context.Context, body []byte) (string, bool, error) {
	actx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	resp, u, err := s.target.Do(actx, http.MethodPost, nodeapi.ReportPath, body, nodeapi.ReportMediaType)
	if err != nil {
		return u, !metadata.IsPermanent(err), err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return u, false, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return u, true, fmt.Errorf("%s: %s", u, resp.Status)
	}
	why := clip(strings.TrimSpace(redact.Text(string(msg), s.target.Credential)), 200)
	if why != "" {
		why = ": " + why
	}
	return u, false, fmt.Errorf("%s: %s%s", u, resp.Status, why)
}

// reportJSON encodes r after checking it as the server will.
func reportJSON(r nodeapi.Report) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) > nodeapi.MaxReportBytes {
		return nil, fmt.Errorf("report is %d bytes (the server takes at most %d)", len(b), nodeapi.MaxReportBytes)
	}
	return b, nil
}

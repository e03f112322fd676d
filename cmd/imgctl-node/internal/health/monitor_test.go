package health

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

var errDown = errors.New("down")

// scripted drives a Monitor in a synctest bubble: Check returns the scripted results in order,
// recording the (fake) time of each check, and cancels Run's ctx once the script is used up.
type scripted struct {
	results  []error
	checks   []time.Time
	restarts []time.Time
	start    time.Time
	cancel   context.CancelFunc
	log      bytes.Buffer
}

func (s *scripted) check(ctx context.Context) error {
	s.checks = append(s.checks, time.Now())
	if len(s.checks) > len(s.results) {
		s.cancel()
		<-ctx.Done()
		return ctx.Err()
	}
	return s.results[len(s.checks)-1]
}

func (s *scripted) restart(ctx context.Context) error {
	s.restarts = append(s.restarts, time.Now())
	return nil
}

// run runs m (Check and Logger set to s's) until the script ends; it must end with ctx.Err().
func (s *scripted) run(t *testing.T, m *Monitor) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.cancel = cancel
	s.start = time.Now()
	m.Check = s.check
	m.Logger = slog.New(slog.NewTextHandler(&s.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := m.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v; want context.Canceled", err)
	}
}

// at returns the check times as offsets from the start.
func (s *scripted) at() []time.Duration {
	var d []time.Duration
	for _, c := range s.checks {
		d = append(d, c.Sub(s.start))
	}
	return d
}

// gaps returns the waits between consecutive checks.
func (s *scripted) gaps() []time.Duration {
	var d []time.Duration
	for i := 1; i < len(s.checks); i++ {
		d = append(d, s.checks[i].Sub(s.checks[i-1]))
	}
	return d
}

func (s *scripted) count(msg string) int { return strings.Count(s.log.String(), "msg="+msg+" ") }

func equal(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMonitorThresholdRestartsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{results: []error{nil, errDown, errDown, errDown, nil, nil}}
		s.run(t, &Monitor{Name: "kubelet", Restart: s.restart, Grace: time.Minute, Interval: 10 * time.Second,
			Timeout: 5 * time.Second, Threshold: 3, RestartDelay: time.Minute, MaxBackoff: 10 * time.Minute})
		if len(s.restarts) != 1 {
			t.Fatalf("%d restarts; want 1", len(s.restarts))
		}
		// Grace, then every 10 s; the restart after the 3rd consecutive failure, then RestartDelay.
		s10 := 10 * time.Second
		want := []time.Duration{time.Minute, time.Minute + s10, time.Minute + 2*s10, time.Minute + 3*s10,
			2*time.Minute + 3*s10, 2*time.Minute + 4*s10, 2*time.Minute + 5*s10}
		if got := s.at(); !equal(got, want) {
			t.Errorf("checks at %v; want %v", got, want)
		}
		if got := s.restarts[0].Sub(s.start); got != time.Minute+3*s10 {
			t.Errorf("restart at %v; want right after the third failure", got)
		}
		for msg, n := range map[string]int{"healthy": 1, "unhealthy": 1, `"check failed"`: 2, "restarting": 1, "restarted": 1, "recovered": 1} {
			if got := s.count(msg); got != n {
				t.Errorf("%d lines %s; want %d. Log:\n%s", got, msg, n, s.log.String())
			}
		}
		if !strings.Contains(s.log.String(), "monitor=kubelet") || !strings.Contains(s.log.String(), "err=down") {
			t.Errorf("log lacks monitor=kubelet or err=down:\n%s", s.log.String())
		}
	})
}

func TestMonitorFailureCountResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A success resets the count: fail, fail, ok, fail, fail, ok never reaches 3 in a row.
		// A restart resets it too: 3 failures restart, then 2 more do not.
		s := &scripted{results: []error{errDown, errDown, nil, errDown, errDown, nil, errDown, errDown, errDown, errDown, errDown, nil}}
		s.run(t, &Monitor{Restart: s.restart, Interval: time.Second, Timeout: time.Second, Threshold: 3})
		if len(s.restarts) != 1 {
			t.Errorf("%d restarts; want 1 (after the 9th check)", len(s.restarts))
		}
		if len(s.restarts) > 0 && s.restarts[0] != s.checks[8] {
			t.Errorf("restart at %v; want right after the 9th check at %v", s.restarts[0], s.checks[8])
		}
		if n := s.count("recovered"); n != 3 {
			t.Errorf("%d recovered lines; want 3:\n%s", n, s.log.String())
		}
	})
}

func TestMonitorBackoffGrowsCappedAndResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{results: []error{errDown, errDown, errDown, errDown, errDown, errDown, nil, errDown, nil}}
		s.run(t, &Monitor{Restart: s.restart, Interval: 100 * time.Millisecond, Timeout: time.Second, Threshold: 1,
			RestartDelay: time.Second, MaxBackoff: 5 * time.Second})
		ms := time.Millisecond
		want := []time.Duration{1000 * ms, 2000 * ms, 4000 * ms, 5000 * ms, 5000 * ms, 5000 * ms, // after restarts 1..6
			100 * ms,  // healthy: Interval
			1000 * ms, // restart after a success: back to RestartDelay
			100 * ms}
		if got := s.gaps(); !equal(got, want) {
			t.Errorf("waits %v; want %v", got, want)
		}
		if len(s.restarts) != 7 {
			t.Errorf("%d restarts; want 7", len(s.restarts))
		}
	})
}

func TestMonitorBackoff(t *testing.T) {
	for _, tc := range []struct {
		m    Monitor
		want []time.Duration
	}{
		{Monitor{Interval: time.Second, RestartDelay: 3 * time.Second, MaxBackoff: 20 * time.Second},
			[]time.Duration{3, 6, 12, 20, 20}},
		{Monitor{Interval: 2 * time.Second}, []time.Duration{2, 2, 2}},                             // no RestartDelay, no MaxBackoff
		{Monitor{Interval: time.Second, MaxBackoff: 4 * time.Second}, []time.Duration{1, 2, 4, 4}}, // from Interval
		{Monitor{Interval: time.Second, RestartDelay: 9 * time.Second, MaxBackoff: 5 * time.Second}, []time.Duration{5, 5}},
	} {
		for i, w := range tc.want {
			if got := tc.m.backoff(i + 1); got != w*time.Second {
				t.Errorf("%+v: backoff(%d) = %v; want %v", tc.m, i+1, got, w*time.Second)
			}
		}
	}
	m := Monitor{Interval: time.Second, MaxBackoff: time.Hour}
	if got := m.backoff(1000); got != time.Hour {
		t.Errorf("backoff(1000) = %v; want the cap (no overflow)", got)
	}
}

func TestMonitorRestartErrorIsCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{results: []error{errDown, errDown, errDown}}
		calls := 0
		m := &Monitor{Interval: time.Second, Timeout: time.Second, Threshold: 1, MaxBackoff: time.Minute,
			Restart: func(ctx context.Context) error { calls++; return errors.New("Job for kubelet.service failed") }}
		s.run(t, m)
		if calls != 3 {
			t.Errorf("%d restart calls; want 3", calls)
		}
		if got, want := s.gaps(), []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}; !equal(got, want) {
			t.Errorf("waits %v; want %v (failed restarts grow the backoff)", got, want)
		}
		if n := s.count(`"restart failed"`); n != 3 || !strings.Contains(s.log.String(), "Job for kubelet.service failed") {
			t.Errorf("%d restart failed lines; want 3:\n%s", n, s.log.String())
		}
	})
}

func TestMonitorWithoutRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{results: []error{errDown, errDown, errDown, errDown}}
		s.run(t, &Monitor{Interval: time.Second, Timeout: time.Second, Threshold: 2, RestartDelay: time.Minute})
		if got, want := s.gaps(), []time.Duration{time.Second, time.Minute, time.Second, time.Minute}; !equal(got, want) {
			t.Errorf("waits %v; want %v", got, want)
		}
		if n := s.count(`"threshold reached, restart disabled"`); n != 2 {
			t.Errorf("%d restart disabled lines; want 2:\n%s", n, s.log.String())
		}
	})
}

func TestMonitorCheckTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var errs []error
		var took []time.Duration
		m := &Monitor{Interval: time.Second, Timeout: 3 * time.Second, Threshold: 5,
			Check: func(ctx context.Context) error {
				start := time.Now()
				<-ctx.Done() // a wedged component
				took = append(took, time.Since(start))
				errs = append(errs, ctx.Err())
				if len(errs) == 2 {
					cancel()
				}
				return ctx.Err()
			}}
		if err := m.Run(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		if len(errs) != 2 || !errors.Is(errs[0], context.DeadlineExceeded) || took[0] != 3*time.Second {
			t.Errorf("checks ended with %v after %v; want DeadlineExceeded after the 3s Timeout", errs, took)
		}
	})
}

func TestMonitorReturnsPromptlyOnCancel(t *testing.T) {
	block := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	for name, m := range map[string]*Monitor{
		"in grace":    {Grace: time.Hour, Interval: time.Hour, Timeout: time.Hour, Threshold: 1, Check: func(context.Context) error { return nil }},
		"in interval": {Interval: time.Hour, Timeout: time.Hour, Threshold: 1, Check: func(context.Context) error { return nil }},
		"in check":    {Interval: time.Hour, Timeout: time.Hour, Threshold: 1, Check: block},
		"in restart":  {Interval: time.Hour, Timeout: time.Hour, Threshold: 1, Check: func(context.Context) error { return errDown }, Restart: block},
		"in backoff": {Interval: time.Hour, Timeout: time.Hour, Threshold: 1, Check: func(context.Context) error { return errDown },
			Restart: func(context.Context) error { return nil }},
	} {
		t.Run(name, func(t *testing.T) {
			var log syncBuffer
			m.Logger = slog.New(slog.NewTextHandler(&log, nil))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			time.Sleep(50 * time.Millisecond)
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run = %v; want context.Canceled", err)
				}
			case <-time.After(time.Second):
				t.Fatal("Run did not return within 1s of cancel")
			}
			if name == "in check" && strings.Contains(log.String(), "unhealthy") {
				t.Errorf("a check cut short by the shutdown was logged as a failure:\n%s", log.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in different goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMonitorInvalid(t *testing.T) {
	ok := func(context.Context) error { return nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for name, m := range map[string]*Monitor{
		"no check":     {Interval: time.Second, Timeout: time.Second, Threshold: 1},
		"no interval":  {Check: ok, Timeout: time.Second, Threshold: 1},
		"no timeout":   {Check: ok, Interval: time.Second, Threshold: 1},
		"no threshold": {Check: ok, Interval: time.Second, Timeout: time.Second},
	} {
		if err := m.Run(ctx); err == nil || errors.Is(err, context.Canceled) {
			t.Errorf("%s: Run = %v; want a configuration error", name, err)
		}
	}
}

func TestDefaultMonitors(t *testing.T) {
	k := KubeletMonitor(nil, nil)
	if k.Name != "kubelet" || k.Grace != 2*time.Minute || k.Interval != 10*time.Second || k.Timeout != 10*time.Second ||
		k.Threshold != 3 || k.validate() != nil {
		t.Errorf("KubeletMonitor = %+v", k)
	}
	// The runtime monitor's Check is CRIVersion on the socket.
	f := startFakeRuntime(t, map[string]reply{v1Method: {msg: encodeVersionResponse(containerd16)}})
	r := RuntimeMonitor(f.socket, nil, nil)
	if r.Name != "container-runtime" || r.validate() != nil {
		t.Errorf("RuntimeMonitor = %+v", r)
	}
	if err := r.Check(context.Background()); err != nil {
		t.Errorf("runtime check against a healthy fake: %v", err)
	}
	f.setReplies(map[string]reply{v1Method: {code: 14, message: "not ready", trailersOnly: true}})
	if err := r.Check(context.Background()); !IsCode(err, 14) {
		t.Errorf("runtime check against an unavailable fake: %v", err)
	}
}

// TestRuntimeMonitorRestartsFakeRuntime runs the whole loop in real time against the fake CRI
// server: Unavailable until the monitor restarts it, then healthy.
func TestRuntimeMonitorRestartsFakeRuntime(t *testing.T) {
	f := startFakeRuntime(t, map[string]reply{v1Method: {code: 14, message: "starting", trailersOnly: true}})
	var log syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := RuntimeMonitor(f.socket, func(context.Context) error {
		f.setReplies(map[string]reply{v1Method: {msg: encodeVersionResponse(containerd16)}})
		return nil
	}, slog.New(slog.NewTextHandler(&log, nil)))
	m.Grace, m.Interval, m.Timeout, m.Threshold, m.RestartDelay = 0, 10*time.Millisecond, time.Second, 2, 20*time.Millisecond
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	for !strings.Contains(log.String(), "msg=recovered") && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v; want Canceled (recovered not seen within 5s?)\n%s", err, log.String())
	}
	out := log.String()
	for _, want := range []string{"msg=unhealthy", "code = Unavailable desc = starting", "msg=restarting", "msg=recovered", "restarts=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

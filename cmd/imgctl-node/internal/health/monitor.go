// Package health keeps the kubelet and the container runtime alive on a node: the checks (the
// kubelet's healthz, the runtime's CRI Version over gRPC), a monitor loop that restarts a unit
// after repeated failures with backoff, and the systemctl restart it uses. It is the logic of
// kubelet-monitor.service and kube-container-runtime-monitor.service, modeled on GKE's
// cluster/gce/gci/health-monitor.sh, and uses the standard library only.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Monitor checks a component periodically and restarts it when it stays unhealthy.
//
// Run waits Grace, then checks every Interval (measured from the end of one check to the start of
// the next), each check bounded by Timeout. After Threshold consecutive failures it calls Restart
// and waits a backoff before checking again: RestartDelay after the first restart, doubling with
// each further restart up to MaxBackoff, back to RestartDelay after a successful check. The
// failure count starts again from zero after each restart.
//
// It logs state changes only: the first result (healthy or unhealthy), each failed check while
// unhealthy (at most Threshold between restarts), each restart and its outcome, and recovery.
type Monitor struct {
	Name string // component name, logged as monitor=NAME

	// Check returns nil when the component is healthy. It must return when its ctx ends.
	Check func(ctx context.Context) error
	// Restart restarts the component; nil only logs that the threshold was reached. It must
	// return when its ctx ends. An error is logged and the restart still counts for the backoff.
	Restart func(ctx context.Context) error

	Grace     time.Duration // wait before the first check (the component starting up)
	Interval  time.Duration // wait between checks; > 0
	Timeout   time.Duration // bound on one check; > 0
	Threshold int           // consecutive failures that trigger a restart; ≥ 1

	RestartTimeout time.Duration // bound on one Restart call; 0: none beyond Run's ctx
	RestartDelay   time.Duration // wait after the first restart; 0: Interval
	MaxBackoff     time.Duration // cap of the doubling wait after restarts; 0: no doubling

	Logger *slog.Logger // nil: discard
}

// Defaults of KubeletMonitor. GKE waits 120 s, then curls healthz every 10 s with a 10 s timeout,
// kills the kubelet at the first failure and waits 60 s. We restart after 3 consecutive failures
// (one slow answer from a loaded node should not cost a kubelet restart; 3 bound the outage
// before a restart to about a minute) and double the wait after repeated restarts.
const (
	KubeletGrace          = 2 * time.Minute
	KubeletInterval       = 10 * time.Second
	KubeletTimeout        = 10 * time.Second
	KubeletThreshold      = 3
	KubeletRestartDelay   = time.Minute
	KubeletMaxBackoff     = 10 * time.Minute
	KubeletRestartTimeout = 4 * time.Minute // systemd's default TimeoutStopSec + TimeoutStartSec (90 s each), plus margin
)

// Defaults of RuntimeMonitor. GKE tries `crictl pods` up to 5 times with 2, 4, 8, 16 s pauses
// (about 30 s) before it starts monitoring, then checks every 10 s with a 60 s timeout, kills the
// runtime's main process at the first failure and waits 120 s. Version is a cheaper call than
// ListPodSandbox, so 20 s without an answer already means a wedged runtime; 3 consecutive
// failures trigger the restart.
const (
	RuntimeGrace          = 30 * time.Second
	RuntimeInterval       = 10 * time.Second
	RuntimeTimeout        = 20 * time.Second
	RuntimeThreshold      = 3
	RuntimeRestartDelay   = 2 * time.Minute
	RuntimeMaxBackoff     = 10 * time.Minute
	RuntimeRestartTimeout = 4 * time.Minute
)

// KubeletMonitor returns a Monitor of the kubelet's healthz (DefaultKubeletHealthzURL) with the
// Kubelet* defaults. restart is typically SystemctlRestart("kubelet.service").
func KubeletMonitor(restart func(context.Context) error, log *slog.Logger) *Monitor {
	return &Monitor{
		Name:           "kubelet",
		Check:          func(ctx context.Context) error { return KubeletHealthz(ctx, DefaultKubeletHealthzURL) },
		Restart:        restart,
		Grace:          KubeletGrace,
		Interval:       KubeletInterval,
		Timeout:        KubeletTimeout,
		Threshold:      KubeletThreshold,
		RestartTimeout: KubeletRestartTimeout,
		RestartDelay:   KubeletRestartDelay,
		MaxBackoff:     KubeletMaxBackoff,
		Logger:         log,
	}
}

// RuntimeMonitor returns a Monitor of the container runtime's CRI Version at socket
// (DefaultCRISocket if empty) with the Runtime* defaults. restart is typically
// SystemctlRestart("containerd.service").
func RuntimeMonitor(socket string, restart func(context.Context) error, log *slog.Logger) *Monitor {
	if socket == "" {
		socket = DefaultCRISocket
	}
	return &Monitor{
		Name: "container-runtime",
		Check: func(ctx context.Context) error {
			_, err := CRIVersion(ctx, socket)
			return err
		},
		Restart:        restart,
		Grace:          RuntimeGrace,
		Interval:       RuntimeInterval,
		Timeout:        RuntimeTimeout,
		Threshold:      RuntimeThreshold,
		RestartTimeout: RuntimeRestartTimeout,
		RestartDelay:   RuntimeRestartDelay,
		MaxBackoff:     RuntimeMaxBackoff,
		Logger:         log,
	}
}

func (m *Monitor) validate() error {
	switch {
	case m.Check == nil:
		return errors.New("no check function")
	case m.Interval <= 0:
		return fmt.Errorf("interval %v is not positive", m.Interval)
	case m.Timeout <= 0:
		return fmt.Errorf("timeout %v is not positive", m.Timeout)
	case m.Threshold < 1:
		return fmt.Errorf("threshold %d is below 1", m.Threshold)
	}
	return nil
}

type state int

const (
	unknown state = iota
	healthy
	unhealthy
)

// Run monitors until ctx ends and then returns ctx.Err(). It returns earlier only for an invalid
// Monitor (no Check, Interval, Timeout or Threshold not positive), before checking anything.
// Check and Restart errors are logged, never returned.
func (m *Monitor) Run(ctx context.Context) error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("monitor %s: %w", m.Name, err)
	}
	log := m.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("monitor", m.Name)
	log.Info("monitor started", "grace", m.Grace, "interval", m.Interval, "timeout", m.Timeout,
		"threshold", m.Threshold, "restart", m.Restart != nil)
	if err := sleep(ctx, m.Grace); err != nil {
		return err
	}

	var (
		st        = unknown
		failures  int // consecutive failed checks since the last success or restart
		restarts  int // restarts since the last successful check
		total     int // restarts since Run started
		downSince time.Time
	)
	for {
		err := m.check(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := m.Interval
		if err == nil {
			switch st {
			case unknown:
				log.Info("healthy")
			case unhealthy:
				log.Info("recovered", "down", time.Since(downSince).Round(time.Millisecond), "restarts", restarts)
			}
			st, failures, restarts = healthy, 0, 0
		} else {
			failures++
			msg := "check failed"
			if st != unhealthy {
				st, downSince, msg = unhealthy, time.Now(), "unhealthy"
			}
			log.Warn(msg, "err", err, "failures", failures, "threshold", m.Threshold)
			if failures >= m.Threshold {
				failures = 0
				restarts++
				wait = m.backoff(restarts)
				if m.Restart == nil {
					log.Warn("threshold reached, restart disabled", "next_check", wait)
				} else {
					total++
					log.Warn("restarting", "restart", restarts, "restarts_total", total)
					start := time.Now()
					rerr := m.restart(ctx)
					if ctx.Err() != nil {
						return ctx.Err()
					}
					took := time.Since(start).Round(time.Millisecond)
					if rerr != nil {
						log.Error("restart failed", "err", rerr, "took", took, "next_check", wait)
					} else {
						log.Info("restarted", "took", took, "next_check", wait)
					}
				}
			}
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// check runs one Check bounded by Timeout.
func (m *Monitor) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.Timeout)
	defer cancel()
	return m.Check(ctx)
}

// restart runs Restart bounded by RestartTimeout.
func (m *Monitor) restart(ctx context.Context) error {
	if m.RestartTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.RestartTimeout)
		defer cancel()
	}
	return m.Restart(ctx)
}

// backoff is the wait after the n-th restart (n ≥ 1) since the last successful check.
func (m *Monitor) backoff(n int) time.Duration {
	d := m.RestartDelay
	if d <= 0 {
		d = m.Interval
	}
	for i := 1; i < n && d < m.MaxBackoff; i++ {
		d *= 2
	}
	if m.MaxBackoff > 0 && d > m.MaxBackoff {
		d = m.MaxBackoff
	}
	return d
}

// sleep waits d or until ctx ends, and then returns ctx.Err().
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

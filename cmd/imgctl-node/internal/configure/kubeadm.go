package configure

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/redact"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
	"github.com/imgctl/imgctl/images/nodeconfig"
)

// Defaults for the kubeadm step's retries (Options.KubeadmBackoff, FollowerRetryFor,
// KubeadmAttemptTimeout). A join's discovery is bounded by render.DiscoveryTimeout.
const (
	// NodeJoinAttempts bounds kubeadm join of a node with a bootstrap token: a wrong token or an
	// unreachable API server fails the unit after this many attempts, never a crash loop. Nodes
	// that boot with their master wait for its kubeadm init: five attempts (2 min of discovery
	// each, 15 s to 2 min between them) cover ~14 min; three (~7 min) ran out once under TCG,
	// where a master took 9.5 min to be Ready.
	NodeJoinAttempts = 5
	// DefaultKubeadmBackoff is the wait after the first failed join; it doubles after each
	// further one, up to MaxKubeadmBackoff.
	DefaultKubeadmBackoff = 15 * time.Second
	MaxKubeadmBackoff     = 5 * time.Minute
	// DefaultFollowerRetryFor bounds a masterFollower's retries: no attempt starts later than
	// this after the first. Long, because what fails a follower is usually fixed by an operator
	// on the master (an expired certificate key: kubeadm init phase upload-certs --upload-certs).
	DefaultFollowerRetryFor = time.Hour
	// DefaultKubeadmAttemptTimeout bounds one kubeadm init or join (kubeadm's own waits are
	// shorter: discovery, the kubelet's TLS bootstrap, the control plane's health check).
	DefaultKubeadmAttemptTimeout = 10 * time.Minute
)

// followerEtcdJoinPhase is the phase of kubeadm join --control-plane that adds this machine's
// etcd member to the cluster and waits for it. After a failure there a retry is unsafe (see
// runKubeadm), so a masterFollower stops.
const followerEtcdJoinPhase = "control-plane-join/etcd"

// followerLatePhases are the phases of kubeadm join --control-plane after this machine's etcd
// member has joined, in kubeadm's order. A failure in one (usually an API server too slow to
// answer) is resumed from there, never reset: kubeadm reset removes the etcd member through the
// API server, and when that does not answer it only deletes the local etcd, leaving a two-member
// cluster without quorum.
var followerLatePhases = []string{"control-plane-join/update-status", "control-plane-join/mark-control-plane"}

// kubeadmPhaseRE finds the failed phase in kubeadm's error ("error execution phase
// control-plane-prepare/download-certs: …", from its phase runner).
var kubeadmPhaseRE = regexp.MustCompile(`^error execution phase ([^:\s]+):`)

// kubeadmStackHint ends kubeadm's error message on stderr.
const kubeadmStackHint = "To see the stack trace of this error"

// kubeadmTailLines bounds what is kept of kubeadm's output to explain a failure.
const (
	kubeadmTailLines = 40
	maxLineBytes     = 4096
	maxErrBytes      = 1024
)

// runKubeadm runs plan.Command: kubeadm init once for a master; join up to NodeJoinAttempts
// times for a node and for FollowerRetryFor for a masterFollower, with kubeadm reset -f and a
// growing backoff between attempts, each retry one progress line. A masterFollower that failed
// in followerEtcdJoinPhase is not reset nor retried: its etcd member may have been added, and a
// reset then deletes the local etcd the cluster's quorum waits for; one that failed in a
// followerLatePhases phase runs the phases from there again (resumeJoin), without a reset.
// kubeadm's output reaches Output through redaction of every secret. The step fails with the
// phase kubeadm named.
func (o *Options) runKubeadm(ctx context.Context, plan *render.Plan, cfg *nodeconfig.NodeConfig) error {
	s := o.Steps.Start("kubeadm")
	command := strings.Join(plan.Command[:2], " ")
	secrets := kubeadmSecrets(cfg)
	attempts, retryFor := 1, time.Duration(0)
	switch cfg.Spec.Role {
	case nodeconfig.RoleNode:
		attempts = NodeJoinAttempts
	case nodeconfig.RoleMasterFollower:
		attempts, retryFor = 0, o.FollowerRetryFor
	}
	start := time.Now()
	backoff := o.KubeadmBackoff
	resume := "" // a follower's late phase to run again, instead of reset and the whole join
	for n := 1; ; n++ {
		var phase string
		var err error
		if resume == "" {
			phase, err = o.kubeadmAttempt(ctx, plan.Command[1:], secrets)
		} else {
			phase, err = o.resumeJoin(ctx, plan, resume, secrets)
		}
		if err == nil {
			kv := []any{"command", command, "attempts", n}
			if resume != "" {
				kv = append(kv, "resumed-from", resume)
			}
			s.Done(kv...)
			return nil
		}
		follower := cfg.Spec.Role == nodeconfig.RoleMasterFollower
		if follower && phase == followerEtcdJoinPhase {
			return s.Fail(fmt.Errorf("%w; not retried: this machine's etcd member may be in the cluster already, and kubeadm reset "+
				"would delete its local etcd while the cluster waits for it (no quorum with two members); check `etcdctl member list` "+
				"on a control-plane machine and remove a member that never started before booting this machine again", err),
				"phase", phase, "command", command, "attempts", n)
		}
		if follower && slices.Contains(followerLatePhases, phase) {
			resume = phase
		}
		last := (attempts > 0 && n >= attempts) || (retryFor > 0 && time.Since(start)+backoff > retryFor) || ctx.Err() != nil
		if last {
			return s.Fail(err, "phase", phase, "command", command, "attempts", n)
		}
		if resume == "" {
			if _, rerr := o.kubeadmAttempt(ctx, []string{"reset", "-f"}, secrets); rerr != nil {
				return s.Fail(fmt.Errorf("after attempt %d failed in phase %s, kubeadm reset -f: %w", n, phase, rerr),
					"phase", "reset", "command", command, "attempts", n)
			}
			s.Progress("phase", phase, "command", command, "attempt", n, "retry-in", backoff, "err", err.Error())
		} else {
			s.Progress("phase", phase, "command", command, "attempt", n, "retry-in", backoff, "resume", resume, "err", err.Error())
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return s.Fail(fmt.Errorf("%w (while waiting to retry: %w)", err, ctx.Err()), "phase", phase, "command", command, "attempts", n)
		case <-t.C:
		}
		backoff = min(2*backoff, MaxKubeadmBackoff)
	}
}

// resumeJoin runs a follower's late phases again from phase on (kubeadm join phase
// control-plane-join update-status, then mark-control-plane), with the join's flags. On failure
// it returns the phase that failed and kubeadm's error.
func (o *Options) resumeJoin(ctx context.Context, plan *render.Plan, phase string, secrets []string) (string, error) {
	for _, p := range followerLatePhases[slices.Index(followerLatePhases, phase):] {
		args := append(append([]string{"join", "phase"}, strings.Split(p, "/")...), plan.Command[2:]...)
		if named, err := o.kubeadmAttempt(ctx, args, secrets); err != nil {
			if named == "unknown" {
				named = p
			}
			return named, err
		}
	}
	return "", nil
}

// kubeadmAttempt runs kubeadm args once, bounded by KubeadmAttemptTimeout. On failure it
// returns the phase kubeadm named ("unknown" if none) and an error carrying kubeadm's message,
// redacted and on one line.
func (o *Options) kubeadmAttempt(ctx context.Context, args []string, secrets []string) (phase string, err error) {
	ctx, cancel := context.WithTimeout(ctx, o.KubeadmAttemptTimeout)
	defer cancel()
	w := newRedactingWriter(o.Output, secrets)
	runErr := o.Kubeadm(ctx, w, args...)
	w.Flush()
	if runErr == nil {
		return "", nil
	}
	phase, msg := kubeadmError(w.Tail())
	if msg == "" {
		return phase, fmt.Errorf("kubeadm %s: %w", args[0], redactErr(runErr, secrets))
	}
	return phase, fmt.Errorf("kubeadm %s: %s (%w)", args[0], msg, redactErr(runErr, secrets))
}

// redactErr is err with every secret redacted, still wrapping err.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func redactErr(err error, secrets []string) error {
	return &redactedError{msg: redactLine(err.Error(), secrets), err: err}
}

// kubeadmError reads kubeadm's failure from the tail of its output: the failed phase and the
// message from "error execution phase …" (or, without one, the last line before kubeadm's
// stack-trace hint) up to that hint, its lines joined by " / ", bounded.
func kubeadmError(tail []string) (phase, msg string) {
	end := len(tail)
	for i := len(tail) - 1; i >= 0; i-- {
		if strings.HasPrefix(tail[i], kubeadmStackHint) {
			end = i
			break
		}
	}
	phase, begin := "unknown", -1
	for i := end - 1; i >= 0; i-- {
		if m := kubeadmPhaseRE.FindStringSubmatch(tail[i]); m != nil {
			phase, begin = m[1], i
			break
		}
	}
	if begin < 0 { // not a phase's error: its last line
		for begin = end - 1; begin >= 0 && strings.TrimSpace(tail[begin]) == ""; begin-- {
		}
		if begin < 0 {
			return phase, ""
		}
		end = begin + 1
	}
	var parts []string
	for _, l := range tail[begin:end] {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			parts = append(parts, l)
		}
	}
	msg = strings.Join(parts, " / ")
	if len(msg) > maxErrBytes {
		msg = strings.ToValidUTF8(msg[:maxErrBytes], "") + "…"
	}
	return phase, msg
}

// kubeadmSecrets lists what must never reach the console from kubeadm's output: the
// NodeConfig's credentials (a token's secret half alone too, and each line of a PEM key).
func kubeadmSecrets(cfg *nodeconfig.NodeConfig) []string {
	cr := cfg.Spec.Credentials
	if cr == nil {
		return nil
	}
	out := []string{cr.BootstrapToken, cr.CertificateKey}
	if _, secret, ok := strings.Cut(cr.BootstrapToken, "."); ok {
		out = append(out, secret)
	}
	for _, k := range []string{cr.ClientKey, cr.CAKey} {
		if k == "" {
			continue
		}
		out = append(out, k)
		if b, _ := pem.Decode([]byte(k)); b != nil {
			for l := range strings.Lines(string(pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes}))) {
				if l = strings.TrimSpace(l); len(l) >= 16 && !strings.HasPrefix(l, "-----") {
					out = append(out, l)
				}
			}
		}
	}
	return out
}

var (
	// tokenShapeRE matches any bootstrap token (kubeadm init prints one it generated itself).
	tokenShapeRE = regexp.MustCompile(`\b[a-z0-9]{6}\.[a-z0-9]{16}\b`)
	// certKeyShapeRE matches a certificate key: 64 hex digits not part of a sha256: hash
	// (kubeadm init --upload-certs prints the key on a line of its own and in the join command).
	certKeyShapeRE = regexp.MustCompile(`(^|[^:0-9a-fA-F])[0-9a-f]{64}\b`)
)

// redactLine is one line of kubeadm output as it may reach the console: secrets and anything
// shaped like a bootstrap token or certificate key replaced by REDACTED, URLs' queries and
// control characters removed (redact.Text).
func redactLine(s string, secrets []string) string {
	s = redact.Text(s, secrets...)
	s = tokenShapeRE.ReplaceAllString(s, "REDACTED")
	return certKeyShapeRE.ReplaceAllString(s, "${1}REDACTED")
}

// redactingWriter passes kubeadm's output on line by line, redacted, and keeps the last
// kubeadmTailLines lines. A line longer than maxLineBytes is cut there (a secret is far
// shorter, and the cut is never inside one).
type redactingWriter struct {
	mu      sync.Mutex
	out     io.Writer
	secrets []string
	buf     []byte
	tail    []string
}

func newRedactingWriter(out io.Writer, secrets []string) *redactingWriter {
	var s []string
	for _, x := range secrets {
		if x != "" {
			s = append(s, x)
		}
	}
	return &redactingWriter{out: out, secrets: s}
}

func (w *redactingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			if len(w.buf) <= maxLineBytes {
				return len(p), nil
			}
			i = w.cut()
			w.line(w.buf[:i])
			w.buf = append(w.buf[:0], w.buf[i:]...)
			continue
		}
		w.line(w.buf[:i])
		w.buf = append(w.buf[:0], w.buf[i+1:]...)
	}
}

// cut is where to break an overlong line: at maxLineBytes, or before a secret that straddles it.
func (w *redactingWriter) cut() int {
	at := maxLineBytes
	for _, s := range w.secrets {
		for from := 0; ; {
			j := bytes.Index(w.buf[from:], []byte(s))
			if j < 0 {
				break
			}
			j += from
			if j < at && j+len(s) > at {
				at = j
			}
			from = j + 1
		}
	}
	if at == 0 { // a secret at the very start: cut after it
		for _, s := range w.secrets {
			if bytes.HasPrefix(w.buf, []byte(s)) {
				at = max(at, len(s))
			}
		}
	}
	return at
}

func (w *redactingWriter) line(b []byte) {
	l := redactLine(strings.TrimSuffix(string(b), "\r"), w.secrets)
	_, _ = io.WriteString(w.out, l+"\n")
	if len(w.tail) == kubeadmTailLines {
		w.tail = append(w.tail[:0], w.tail[1:]...)
	}
	w.tail = append(w.tail, l)
}

// Flush writes a last line without newline.
func (w *redactingWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(w.buf)
		w.buf = w.buf[:0]
	}
}

// Tail returns the last lines written, redacted.
func (w *redactingWriter) Tail() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.tail...)
}

package nodeconfig

import (
	"fmt"
	"strconv"
	"time"
)

// etcd's own defaults and bounds for its Raft timing (etcd server's --heartbeat-interval and
// --election-timeout): the election timeout is at least five heartbeats and at most 50 s.
const (
	DefaultEtcdHeartbeatInterval = 100 * time.Millisecond
	DefaultEtcdElectionTimeout   = time.Second
	MaxEtcdElectionTimeout       = 50 * time.Second
	minEtcdHeartbeats            = 5
)

// Etcd's kubeadm extraArgs names: etcd's flags without their dashes, in milliseconds.
const (
	EtcdFlagHeartbeatInterval = "heartbeat-interval"
	EtcdFlagElectionTimeout   = "election-timeout"
)

// IsZero reports whether e leaves etcd's defaults alone.
func (e Etcd) IsZero() bool { return e.HeartbeatInterval == "" && e.ElectionTimeout == "" }

// Flags are etcd's flags for the fields set (name without dashes → milliseconds). Call it on a
// validated Etcd: a malformed field is left out.
func (e Etcd) Flags() map[string]string {
	flags := map[string]string{}
	for name, v := range map[string]string{EtcdFlagHeartbeatInterval: e.HeartbeatInterval, EtcdFlagElectionTimeout: e.ElectionTimeout} {
		if d, err := parseMillis(v); v != "" && err == nil {
			flags[name] = strconv.FormatInt(d.Milliseconds(), 10)
		}
	}
	return flags
}

// parseMillis parses a Go duration of whole milliseconds, at least 1ms.
func parseMillis(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a Go duration (expected e.g. 500ms or 5s)", s)
	case d < time.Millisecond || d%time.Millisecond != 0:
		return 0, fmt.Errorf("%s is not a whole number of milliseconds of at least 1ms (etcd counts in ms)", d)
	}
	return d, nil
}

// check reports malformed fields and an election timeout etcd would refuse, with the other
// field at etcd's default when it is unset.
func (e Etcd) check() []*FieldError {
	var probs []*FieldError
	add := func(f, format string, args ...any) {
		probs = append(probs, &FieldError{"spec.cluster.etcd." + f, fmt.Sprintf(format, args...)})
	}
	ok := true
	// parse returns the field's duration, def when it is unset.
	parse := func(field, v string, def time.Duration) time.Duration {
		if v == "" {
			return def
		}
		d, err := parseMillis(v)
		if err != nil {
			add(field, "%v", err)
			ok = false
		}
		return d
	}
	hb := parse("heartbeatInterval", e.HeartbeatInterval, DefaultEtcdHeartbeatInterval)
	el := parse("electionTimeout", e.ElectionTimeout, DefaultEtcdElectionTimeout)
	if !ok {
		return probs
	}
	if el > MaxEtcdElectionTimeout {
		add("electionTimeout", "%s is longer than etcd's maximum %s", el, MaxEtcdElectionTimeout)
	}
	switch min := minEtcdHeartbeats * hb; {
	case el >= min:
	case e.ElectionTimeout == "":
		add("heartbeatInterval", "%s needs an election timeout of at least %s (%d heartbeats), etcd's default is %s: set electionTimeout too",
			hb, min, minEtcdHeartbeats, el)
	default:
		add("electionTimeout", "%s is shorter than %d heartbeats of %s (%s): etcd refuses it", el, minEtcdHeartbeats, hb, min)
	}
	return probs
}

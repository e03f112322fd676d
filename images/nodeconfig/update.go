package nodeconfig

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/update"
)

// Update configures in-place A/B updates: imgctl-node update asks Server for Channel's current
// image every Interval, writes it into the inactive slot and reboots into it inside Window.
type Update struct {
	// Server is the base URL of imgctl serve, or of any HTTP server with the same paths
	// (/v1/channels/CHANNEL, /blobs/sha256:HEX). Required to enable updates.
	Server string `yaml:"server,omitempty" json:"server,omitempty"`
	// Channel is the channel to follow (images/channel's name grammar: a DNS-1123 label).
	Channel string `yaml:"channel,omitempty" json:"channel,omitempty"`
	// Interval between checks, a Go duration of at least MinUpdateInterval; default
	// DefaultUpdateInterval.
	Interval string `yaml:"interval,omitempty" json:"interval,omitempty"`
	// Window is the UTC reboot window HH:MM-HH:MM (it may wrap midnight); empty: any time.
	Window string `yaml:"window,omitempty" json:"window,omitempty"`
	// Enabled defaults to true when Server is set; false never updates.
	Enabled *bool `yaml:"enabled,omitempty" json:"enabled,omitempty"`
}

// Update defaults and bounds.
const (
	DefaultUpdateInterval = time.Hour
	MinUpdateInterval     = 10 * time.Second
)

// IsEnabled reports whether the node should look for updates: a server is set and updates are
// not switched off. Call Defaults first or rely on IsEnabled's own reading of the default.
func (u Update) IsEnabled() bool {
	return u.Server != "" && (u.Enabled == nil || *u.Enabled)
}

// IntervalDuration is Interval as a duration: DefaultUpdateInterval when unset or malformed
// (Validate reports a malformed one), never below MinUpdateInterval.
func (u Update) IntervalDuration() time.Duration {
	d, err := time.ParseDuration(u.Interval)
	if err != nil || u.Interval == "" {
		return DefaultUpdateInterval
	}
	return max(d, MinUpdateInterval)
}

// InWindow reports whether t (in UTC) lies in the reboot window: [start, end), wrapping past
// midnight when end < start. No window: always. A window it cannot parse: never (Validate
// rejects those; a node must not reboot on a misread one).
func (u Update) InWindow(t time.Time) bool {
	if u.Window == "" {
		return true
	}
	start, end, err := parseWindow(u.Window)
	if err != nil {
		return false
	}
	t = t.UTC()
	m := t.Hour()*60 + t.Minute()
	if start < end {
		return start <= m && m < end
	}
	return m >= start || m < end
}

// defaults sets Enabled (true) and a normalized Interval when a server is set.
func (u *Update) defaults() {
	if u.Server == "" {
		return
	}
	if u.Enabled == nil {
		yes := true
		u.Enabled = &yes
	}
	if d, err := time.ParseDuration(u.Interval); err == nil || u.Interval == "" {
		if u.Interval == "" {
			d = DefaultUpdateInterval
		}
		u.Interval = d.String()
	}
}

var windowRE = regexp.MustCompile(`^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$`)

// parseWindow returns a window's start and end in minutes after midnight.
func parseWindow(s string) (start, end int, err error) {
	m := windowRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, fmt.Errorf("%q is not HH:MM-HH:MM (UTC, e.g. 02:00-04:00)", s)
	}
	n := func(s string) int { v, _ := strconv.Atoi(s); return v }
	start, end = n(m[1])*60+n(m[2]), n(m[3])*60+n(m[4])
	if start == end {
		return 0, 0, fmt.Errorf("%q starts where it ends (leave window empty to reboot at any time)", s)
	}
	return start, end, nil
}

// check reports the form of every set field and the fields that need each other.
func (u Update) check() []*FieldError {
	var probs []*FieldError
	add := func(f, format string, args ...any) {
		probs = append(probs, &FieldError{"spec.update." + f, fmt.Sprintf(format, args...)})
	}
	if u.Server != "" {
		if err := checkUpdateServer(u.Server); err != nil {
			add("server", "%v", err)
		}
	}
	if u.Channel != "" && !labelRE.MatchString(u.Channel) {
		add("channel", "%q is not a channel name (1 to 63 lower-case letters, digits or '-', starting and ending with a letter or digit)", u.Channel)
	}
	if u.Interval != "" {
		switch d, err := time.ParseDuration(u.Interval); {
		case err != nil:
			add("interval", "%q is not a Go duration (expected e.g. 1h or 30m)", u.Interval)
		case d < MinUpdateInterval:
			add("interval", "%s is shorter than the minimum %s", d, MinUpdateInterval)
		}
	}
	if u.Window != "" {
		if _, _, err := parseWindow(u.Window); err != nil {
			add("window", "%v", err)
		}
	}
	off := u.Enabled != nil && !*u.Enabled
	switch {
	case u.Server == "" && u.Enabled != nil && *u.Enabled:
		add("server", "required when updates are enabled")
	case u.Server == "" && !off && u.Channel != "":
		add("server", "required with spec.update.channel")
	case u.Server == "" && !off && (u.Interval != "" || u.Window != ""):
		f := "interval"
		if u.Window != "" {
			f = "window"
		}
		add("server", "required with spec.update.%s", f)
	case u.Server != "" && u.Channel == "":
		add("channel", "required with spec.update.server")
	}
	return probs
}

// checkUpdateServer is images/update's check of the base URL the node appends its paths to,
// without that package's "invalid update document" prefix.
func checkUpdateServer(s string) error {
	if _, err := update.ServerURL(s); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), update.ErrInvalid.Error()+": "))
	}
	return nil
}

// Validate reports every problem with u alone, joined, one *FieldError each (named
// spec.update.FIELD): what a node checks on the update section it persisted.
func (u Update) Validate() error {
	var errs []error
	for _, p := range u.check() {
		errs = append(errs, p)
	}
	return errors.Join(errs...)
}

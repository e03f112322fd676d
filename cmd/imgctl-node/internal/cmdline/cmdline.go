// Package cmdline parses the imgctl.* options of the kernel command line. The keys and the
// device forms are the boot contract's (package images/boot), shared with the builders.
package cmdline

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/boot"
)

// Defaults.
const (
	DefaultInit        = "/sbin/init"
	FallbackInit       = "/lib/systemd/systemd"
	DefaultRootTimeout = 30 * time.Second
)

// Flag is the value of a boolean option: true when given alone (imgctl.debug) or with any
// value but 0, false and no.
func Flag(val string, hasVal bool) bool {
	return !hasVal || (val != "0" && val != "false" && val != "no")
}

// Kind says how a Device names a block device.
type Kind string

// Device kinds.
const (
	PartLabel Kind = boot.PartLabel
	PartUUID  Kind = boot.PartUUID
	Path      Kind = "path"
)

// Device names a block device: PARTLABEL=ROOT-A, PARTUUID=…, or /dev/vda2.
type Device struct {
	Kind  Kind
	Value string // label, lower-case GUID, or path
}

// IsZero reports whether d names nothing.
func (d Device) IsZero() bool { return d.Kind == "" }

func (d Device) String() string {
	if d.Kind == Path {
		return d.Value
	}
	return string(d.Kind) + "=" + d.Value
}

// ParseDevice parses a device spec.
func ParseDevice(s string) (Device, error) {
	switch {
	case strings.HasPrefix(s, boot.PartLabel+"="):
		if v := strings.TrimPrefix(s, boot.PartLabel+"="); v != "" {
			return Device{Kind: PartLabel, Value: v}, nil
		}
	case strings.HasPrefix(s, boot.PartUUID+"="):
		v := strings.ToLower(strings.TrimPrefix(s, boot.PartUUID+"="))
		if isGUID(v) {
			return Device{Kind: PartUUID, Value: v}, nil
		}
	case strings.HasPrefix(s, boot.DevPrefix) && len(s) > len(boot.DevPrefix):
		return Device{Kind: Path, Value: s}, nil
	}
	return Device{}, fmt.Errorf("bad device %q: want PARTLABEL=NAME, PARTUUID=GUID or /dev/PATH", s)
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdef", c) {
				return false
			}
		}
	}
	return true
}

// Config is what the initrd's init takes from the kernel command line.
type Config struct {
	Root        Device        // imgctl.root (required)
	State       Device        // imgctl.state (optional)
	Init        string        // imgctl.init, default /sbin/init
	InitSet     bool          // imgctl.init was given: no fallback to FallbackInit
	RootTimeout time.Duration // imgctl.root-timeout, default 30s ("3s", "500ms" or seconds "3")
	Debug       bool          // imgctl.debug: do not reboot on failure
}

// Parse reads the imgctl.* options from a kernel command line (the contents of /proc/cmdline).
// Other options are ignored; the last occurrence of an option wins, as with the kernel's own.
func Parse(line string) (Config, error) {
	c := Config{Init: DefaultInit, RootTimeout: DefaultRootTimeout}
	for _, f := range Fields(line) {
		key, val, hasVal := strings.Cut(f, "=")
		var err error
		switch key {
		case boot.KeyRoot:
			c.Root, err = ParseDevice(val)
		case boot.KeyState:
			c.State, err = ParseDevice(val)
		case boot.KeyInit:
			if !strings.HasPrefix(val, "/") {
				err = fmt.Errorf("%s=%q: want an absolute path", boot.KeyInit, val)
			}
			c.Init, c.InitSet = val, true
		case boot.KeyRootTimeout:
			c.RootTimeout, err = parseTimeout(val)
		case boot.KeyDebug:
			c.Debug = Flag(val, hasVal)
		default:
			continue
		}
		if err != nil {
			return c, fmt.Errorf("kernel cmdline: %s: %w", key, err)
		}
	}
	if c.Root.IsZero() {
		return c, fmt.Errorf("kernel cmdline: %s is missing", boot.KeyRoot)
	}
	return c, nil
}

func parseTimeout(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		s = strconv.Itoa(n) + "s"
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: %w", s, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("bad duration %q: must be positive", s)
	}
	return d, nil
}

// Fields splits a kernel command line like the kernel does: on white space, with double quotes
// grouping (and removed from) a value such as imgctl.init="/sbin/my init".
func Fields(line string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
			in = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// Package limits bounds what one source may cost: the bytes downloaded and written for it, how
// far compressed or sparse input may expand, and the slowest transfer that is still progress.
package limits

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Defaults for zero Limits fields. The expansion ratio was chosen from measurement: the
// layer tars of real Debian packages are at most 7.6 times their .deb (tzdata; kernel image
// 5.8, kernel headers 5.7, containerd 3.9, libc6 4.7, runc 3.3), so 100 leaves a wide margin.
const (
	DefaultMaxSourceSize     = 8 << 30 // 8 GiB
	DefaultMaxExpansionRatio = 100
	DefaultMinTransferRate   = 1 << 10 // 1 KiB/s
	DefaultRateWindow        = 30 * time.Second
	// ExpansionSlack is output every input may produce beyond ratio × its size, so that tiny
	// legitimate inputs (a gzipped tar of a few empty directories) are never refused.
	ExpansionSlack = 1 << 20
)

// Off, given to a field, disables that limit.
const Off = -1

// Limits bounds each source. A zero field means its default; a negative field (Off) disables
// that limit. The zero value is therefore the defaults.
type Limits struct {
	// MaxSourceSize bounds the bytes one source may download and the size of the layer tar
	// made from it (default 8 GiB).
	MaxSourceSize Size
	// MaxExpansionRatio bounds a layer tar to this many times the size of its input plus
	// ExpansionSlack: this catches compression bombs (gzip, xz, zstd, bzip2) and sparse tar
	// entries whose logical size dwarfs the archive (default 100).
	MaxExpansionRatio Ratio
	// MinTransferRate fails a download that averages fewer bytes per second over
	// RateWindow (default 1 KiB/s over 30s). The attempt is retried like other network errors.
	MinTransferRate Rate
	RateWindow      time.Duration
}

// Default returns the limits with every default filled in.
func Default() Limits { return Limits{}.WithDefaults() }

// WithDefaults replaces zero fields with their defaults (Off stays Off).
func (l Limits) WithDefaults() Limits {
	if l.MaxSourceSize == 0 {
		l.MaxSourceSize = DefaultMaxSourceSize
	}
	if l.MaxExpansionRatio == 0 {
		l.MaxExpansionRatio = DefaultMaxExpansionRatio
	}
	if l.MinTransferRate == 0 {
		l.MinTransferRate = DefaultMinTransferRate
	}
	if l.RateWindow == 0 {
		l.RateWindow = DefaultRateWindow
	}
	return l
}

// SourceSize returns the per-source byte limit, or -1 for none.
func (l Limits) SourceSize() int64 {
	if v := l.WithDefaults().MaxSourceSize; v > 0 {
		return int64(v)
	}
	return -1
}

// MaxOutput returns how many bytes a layer tar made from inputSize bytes of input may have
// (the smaller of the expansion bound and SourceSize), or -1 for no bound.
func (l Limits) MaxOutput(inputSize int64) int64 {
	l = l.WithDefaults()
	out := l.SourceSize()
	if l.MaxExpansionRatio > 0 && inputSize >= 0 {
		f := float64(l.MaxExpansionRatio)*float64(inputSize) + ExpansionSlack
		if f < math.MaxInt64 {
			if n := int64(f); out < 0 || n < out {
				out = n
			}
		}
	}
	return out
}

// MinRate returns the minimum transfer rate in bytes/s and its window, or 0 when disabled.
func (l Limits) MinRate() (int64, time.Duration) {
	l = l.WithDefaults()
	if l.MinTransferRate <= 0 || l.RateWindow <= 0 {
		return 0, 0
	}
	return int64(l.MinTransferRate), l.RateWindow
}

// Size is a byte count that parses and prints with units (8GiB, 512MiB, 1.5GB, 1048576).
// As a flag value, "0" or "off" disables the limit.
type Size int64

// ParseSize parses a byte count with an optional unit: B, KiB, MiB, GiB, TiB or K, M, G, T
// (powers of 1024, as --disk-size reads them) or kB, MB, GB, TB (powers of 1000); "0" and
// "off" mean no limit (Off).
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "off") || t == "0" {
		return Off, nil
	}
	if t != "" && strings.IndexByte("KMGTkmgt", t[len(t)-1]) >= 0 {
		t += "iB" // a bare K, M, G or T is binary
	}
	n, err := humanize.ParseBytes(t)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit such as 8GiB, 512MiB or 1GB: %w", s, err)
	}
	if n == 0 {
		return Off, nil
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(n), nil
}

func (s Size) String() string {
	if s < 0 {
		return "off"
	}
	return strings.ReplaceAll(humanize.IBytes(uint64(s)), " ", "")
}

// Set implements pflag.Value.
func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = n
	return nil
}

// Type implements pflag.Value.
func (*Size) Type() string { return "size" }

// Rate is a transfer rate in bytes per second (1KiB/s, 100kB/s, 2048).
type Rate int64

// ParseRate parses a rate: a size (see ParseSize) optionally followed by "/s"; "0" and "off"
// disable the minimum rate (Off).
func ParseRate(s string) (Rate, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "/s")
	n, err := ParseSize(t)
	if err != nil {
		return 0, fmt.Errorf("invalid rate %q: want bytes per second such as 1KiB/s or 100kB/s", s)
	}
	return Rate(n), nil
}

func (r Rate) String() string {
	if r < 0 {
		return "off"
	}
	return Size(r).String() + "/s"
}

// Set implements pflag.Value.
func (r *Rate) Set(v string) error {
	n, err := ParseRate(v)
	if err != nil {
		return err
	}
	*r = n
	return nil
}

// Type implements pflag.Value.
func (*Rate) Type() string { return "rate" }

// Ratio is an expansion factor (output bytes per input byte); "0" or "off" disables it.
type Ratio float64

// ParseRatio parses a positive factor such as 100, 100x or 2.5; "0" and "off" mean Off.
func ParseRatio(s string) (Ratio, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "off") {
		return Off, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSuffix(t, "x"), "×"), 64)
	if err == nil && (f < 0 || math.IsNaN(f) || math.IsInf(f, 0)) {
		err = errors.New("must be a positive number")
	}
	if err != nil {
		return 0, fmt.Errorf("invalid ratio %q: want a factor such as 100: %w", s, err)
	}
	if f == 0 {
		return Off, nil
	}
	return Ratio(f), nil
}

func (r Ratio) String() string {
	if r < 0 {
		return "off"
	}
	return strconv.FormatFloat(float64(r), 'g', -1, 64)
}

// Set implements pflag.Value.
func (r *Ratio) Set(v string) error {
	n, err := ParseRatio(v)
	if err != nil {
		return err
	}
	*r = n
	return nil
}

// Type implements pflag.Value.
func (*Ratio) Type() string { return "ratio" }

// ErrTooLarge: a source is larger than MaxSourceSize or expands beyond MaxExpansionRatio.
var ErrTooLarge = errors.New("too large")

// ErrTooSlow: a transfer averaged less than MinTransferRate over RateWindow.
var ErrTooSlow = errors.New("too slow")

// Bytes formats n for error messages: "2.0 GiB (2147483648 bytes)".
func Bytes(n int64) string {
	if n < 0 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	return humanize.IBytes(uint64(n)) + " (" + strconv.FormatInt(n, 10) + " bytes)"
}

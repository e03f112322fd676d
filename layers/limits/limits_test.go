package limits

import (
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Size
	}{
		{"8GiB", 8 << 30}, {"512MiB", 512 << 20}, {"1KiB", 1024}, {"1GB", 1e9}, {"4096", 4096},
		{"1.5 GiB", 3 << 29}, {"0", Off}, {"off", Off}, {"8G", 8 << 30}, {"512 m", 512 << 20}, {"100kB", 100000},
	} {
		got, err := ParseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "lots", "-1GiB", "8 parsecs"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestParseRateAndRatio(t *testing.T) {
	if r, err := ParseRate("1KiB/s"); err != nil || r != 1024 {
		t.Errorf("ParseRate(1KiB/s) = %d, %v", r, err)
	}
	if r, err := ParseRate("100kB"); err != nil || r != 100000 {
		t.Errorf("ParseRate(100kB) = %d, %v", r, err)
	}
	if _, err := ParseRate("fast"); err == nil {
		t.Error("ParseRate(fast) accepted")
	}
	if r, err := ParseRatio("100x"); err != nil || r != 100 {
		t.Errorf("ParseRatio(100x) = %v, %v", r, err)
	}
	for _, bad := range []string{"-3", "NaN", "many"} {
		if _, err := ParseRatio(bad); err == nil {
			t.Errorf("ParseRatio(%q) accepted", bad)
		}
	}
}

func TestDefaultsAndOff(t *testing.T) {
	var zero Limits
	if zero.SourceSize() != 8<<30 {
		t.Errorf("default SourceSize = %d", zero.SourceSize())
	}
	if r, w := zero.MinRate(); r != 1024 || w != 30*time.Second {
		t.Errorf("default MinRate = %d over %v", r, w)
	}
	if got := zero.MaxOutput(1000); got != 100*1000+ExpansionSlack {
		t.Errorf("MaxOutput(1000) = %d", got)
	}
	if got := zero.MaxOutput(1 << 30); got != 8<<30 {
		t.Errorf("MaxOutput(1GiB) = %d, want the 8 GiB size limit", got)
	}
	off := Limits{MaxSourceSize: Off, MaxExpansionRatio: Off, MinTransferRate: Off}
	if off.SourceSize() != -1 || off.MaxOutput(10) != -1 {
		t.Errorf("Off limits: size %d, output %d", off.SourceSize(), off.MaxOutput(10))
	}
	if r, _ := off.MinRate(); r != 0 {
		t.Errorf("Off rate = %d", r)
	}
	if s := Size(8 << 30).String(); s != "8.0GiB" {
		t.Errorf("Size.String = %q", s)
	}
	if s := Rate(1024).String(); s != "1.0KiB/s" {
		t.Errorf("Rate.String = %q", s)
	}
}

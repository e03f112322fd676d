package builders_test

import (
	"testing"

	"github.com/imgctl/imgctl/builders"
)

// TestSquashfsOptionsNormalizeChecksLevel: a compressor level out of its range fails before
// the build (it used to fail only once the rootfs was composed).
func TestSquashfsOptionsNormalizeChecksLevel(t *testing.T) {
	for _, o := range []builders.SquashfsOptions{{Compression: "gzip", Level: 12}, {Compression: "zstd", Level: -1}} {
		if _, err := o.Normalize(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	if o, err := (builders.SquashfsOptions{Compression: "gzip", Level: 9}).Normalize(); err != nil || o.Level != 9 {
		t.Errorf("gzip 9: %+v, %v", o, err)
	}
}

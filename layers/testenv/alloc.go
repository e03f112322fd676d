package testenv

import (
	"runtime/metrics"
	"testing"
)

const heapAllocs = "/gc/heap/allocs:bytes"

// Allocated returns the bytes fn allocated on the heap, approximately: the runtime counts small
// objects when their span leaves a P's cache, so small allocations made before fn may be
// counted too (up to a span per size class: some hundred KiB); large objects count exactly.
// Limits should therefore allow a few MiB: this catches allocations of what a header claims,
// not a stray buffer.
// It reads runtime/metrics, which does not stop the world, so fuzz targets can call it on every
// input. Allocations by other goroutines running meanwhile count too.
func Allocated(fn func()) uint64 {
	s := []metrics.Sample{{Name: heapAllocs}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	fn()
	metrics.Read(s)
	return s[0].Value.Uint64() - before
}

// MaxAlloc runs fn and fails t if it allocated more than limit bytes: a small input must not
// make a parser allocate what its header merely claims.
func MaxAlloc(t testing.TB, limit uint64, what string, fn func()) {
	t.Helper()
	if n := Allocated(fn); n > limit {
		t.Fatalf("%s allocated %d bytes, more than the %d allowed", what, n, limit)
	}
}

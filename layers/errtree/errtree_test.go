package errtree

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

type fieldErr struct{ f string }

func (e *fieldErr) Error() string { return e.f }

func TestAll(t *testing.T) {
	a, b, c := &fieldErr{"a"}, &fieldErr{"b"}, &fieldErr{"c"}
	err := errors.Join(fmt.Errorf("ctx: %w", a), errors.New("other"), errors.Join(b, fmt.Errorf("x: %w", c)))
	got := All[*fieldErr](err)
	if !slices.Equal(got, []*fieldErr{a, b, c}) {
		t.Errorf("All = %v, want [a b c]", got)
	}
	if got := All[*fieldErr](errors.New("plain")); got != nil {
		t.Errorf("All(plain) = %v, want nil", got)
	}
	if got := All[*fieldErr](nil); got != nil {
		t.Errorf("All(nil) = %v", got)
	}
}

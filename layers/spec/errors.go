package spec

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/layers/errtree"
)

// Position locates a value in a spec file. Line and Column are 1-based; a zero Line means the
// value has no place in a file (it came from defaults, overrides or code). Field is the path of
// the value, such as spec.layers[2].sources[0].
type Position struct {
	File         string
	Line, Column int
	Field        string
}

// String formats the file part of p as "file:line:col" (parts that are unknown are left out).
func (p Position) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		if b.Len() > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(p.Line))
		if p.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(p.Column))
		}
	}
	return b.String()
}

// Error is one parse or validation problem, located by its Position.
type Error struct {
	Position
	Msg string
}

// Error formats e as "file:line:col: field: message".
func (e *Error) Error() string {
	var b strings.Builder
	if s := e.Position.String(); s != "" {
		b.WriteString(s)
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns every *Error in err, which may be a single *Error or a tree of joined or
// wrapped errors (as returned by Parse, Load, Default and Validate), in order.
func Errors(err error) []*Error { return errtree.All[*Error](err) }

func errorf(p Position, format string, args ...any) *Error {
	return &Error{Position: p, Msg: fmt.Sprintf(format, args...)}
}

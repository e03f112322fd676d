// Package errtree finds errors of one type in a tree of joined and wrapped errors.
package errtree

import "errors"

// All returns every error of type E in err's tree, in order, depth first: a wrapped or joined
// (Unwrap() []error) error is searched, an E is taken without looking inside it.
func All[E error](err error) []E {
	var out []E
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if x, ok := e.(E); ok {
			out = append(out, x)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		walk(errors.Unwrap(e))
	}
	walk(err)
	return out
}

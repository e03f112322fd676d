package deb

import "strings"

// CompareVersions compares two Debian version strings
// ([epoch:]upstream[-revision]) the way dpkg does and returns -1, 0 or +1
// when a is older than, equal to or newer than b. A '~' sorts before
// everything, even the end of a part, so 1.0~rc1 < 1.0. Numbers of any
// length are compared without overflow. Malformed versions are compared
// on a best-effort basis; this function never panics.
func CompareVersions(a, b string) int {
	ea, ua, ra := splitVersion(a)
	eb, ub, rb := splitVersion(b)
	if c := compareNumeric(ea, eb); c != 0 {
		return c
	}
	if c := compareFragment(ua, ub); c != 0 {
		return c
	}
	return compareFragment(ra, rb)
}

// splitVersion splits v into epoch, upstream version and revision.
func splitVersion(v string) (epoch, upstream, revision string) {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, ':'); i >= 0 {
		epoch, v = v[:i], v[i+1:]
	}
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		v, revision = v[:i], v[i+1:]
	}
	return epoch, v, revision
}

// order is dpkg's character weight for the non-digit parts.
func order(c byte) int {
	switch {
	case c == '~':
		return -1
	case isDigit(c):
		return 0
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		return int(c)
	default:
		return int(c) + 256
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// compareFragment implements dpkg's verrevcmp: alternating non-digit
// and digit runs.
func compareFragment(a, b string) int {
	for a != "" || b != "" {
		// Non-digit prefix, compared character by character; the end
		// of a string weighs 0, so only '~' sorts before it.
		for (a != "" && !isDigit(a[0])) || (b != "" && !isDigit(b[0])) {
			ac, bc := 0, 0
			if a != "" && !isDigit(a[0]) {
				ac = order(a[0])
			}
			if b != "" && !isDigit(b[0]) {
				bc = order(b[0])
			}
			if ac != bc {
				return sign(ac - bc)
			}
			if a != "" && !isDigit(a[0]) {
				a = a[1:]
			}
			if b != "" && !isDigit(b[0]) {
				b = b[1:]
			}
		}
		var na, nb string
		na, a = digitRun(a)
		nb, b = digitRun(b)
		if c := compareNumeric(na, nb); c != 0 {
			return c
		}
	}
	return 0
}

func digitRun(s string) (digits, rest string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// compareNumeric compares two decimal digit strings of any length.
// Non-digit characters (only possible in a malformed epoch) are compared
// bytewise after the length check, which keeps the order total.
func compareNumeric(a, b string) int {
	a = strings.TrimLeft(a, "0")
	b = strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		return sign(len(a) - len(b))
	}
	return strings.Compare(a, b)
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// Package redact shows URLs the way console lines and errors may: user info and query strings
// can carry credentials or tokens, and the serial console is readable by anyone at the rack.
package redact

import (
	"net/url"
	"strings"
)

// URL returns u without user info, with the query replaced by REDACTED and without the
// fragment.
func URL(u *url.URL) string {
	r := *u
	r.User = nil
	if r.RawQuery != "" || r.ForceQuery {
		r.RawQuery, r.ForceQuery = "REDACTED", false
	}
	r.Fragment, r.RawFragment = "", ""
	return r.String()
}

// String is URL for a URL not parsed yet; one that does not parse is shown as "(unparsable URL)".
func String(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return URL(u)
}

// Text returns free text (an error message) as it may leave the node: every http(s) URL in it
// as URL shows it, every non-empty secret replaced by REDACTED and every control character by a
// space.
func Text(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "REDACTED")
		}
	}
	var b strings.Builder
	for {
		i := urlStart(s)
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:i])
		s = s[i:]
		end := strings.IndexFunc(s, func(r rune) bool {
			return r <= ' ' || r == 0x7f || strings.ContainsRune("\"'`<>", r)
		})
		if end < 0 {
			end = len(s)
		}
		b.WriteString(String(s[:end]))
		s = s[end:]
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, b.String())
}

// urlStart is the index of the first http:// or https:// in s, or -1.
func urlStart(s string) int {
	i, j := strings.Index(s, "http://"), strings.Index(s, "https://")
	switch {
	case i < 0:
		return j
	case j < 0:
		return i
	}
	return min(i, j)
}

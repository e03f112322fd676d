// Package redact shows URLs the way console lines and errors may: user info and query strings
// can carry credentials or tokens, and the serial console is readable by anyone at the rack.
package redact

import "net/url"

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

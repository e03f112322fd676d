package lock

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Change is one difference between two locks: a source whose pin differs, one only one of them
// has, or (Role "" and URI "sourceDateEpoch") the recorded SOURCE_DATE_EPOCH.
type Change struct {
	Role, URI string
	// Old and New are the digests ("" = the lock has no such source). When both are the same,
	// OldResolved and NewResolved differ (the same bytes now resolve from another name).
	Old, New                 string
	OldResolved, NewResolved string
}

// String is one line for an error: "kubelet file:///k: sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb".
func (c Change) String() string {
	name := c.URI
	if c.Role != "" {
		name = c.Role + " " + c.URI
	}
	if c.Old == c.New {
		return fmt.Sprintf("%s: resolved %s → %s", name, cmp.Or(c.OldResolved, "(none)"), cmp.Or(c.NewResolved, "(none)"))
	}
	return fmt.Sprintf("%s: %s → %s", name, cmp.Or(short(c.Old), "(none)"), cmp.Or(short(c.New), "(removed)"))
}

// short keeps a digest readable in one line: the algorithm and 12 hex digits.
func short(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}

// Diff lists what differs between old (nil = no lock yet) and new, in role and URI order.
func Diff(old, new *File) []Change {
	var changes []Change
	epoch := func(f *File) string { // "" = no lock
		if f == nil {
			return ""
		}
		return fmt.Sprint(f.SourceDateEpoch)
	}
	if o, n := epoch(old), epoch(new); o != n {
		changes = append(changes, Change{URI: "sourceDateEpoch", Old: o, New: n})
	}
	if old == nil {
		old = &File{}
	}
	if new == nil {
		new = &File{}
	}
	type key struct{ role, uri string }
	var keys []key
	seen := map[key]bool{}
	for _, s := range append(slices.Clone(old.Sources), new.Sources...) {
		if k := (key{s.Role, s.URI}); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b key) int { return cmp.Or(strings.Compare(a.role, b.role), strings.Compare(a.uri, b.uri)) })
	for _, k := range keys {
		o, n := old.Lookup(k.role, k.uri), new.Lookup(k.role, k.uri)
		c := Change{Role: k.role, URI: k.uri}
		if o != nil {
			c.Old, c.OldResolved = o.Digest.String(), o.Resolved
		}
		if n != nil {
			c.New, c.NewResolved = n.Digest.String(), n.Resolved
		}
		if c.Old != c.New || c.OldResolved != c.NewResolved {
			changes = append(changes, c)
		}
	}
	return changes
}

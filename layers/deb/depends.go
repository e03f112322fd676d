package deb

import "strings"

// dependency is one alternative of a Depends field:
// name[:arch] [(op version)] [arch restrictions] [<profiles>].
type dependency struct {
	name    string
	op      string // "", "=", ">=", "<=", ">>", "<<"
	version string
}

func (d dependency) constraint() string {
	if d.op == "" {
		return "(any)"
	}
	return "(" + d.op + " " + d.version + ")"
}

func (d dependency) String() string {
	if d.op == "" {
		return d.name
	}
	return d.name + " " + d.constraint()
}

// satisfiedBy reports whether version v satisfies d's constraint.
func (d dependency) satisfiedBy(v string) bool {
	if d.op == "" {
		return true
	}
	c := CompareVersions(v, d.version)
	switch d.op {
	case "=":
		return c == 0
	case ">=":
		return c >= 0
	case "<=":
		return c <= 0
	case ">>":
		return c > 0
	case "<<":
		return c < 0
	}
	return false
}

// parseDepends parses a folded Depends field into its alternatives, in
// order. Unparsable entries are skipped.
func parseDepends(s string) []dependency {
	var out []dependency
	for group := range strings.SplitSeq(s, ",") {
		for alt := range strings.SplitSeq(group, "|") {
			alt = strings.TrimSpace(alt)
			if alt == "" {
				continue
			}
			var d dependency
			rest := alt
			if i := strings.IndexAny(rest, " (["); i >= 0 {
				d.name, rest = rest[:i], rest[i:]
			} else {
				d.name, rest = rest, ""
			}
			d.name, _, _ = strings.Cut(d.name, ":") // drop :any / :native
			rest = strings.TrimSpace(rest)
			if strings.HasPrefix(rest, "(") {
				inner, _, ok := strings.Cut(rest[1:], ")")
				if !ok {
					continue
				}
				inner = strings.TrimSpace(inner)
				for _, op := range []string{">=", "<=", ">>", "<<", "=", ">", "<"} {
					if strings.HasPrefix(inner, op) {
						d.op, d.version = op, strings.TrimSpace(inner[len(op):])
						break
					}
				}
				// Obsolete "<" and ">" mean "<=" and ">=".
				switch d.op {
				case "<":
					d.op = "<="
				case ">":
					d.op = ">="
				case "":
					continue
				}
			}
			if d.name != "" {
				out = append(out, d)
			}
		}
	}
	return out
}

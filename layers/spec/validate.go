package spec

import (
	"errors"
	"fmt"
	"strings"

	"github.com/imgctl/imgctl/layers/kubeversion"
)

// Validate checks n and returns every problem found, joined (see Errors), or nil. Problems in
// values that came from a file are located there; others carry only their field path.
func (n *NodeImage) Validate() error {
	if errs := n.validate(); len(errs) > 0 {
		return joinSorted(errs)
	}
	return nil
}

// fieldPos locates field: at its own key if it was parsed, else at the nearest parsed of
// fallbacks (parents, for missing fields), else nowhere.
func (n *NodeImage) fieldPos(field string, fallbacks ...string) Position {
	for _, f := range append([]string{field}, fallbacks...) {
		if ip, ok := n.pos[f]; ok && ip.line > 0 {
			return Position{File: n.file, Line: ip.line, Column: ip.col, Field: field}
		}
	}
	return Position{Field: field}
}

// itemPos locates list item field if it still holds val.
func (n *NodeImage) itemPos(field, val string) Position {
	if ip, ok := n.pos[field]; ok && ip.line > 0 && (!ip.checked || ip.val == val) {
		return Position{File: n.file, Line: ip.line, Column: ip.col, Field: field}
	}
	return Position{Field: field}
}

func (n *NodeImage) posAt(field string, p srcPos) Position {
	if p.line == 0 {
		return Position{Field: field}
	}
	return Position{File: n.file, Line: p.line, Column: p.col, Field: field}
}

func (n *NodeImage) validate() []error {
	var errs []error
	add := func(p Position, format string, args ...any) {
		if n.bad[p.Field] {
			return // already reported while decoding
		}
		errs = append(errs, errorf(p, format, args...))
	}
	missing := func(p Position, what string) { add(p, "required field missing (expected %s)", what) }

	switch n.APIVersion {
	case APIVersion:
	case "":
		missing(n.fieldPos("apiVersion", ""), fmt.Sprintf("apiVersion: %s", APIVersion))
	default:
		add(n.fieldPos("apiVersion"), "unsupported apiVersion %q (expected %s)", n.APIVersion, APIVersion)
	}
	switch n.Kind {
	case Kind:
	case "":
		missing(n.fieldPos("kind", ""), fmt.Sprintf("kind: %s", Kind))
	default:
		add(n.fieldPos("kind"), "unsupported kind %q (expected %s)", n.Kind, Kind)
	}

	switch name := n.Metadata.Name; {
	case name == "":
		missing(n.fieldPos("metadata.name", "metadata", ""), "a name such as k8s-node")
	case !nameRE.MatchString(name):
		add(n.fieldPos("metadata.name"), "invalid name %q (expected at most 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit)", name)
	}

	if v := n.Spec.Kubernetes.Version; v == "" {
		missing(n.fieldPos("spec.kubernetes.version", "spec.kubernetes", "spec", ""), "a Kubernetes version X.Y.Z such as 1.21.13, supported: "+kubeversion.Range())
	} else if _, err := kubeversion.Parse(v); err != nil {
		add(n.fieldPos("spec.kubernetes.version"), "%s", err.Error())
	}

	if f := n.Spec.Flavor; f != "" && !flavorRE.MatchString(f) {
		add(n.fieldPos("spec.flavor"), "invalid flavor %q (expected at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, such as %s)", f, strings.Join(FlavorNames(), " or "))
	}

	if e := n.Spec.SourceDateEpoch; e != nil && *e < 0 {
		add(n.fieldPos("spec.sourceDateEpoch"), "negative value %d (expected seconds since 1970-01-01 UTC, >= 0)", *e)
	}

	n.validateLayers(add)

	for i, arg := range n.Spec.Kernel.Cmdline {
		f := fmt.Sprintf("spec.kernel.cmdline[%d]", i)
		if strings.TrimSpace(arg) == "" {
			add(n.itemPos(f, arg), "empty kernel argument (expected e.g. console=ttyS0)")
		} else if err := CheckKernelArg(arg); err != nil {
			add(n.itemPos(f, arg), "kernel argument %q: %v", arg, err)
		}
	}

	seen := map[string]Position{}
	for i, t := range n.Spec.Targets {
		f := fmt.Sprintf("spec.targets[%d]", i)
		p := n.itemPos(f, t)
		switch first, dup := seen[t]; {
		case strings.TrimSpace(t) == "":
			add(p, "empty target name (expected a target such as rootfs or raw)")
		case dup:
			add(p, "duplicate target %q (first as %s%s)", t, first.Field, at(first))
		default:
			seen[t] = p
		}
	}
	return errs
}

func (n *NodeImage) validateLayers(add func(Position, string, ...any)) {
	if len(n.Spec.Layers) == 0 {
		p := n.fieldPos("spec.layers", "spec", "")
		if _, present := n.pos["spec.layers"]; present {
			add(p, "no layers (expected at least one layer, e.g. role: base)")
		} else {
			add(p, "required field missing (expected a list of layers)")
		}
		return
	}
	seen := map[Role]Position{}
	for i, l := range n.Spec.Layers {
		lf := layerField(i)
		lp := n.layerAt(i)
		if lp == nil {
			lp = &layerPos{}
		}
		rf := lf + ".role"
		rp := n.posAt(rf, lp.roleKey)
		switch first, dup := seen[l.Role]; {
		case l.Role == "":
			if lp.roleKey.line == 0 {
				rp = n.posAt(rf, lp.item)
			}
			add(rp, "required field missing (expected one of %s)", roleList())
		case rank(l.Role) < 0:
			_, err := ParseRole(string(l.Role))
			add(rp, "%s", err.Error())
		case dup:
			add(rp, "duplicate role %q (first as %s%s; each role appears at most once)", l.Role, first.Field, at(first))
		default:
			seen[l.Role] = rp
		}
		sf := lf + ".sources"
		if len(l.Sources) == 0 {
			p := n.posAt(sf, lp.sourcesKey)
			if p.Line == 0 {
				p = n.posAt(sf, lp.item)
			}
			add(p, "no sources (expected at least one source URI)")
			continue
		}
		for j, s := range l.Sources {
			if msg := checkSource(s); msg != "" {
				p := n.SourcePos(i, j)
				p.Field = sourceField(i, j)
				add(p, "%s", msg)
			}
		}
	}
}

// at formats " at FILE:LINE:COL" for p, or "" if p has no place.
func at(p Position) string {
	if p.Line == 0 {
		return ""
	}
	return " at " + p.String()
}

// CheckKernelArg refuses what would let one kernel argument escape its place in a loader entry
// or an iPXE script: control characters (a newline starts a new command), white space outside
// double quotes (a second argument), and "$" (iPXE expands ${...} settings). The spec and the
// netboot inventory both check extra kernel arguments with it.
func CheckKernelArg(arg string) error {
	if arg == "" {
		return errors.New("empty kernel argument")
	}
	quoted := false
	for _, r := range arg {
		switch {
		case r < 0x20 || r == 0x7f:
			return errors.New("control characters are not allowed")
		case r > 0x7e:
			return errors.New("only printable ASCII is allowed")
		case r == '"':
			quoted = !quoted
		case r == '$':
			return errors.New(`"$" is not allowed (iPXE would expand it)`)
		case r == ' ' && !quoted:
			return errors.New("white space is allowed only inside double quotes (one argument per list item)")
		}
	}
	if quoted {
		return errors.New("unbalanced double quote")
	}
	return nil
}

package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/imgctl/imgctl/layers/localfile"
	"gopkg.in/yaml.v3"
)

// Load reads and parses the spec file at path (see Parse).
func Load(path string) (*NodeImage, error) {
	data, err := localfile.ReadFile(path, 16<<20)
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates a NodeImage document; file names it in error messages. It is
// strict: unknown and duplicate fields, values of the wrong type, YAML aliases and further
// documents are errors. The Kubernetes version is normalized without a leading v. On failure it
// returns nil and every problem found, joined, each an *Error naming file, line, field and what
// was expected.
func Parse(file string, data []byte) (*NodeImage, error) {
	root, errs := decodeYAML(file, data)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	d := &decoder{n: &NodeImage{file: file, pos: map[string]itemPos{}, bad: map[string]bool{}}}
	if !d.document(root) {
		return nil, errors.Join(d.errs...)
	}
	all := append(d.errs, d.n.validate()...)
	if len(all) > 0 {
		return nil, joinSorted(all)
	}
	d.n.bad = nil
	return d.n, nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: line ([0-9]+): (.*)$`)

// decodeYAML returns the root node of the single document in data.
func decodeYAML(file string, data []byte) (root *yaml.Node, errs []error) {
	defer func() {
		// yaml.v3 is not supposed to panic; if it does, report instead of crashing the caller.
		if r := recover(); r != nil {
			root, errs = nil, []error{errorf(Position{File: file, Line: 1}, "malformed YAML: parser failure: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, []error{errorf(Position{File: file, Line: 1}, "empty document (expected a %s with apiVersion %s)", Kind, APIVersion)}
		}
		return nil, []error{yamlError(file, data, err)}
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		return nil, []error{yamlError(file, data, err)}
	default:
		return nil, []error{errorf(Position{File: file, Line: next.Line, Column: next.Column},
			"multiple YAML documents (a spec file holds exactly one %s)", Kind)}
	}
	if len(doc.Content) != 1 {
		return nil, []error{errorf(Position{File: file, Line: 1}, "empty document (expected a %s)", Kind)}
	}
	return doc.Content[0], nil
}

// YAMLError turns an error from yaml.v3's Decode of data (read from file) into an *Error with
// the line of the problem, for other strict YAML readers (the netboot inventory). yaml.v3's
// syntax errors quote no document content.
func YAMLError(file string, data []byte, err error) *Error { return yamlError(file, data, err) }

// yamlError turns a yaml.v3 syntax error into an *Error with a line. yaml.v3 leaves the line out
// for problems on the first line and for bad characters; we locate the latter ourselves.
func yamlError(file string, data []byte, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	p := Position{File: file, Line: 1}
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		if l, e := strconv.Atoi(m[1]); e == nil && l > 0 {
			p.Line, msg = l, m[2]
			if isParserError(msg) {
				p.Line++
			}
		}
	} else if l, c, ok := badChar(data); ok {
		p.Line, p.Column = l, c
	}
	return errorf(p, "malformed YAML: %s", msg)
}

// isParserError reports whether msg comes from yaml.v3's parser rather than its scanner: yaml.v3
// v3.0.1 reports the scanner's lines 1-based but the parser's 0-based (the line where the
// enclosing block or flow collection starts, or the problem's line if that is the first line).
func isParserError(msg string) bool {
	for _, p := range []string{"did not find expected", "found duplicate %", "found incompatible YAML document", "found undefined tag handle"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// badChar finds the first byte sequence YAML does not accept (invalid UTF-8 or a control
// character other than tab, LF and CR).
func badChar(data []byte) (line, col int, ok bool) {
	line, col = 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1,
			r < 0x20 && r != '\t' && r != '\n' && r != '\r',
			r == 0x7f, r >= 0x80 && r <= 0x9f && r != 0x85,
			r == 0xfffe, r == 0xffff, r == 0xfeff && i > 0:
			return line, col, true
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return 0, 0, false
}

// joinSorted joins errs ordered by position (errors without a line last, in their order).
func joinSorted(errs []error) error {
	slices.SortStableFunc(errs, func(a, b error) int {
		pa, pb := posOfErr(a), posOfErr(b)
		if (pa.Line == 0) != (pb.Line == 0) {
			if pa.Line == 0 {
				return 1
			}
			return -1
		}
		if pa.Line != pb.Line {
			return pa.Line - pb.Line
		}
		return pa.Column - pb.Column
	})
	return errors.Join(errs...)
}

func posOfErr(err error) Position {
	var e *Error
	if errors.As(err, &e) {
		return e.Position
	}
	return Position{}
}

// decoder walks the yaml.Node tree into a NodeImage, recording positions and structural errors.
type decoder struct {
	n    *NodeImage
	errs []error
}

func (d *decoder) at(node *yaml.Node, field string) Position {
	return Position{File: d.n.file, Line: node.Line, Column: node.Column, Field: field}
}

func (d *decoder) fail(node *yaml.Node, field, format string, args ...any) {
	d.errs = append(d.errs, errorf(d.at(node, field), format, args...))
	d.n.bad[field] = true
}

func (d *decoder) record(field string, node *yaml.Node) {
	d.n.pos[field] = itemPos{srcPos: srcPos{node.Line, node.Column}}
}

func (d *decoder) recordItem(field string, node *yaml.Node, val string) {
	d.n.pos[field] = itemPos{srcPos: srcPos{node.Line, node.Column}, val: val, checked: true}
}

func kindName(node *yaml.Node) string {
	switch node.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	case yaml.ScalarNode:
		if node.ShortTag() == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%s %q", strings.TrimPrefix(node.ShortTag(), "!!"), node.Value)
	}
	return "an unknown node"
}

func isNull(node *yaml.Node) bool {
	return node.Kind == yaml.ScalarNode && node.ShortTag() == "!!null"
}

// fields iterates over a mapping's key/value pairs, reporting non-string, duplicate and
// unknown keys. A null value counts as an empty mapping. It returns false if node is not a mapping.
func (d *decoder) fields(node *yaml.Node, field string, known []string, fn func(key string, k, v *yaml.Node)) bool {
	if isNull(node) {
		return true
	}
	if node.Kind == yaml.AliasNode {
		d.fail(node, field, "YAML aliases are not supported in a spec")
		return false
	}
	if node.Kind != yaml.MappingNode {
		d.fail(node, field, "expected a mapping with fields %s, got %s", strings.Join(known, ", "), kindName(node))
		return false
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			d.fail(k, field, "expected a field name, got %s", kindName(k))
			continue
		}
		sub := join(field, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.fail(k, sub, "duplicate field (first at line %d)", first.Line)
			continue
		}
		seen[k.Value] = k
		if !slices.Contains(known, k.Value) {
			d.fail(k, sub, "unknown field (expected one of %s)", strings.Join(known, ", "))
			continue
		}
		fn(k.Value, k, v)
	}
	return true
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// str decodes a scalar as text; numbers, booleans and dates keep their source text, null is "".
func (d *decoder) str(v *yaml.Node, field string) string {
	if v.Kind != yaml.ScalarNode {
		if v.Kind == yaml.AliasNode {
			d.fail(v, field, "YAML aliases are not supported in a spec")
		} else {
			d.fail(v, field, "expected a string, got %s", kindName(v))
		}
		return ""
	}
	switch v.ShortTag() {
	case "!!null":
		return ""
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return v.Value
	}
	d.fail(v, field, "expected a string, got a value tagged %s", v.Tag)
	return ""
}

// list decodes a sequence of strings; a null value is an empty list. If splitScalar is set, a
// single string is accepted and split on whitespace.
func (d *decoder) list(v *yaml.Node, field string, splitScalar bool) []string {
	if isNull(v) {
		return nil
	}
	if splitScalar && v.Kind == yaml.ScalarNode {
		s := d.str(v, field)
		out := strings.Fields(s)
		for i, item := range out {
			d.recordItem(fmt.Sprintf("%s[%d]", field, i), v, item)
		}
		return out
	}
	if v.Kind != yaml.SequenceNode {
		if v.Kind == yaml.AliasNode {
			d.fail(v, field, "YAML aliases are not supported in a spec")
		} else {
			d.fail(v, field, "expected a list of strings, got %s", kindName(v))
		}
		return nil
	}
	out := make([]string, 0, len(v.Content))
	for i, item := range v.Content {
		f := fmt.Sprintf("%s[%d]", field, i)
		s := d.str(item, f)
		d.recordItem(f, item, s)
		out = append(out, s)
	}
	return out
}

// document decodes the root mapping; it returns false if root is not a mapping at all.
func (d *decoder) document(root *yaml.Node) bool {
	n := d.n
	d.record("", root)
	if root.Kind != yaml.MappingNode {
		d.fail(root, "", "expected a %s document (a mapping with apiVersion, kind, metadata, spec), got %s", Kind, kindName(root))
		return false
	}
	d.fields(root, "", []string{"apiVersion", "kind", "metadata", "spec"}, func(key string, k, v *yaml.Node) {
		d.record(key, k)
		switch key {
		case "apiVersion":
			n.APIVersion = d.str(v, key)
		case "kind":
			n.Kind = d.str(v, key)
		case "metadata":
			d.metadata(v)
		case "spec":
			d.spec(v)
		}
	})
	return true
}

func (d *decoder) metadata(v *yaml.Node) {
	d.fields(v, "metadata", []string{"name"}, func(key string, k, v *yaml.Node) {
		f := join("metadata", key)
		d.record(f, k)
		d.n.Metadata.Name = d.str(v, f)
	})
}

func (d *decoder) spec(v *yaml.Node) {
	s := &d.n.Spec
	d.fields(v, "spec", []string{"flavor", "kubernetes", "sourceDateEpoch", "layers", "kernel", "targets"}, func(key string, k, v *yaml.Node) {
		f := join("spec", key)
		d.record(f, k)
		switch key {
		case "flavor":
			s.Flavor = d.str(v, f)
		case "kubernetes":
			d.fields(v, f, []string{"version"}, func(key string, k, v *yaml.Node) {
				f := join(f, key)
				d.record(f, k)
				s.Kubernetes.Version = normalVersion(d.str(v, f))
			})
		case "sourceDateEpoch":
			s.SourceDateEpoch = d.epoch(v, f)
		case "layers":
			d.layers(v, f)
		case "kernel":
			d.fields(v, f, []string{"cmdline"}, func(key string, k, v *yaml.Node) {
				f := join(f, key)
				d.record(f, k)
				s.Kernel.Cmdline = d.list(v, f, true)
			})
		case "targets":
			s.Targets = d.list(v, f, false)
		}
	})
}

func (d *decoder) epoch(v *yaml.Node, field string) *int64 {
	if isNull(v) {
		return nil
	}
	var i int64
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Decode(&i) != nil {
		d.fail(v, field, "expected an integer number of seconds since 1970-01-01 UTC, got %s", kindName(v))
		return nil
	}
	return &i
}

func (d *decoder) layers(v *yaml.Node, field string) {
	if isNull(v) {
		return
	}
	if v.Kind != yaml.SequenceNode {
		d.fail(v, field, "expected a list of layers, got %s", kindName(v))
		return
	}
	layers := make([]Layer, 0, len(v.Content))
	pos := make([]layerPos, 0, len(v.Content))
	for i, item := range v.Content {
		f := layerField(i)
		var l Layer
		lp := layerPos{ok: true, item: srcPos{item.Line, item.Column}}
		d.fields(item, f, []string{"role", "version", "sources"}, func(key string, k, v *yaml.Node) {
			kf := join(f, key)
			kp := srcPos{k.Line, k.Column}
			switch key {
			case "role":
				lp.roleKey = kp
				l.Role = Role(d.str(v, kf))
			case "version":
				lp.versionKey = kp
				l.Version = d.str(v, kf)
			case "sources":
				lp.sourcesKey = kp
				l.Sources = d.list(v, kf, false)
				for j := range l.Sources {
					lp.sources = append(lp.sources, d.n.pos[sourceField(i, j)])
					delete(d.n.pos, sourceField(i, j))
				}
			}
		})
		lp.role = l.Role
		layers = append(layers, l)
		pos = append(pos, lp)
	}
	d.n.Spec.Layers, d.n.layerPos = layers, pos
}

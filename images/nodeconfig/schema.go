package nodeconfig

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var nodeConfigType = reflect.TypeFor[NodeConfig]()

// maxDepth and maxNodes bound nesting and alias expansion ("billion laughs") in hostile input.
const (
	maxDepth = 16
	maxNodes = 10000
)

// schemaChecker walks a document once, within a node budget.
type schemaChecker struct {
	visited int
}

// checkSchema walks a YAML node against the Go type it will decode into and reports, by field path,
// every unknown or duplicate field and every value of the wrong shape. yaml.v3's own strict mode
// reports the first such problem with a line number only; operators fixing user data want the path.
func checkSchema(path string, n *yaml.Node, t reflect.Type) []*FieldError {
	var sc schemaChecker
	return sc.check(path, n, t, 0)
}

func (sc *schemaChecker) check(path string, n *yaml.Node, t reflect.Type, depth int) []*FieldError {
	if depth > maxDepth {
		return []*FieldError{{field(path), "nested too deeply"}}
	}
	if sc.visited++; sc.visited > maxNodes {
		if sc.visited > maxNodes+1 {
			return nil // reported once
		}
		return []*FieldError{{field(path), fmt.Sprintf("document too large (more than %d values after expanding aliases)", maxNodes)}}
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return []*FieldError{{field(path), "dangling alias"}}
		}
		return sc.check(path, n.Alias, t, depth+1)
	}
	if isNull(n) {
		return nil // null leaves the zero value
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return []*FieldError{{field(path), "expected a mapping, got " + describe(n)}}
		}
		fields, names := structFields(t)
		var probs []*FieldError
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			if k.Kind != yaml.ScalarNode {
				probs = append(probs, &FieldError{field(path), "expected field names, got " + describe(k)})
				continue
			}
			if seen[k.Value] {
				probs = append(probs, &FieldError{p, "duplicate field"})
				continue
			}
			seen[k.Value] = true
			f, ok := fields[k.Value]
			if !ok {
				probs = append(probs, &FieldError{p, fmt.Sprintf("unknown field (expected %s)", orList(names))})
				continue
			}
			probs = append(probs, sc.check(p, v, f, depth+1)...)
		}
		return probs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return []*FieldError{{field(path), "expected a mapping of strings, got " + describe(n)}}
		}
		var probs []*FieldError
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				probs = append(probs, &FieldError{field(path), "expected string keys, got " + describe(k)})
				continue
			}
			p := join(path, k.Value)
			if seen[k.Value] {
				probs = append(probs, &FieldError{p, "duplicate key"})
				continue
			}
			seen[k.Value] = true
			probs = append(probs, sc.check(p, v, t.Elem(), depth+1)...)
		}
		return probs
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return []*FieldError{{field(path), "expected a list, got " + describe(n)}}
		}
		var probs []*FieldError
		for i, e := range n.Content {
			probs = append(probs, sc.check(fmt.Sprintf("%s[%d]", path, i), e, t.Elem(), depth+1)...)
		}
		return probs
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return []*FieldError{{field(path), "expected a string, got " + describe(n)}}
		}
		if n.Tag == "!!binary" {
			return []*FieldError{{field(path), "expected a string, got binary data"}}
		}
		return nil
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return []*FieldError{{field(path), "expected a boolean, got " + describe(n)}}
		}
		return nil
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return []*FieldError{{field(path), "expected an integer, got " + describe(n)}}
		}
		if _, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 32); err != nil {
			return []*FieldError{{field(path), fmt.Sprintf("integer %s out of range", n.Value)}}
		}
		return nil
	}
	return []*FieldError{{field(path), "unsupported type " + t.String()}} // a schema bug
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func field(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%s %q", strings.TrimPrefix(n.Tag, "!!"), n.Value)
	}
	return "an alias"
}

// structFields maps yaml names to field types, and lists the names in declaration order.
func structFields(t reflect.Type) (map[string]reflect.Type, []string) {
	m := map[string]reflect.Type{}
	var names []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		m[name] = f.Type
		names = append(names, name)
	}
	return m, names
}

// orList renders "a, b or c".
func orList[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = string(x)
	}
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// DecodeNode decodes n into v, a pointer to a NodeConfig or one of its parts (Spec, Cluster,
// Kubelet, Credentials), as strictly as Parse: unknown and duplicate fields and values of the
// wrong shape are reported by path (prefixed with path, e.g. machines[2].config.cluster.name),
// aliases are followed within Parse's depth and size bounds, and nothing is decoded unless the
// shape is right. Values are not validated: that is Validate's job on the whole NodeConfig.
// Documents that embed NodeConfig parts (the netboot inventory) use it so that the fields are
// described in one place. A wrong-shape error quotes the offending scalar: callers decoding
// Credentials must not show those errors as they are.
func DecodeNode(path string, n *yaml.Node, v any) []*FieldError {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return []*FieldError{{field(path), fmt.Sprintf("DecodeNode needs a non-nil pointer, got %T", v)}}
	}
	if probs := checkSchema(path, n, rv.Type().Elem()); len(probs) > 0 {
		return probs
	}
	if err := n.Decode(v); err != nil { // checkSchema should have caught it
		return []*FieldError{{field(path), err.Error()}}
	}
	return nil
}

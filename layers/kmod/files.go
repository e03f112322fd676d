package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Files returns the depmod outputs for this index, in depmod's order:
// modules.dep, modules.dep.bin, modules.alias, modules.alias.bin,
// modules.softdep, modules.symbols, modules.symbols.bin,
// modules.builtin.bin, modules.builtin.alias.bin, modules.devname.
// Like depmod, it writes an empty modules.builtin.bin (modules.builtin.alias.bin)
// when the kernel ships no modules.builtin (modules.builtin.modinfo).
func (ix *Index) Files() ([]File, error) {
	st := ix.st
	if st == nil {
		return nil, errors.New("kmod: index was not produced by Scan")
	}
	gens := []struct {
		name string
		gen  func(*state) ([]byte, error)
	}{
		{"modules.dep", outputDeps},
		{"modules.dep.bin", outputDepsBin},
		{"modules.alias", outputAliases},
		{"modules.alias.bin", outputAliasesBin},
		{"modules.softdep", outputSoftdeps},
		{"modules.symbols", outputSymbols},
		{"modules.symbols.bin", outputSymbolsBin},
		{"modules.builtin.bin", outputBuiltinBin},
		{"modules.builtin.alias.bin", outputBuiltinAliasBin},
		{"modules.devname", outputDevname},
	}
	out := make([]File, 0, len(gens))
	for _, g := range gens {
		b, err := g.gen(st)
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", g.name, err)
		}
		out = append(out, File{Path: st.root + "/" + g.name, Mode: 0o644, Data: b})
	}
	return out, nil
}

func depLine(m *mod) string {
	var b strings.Builder
	b.WriteString(m.relpath)
	b.WriteByte(':')
	for _, d := range m.all {
		b.WriteByte(' ')
		b.WriteString(d.relpath)
	}
	return b.String()
}

func outputDeps(st *state) ([]byte, error) {
	var b bytes.Buffer
	for _, m := range st.mods {
		b.WriteString(depLine(m))
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

func outputDepsBin(st *state) ([]byte, error) {
	t := newTrie()
	for _, m := range st.mods {
		if err := t.insert(m.name, depLine(m), uint32(m.idx)); err != nil {
			return nil, err
		}
	}
	return t.bytes()
}

func outputAliases(st *state) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Aliases extracted from modules themselves.\n")
	for _, m := range st.mods {
		for _, kv := range m.meta.info {
			if kv.key == "alias" {
				fmt.Fprintf(&b, "alias %s %s\n", kv.value, m.name)
			}
		}
	}
	return b.Bytes(), nil
}

// normalizeAlias is libkmod's alias_normalize: '-' becomes '_' outside
// bracket expressions; an unmatched bracket is an error.
func normalizeAlias(a string) (string, bool) {
	b := []byte(a)
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '-':
			b[i] = '_'
		case ']':
			return "", false
		case '[':
			for i < len(b) && b[i] != ']' {
				i++
			}
			if i == len(b) {
				return "", false
			}
		}
	}
	return string(b), true
}

func outputAliasesBin(st *state) ([]byte, error) {
	t := newTrie()
	for _, m := range st.mods {
		for _, kv := range m.meta.info {
			if kv.key != "alias" {
				continue
			}
			a, ok := normalizeAlias(kv.value)
			if !ok {
				continue // depmod warns and skips it
			}
			if err := t.insert(a, m.name, uint32(m.idx)); err != nil {
				return nil, err
			}
		}
	}
	return t.bytes()
}

func outputSoftdeps(st *state) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Soft dependencies extracted from modules themselves.\n")
	for _, m := range st.mods {
		for _, kv := range m.meta.info {
			if kv.key == "softdep" {
				fmt.Fprintf(&b, "softdep %s %s\n", m.name, kv.value)
			}
		}
	}
	return b.Bytes(), nil
}

func outputSymbols(st *state) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Aliases for symbols, used by symbol_request().\n")
	for _, s := range st.symbols {
		fmt.Fprintf(&b, "alias symbol:%s %s\n", s.name, s.owner.name)
	}
	return b.Bytes(), nil
}

func outputSymbolsBin(st *state) ([]byte, error) {
	t := newTrie()
	for _, s := range st.symbols {
		if err := t.insert("symbol:"+s.name, s.owner.name, uint32(s.owner.idx)); err != nil {
			return nil, err
		}
	}
	return t.bytes()
}

func outputBuiltinBin(st *state) ([]byte, error) {
	if !st.hasBuiltin {
		return []byte{}, nil
	}
	t := newTrie()
	for _, n := range builtinNames(st.builtin) {
		if err := t.insert(n, "", 0); err != nil {
			return nil, err
		}
	}
	return t.bytes()
}

// builtinAliases parses modules.builtin.modinfo ("modname.key=value\0"...)
// and returns (alias, modname) pairs in file order.
func builtinAliases(b []byte) [][2]string {
	var out [][2]string
	for _, rec := range bytes.Split(b, []byte{0}) {
		name, rest, ok := bytes.Cut(rec, []byte("."))
		if !ok || len(name) == 0 {
			continue
		}
		key, value, ok := bytes.Cut(rest, []byte("="))
		if !ok || string(key) != "alias" || len(value) == 0 {
			continue
		}
		out = append(out, [2]string{string(value), string(name)})
	}
	return out
}

func outputBuiltinAliasBin(st *state) ([]byte, error) {
	if !st.hasBuiltinInfo {
		return []byte{}, nil
	}
	t := newTrie()
	for _, p := range builtinAliases(st.builtinModinfo) {
		a, ok := normalizeAlias(p[0])
		if !ok {
			continue
		}
		if err := t.insert(a, p[1], 0); err != nil {
			return nil, err
		}
	}
	return t.bytes()
}

// scanMajorMinor parses "PREFIX%u-%u" like sscanf (trailing text ignored).
func scanMajorMinor(s, prefix string) (uint32, uint32, bool) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return 0, 0, false
	}
	num := func(s string) (uint32, string, bool) {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, s, false
		}
		v, err := strconv.ParseUint(s[:i], 10, 64)
		if err != nil {
			return 0, s, false
		}
		return uint32(v), s[i:], true
	}
	maj, rest, ok := num(rest)
	if !ok || !strings.HasPrefix(rest, "-") {
		return 0, 0, false
	}
	min, _, ok := num(rest[1:])
	if !ok {
		return 0, 0, false
	}
	return maj, min, true
}

func outputDevname(st *state) ([]byte, error) {
	var b bytes.Buffer
	for _, m := range st.mods {
		var devname string
		hasDevname := false
		var typ byte
		var major, minor uint32
		for _, kv := range m.meta.info {
			if kv.key != "alias" {
				continue
			}
			v := kv.value
			if d, ok := strings.CutPrefix(v, "devname:"); ok {
				devname, hasDevname = d, true
			} else if ma, mi, ok := scanMajorMinor(v, "char-major-"); ok {
				typ, major, minor = 'c', ma, mi
			} else if ma, mi, ok := scanMajorMinor(v, "block-major-"); ok {
				typ, major, minor = 'b', ma, mi
			}
			if typ != 0 && hasDevname {
				break
			}
		}
		if hasDevname && typ != 0 {
			if b.Len() == 0 {
				b.WriteString("# Device nodes to trigger on-demand module loading.\n")
			}
			fmt.Fprintf(&b, "%s %s %c%d:%d\n", m.name, devname, typ, major, minor)
		}
	}
	return b.Bytes(), nil
}

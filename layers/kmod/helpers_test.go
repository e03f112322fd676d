package kmod

import "github.com/imgctl/imgctl/layers/kmod/kmodtest"

type testSym struct {
	name    string
	defined bool
}

// buildTestELF writes a minimal little-endian ELF64 relocatable object
// with the given sections (name → contents, in order) and symbols.
func buildTestELF(sections map[string][]byte, order []string, syms []testSym) []byte {
	var ks []kmodtest.Sym
	for _, s := range syms {
		ks = append(ks, kmodtest.Sym{Name: s.name, Defined: s.defined})
	}
	return kmodtest.ELF(sections, order, ks)
}

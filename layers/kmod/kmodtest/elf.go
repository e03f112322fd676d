// Package kmodtest builds kernel module files for tests.
package kmodtest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// Sym is a symbol of ELF: defined ones belong to the first section.
type Sym struct {
	Name    string
	Defined bool
}

// ELF writes a minimal little-endian ELF64 relocatable object (a kernel module as far as
// depmod and modinfo care) with the given sections (name → contents, in order) and symbols.
func ELF(sections map[string][]byte, order []string, syms []Sym) []byte {
	le := binary.LittleEndian
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	nameOff := func(n string) uint32 {
		o := uint32(shstr.Len())
		shstr.WriteString(n)
		shstr.WriteByte(0)
		return o
	}
	type sec struct {
		name    uint32
		typ     uint32
		data    []byte
		link    uint32
		entsize uint64
	}
	secs := []sec{{}} // index 0: null section
	for _, n := range order {
		secs = append(secs, sec{name: nameOff(n), typ: uint32(elf.SHT_PROGBITS), data: sections[n]})
	}
	firstProgbits := uint16(1)
	if len(syms) > 0 {
		var strtab bytes.Buffer
		strtab.WriteByte(0)
		symtab := make([]byte, 24) // null symbol
		for _, s := range syms {
			ent := make([]byte, 24)
			le.PutUint32(ent[0:], uint32(strtab.Len()))
			strtab.WriteString(s.Name)
			strtab.WriteByte(0)
			ent[4] = byte(elf.STB_GLOBAL)<<4 | byte(elf.STT_NOTYPE)
			if s.Defined {
				le.PutUint16(ent[6:], firstProgbits)
			}
			symtab = append(symtab, ent...)
		}
		strIdx := uint32(len(secs) + 1)
		secs = append(secs,
			sec{name: nameOff(".symtab"), typ: uint32(elf.SHT_SYMTAB), data: symtab, link: strIdx, entsize: 24},
			sec{name: nameOff(".strtab"), typ: uint32(elf.SHT_STRTAB), data: strtab.Bytes()},
		)
	}
	shstrIdx := len(secs)
	secs = append(secs, sec{name: nameOff(".shstrtab"), typ: uint32(elf.SHT_STRTAB)})
	secs[shstrIdx].data = shstr.Bytes()

	out := make([]byte, 64)
	offs := make([]uint64, len(secs))
	for i := 1; i < len(secs); i++ {
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		offs[i] = uint64(len(out))
		out = append(out, secs[i].data...)
	}
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	shoff := uint64(len(out))
	for i, s := range secs {
		h := make([]byte, 64)
		le.PutUint32(h[0:], s.name)
		le.PutUint32(h[4:], s.typ)
		le.PutUint64(h[24:], offs[i])
		le.PutUint64(h[32:], uint64(len(s.data)))
		le.PutUint32(h[40:], s.link)
		if s.typ == uint32(elf.SHT_SYMTAB) {
			le.PutUint32(h[44:], 1) // first non-local symbol
		}
		le.PutUint64(h[48:], 1)
		le.PutUint64(h[56:], s.entsize)
		out = append(out, h...)
	}
	copy(out[0:], []byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1})
	le.PutUint16(out[16:], uint16(elf.ET_REL))
	le.PutUint16(out[18:], uint16(elf.EM_X86_64))
	le.PutUint32(out[20:], 1)
	le.PutUint64(out[40:], shoff)
	le.PutUint16(out[52:], 64)
	le.PutUint16(out[58:], 64)
	le.PutUint16(out[60:], uint16(len(secs)))
	le.PutUint16(out[62:], uint16(shstrIdx))
	return out
}

// Module returns a module file whose .modinfo holds the given key=value strings.
func Module(modinfo ...string) []byte {
	var info bytes.Buffer
	for _, s := range modinfo {
		info.WriteString(s)
		info.WriteByte(0)
	}
	return ELF(map[string][]byte{".text": {0}, ".modinfo": info.Bytes()}, []string{".text", ".modinfo"}, nil)
}

// ModuleWithSymbols returns a module file whose .modinfo holds info (key=value strings), which
// exports the symbols exports (with their __crc_ twins, as modversions writes them) and needs
// the symbols needs: depmod derives dependencies from them.
func ModuleWithSymbols(info, exports, needs []string) []byte {
	var modinfo []byte
	for _, s := range info {
		modinfo = append(modinfo, s...)
		modinfo = append(modinfo, 0)
	}
	var ksymStrings []byte
	var syms []Sym
	for _, e := range exports {
		ksymStrings = append(ksymStrings, e...)
		ksymStrings = append(ksymStrings, 0)
		syms = append(syms, Sym{Name: e, Defined: true}, Sym{Name: "__crc_" + e, Defined: true})
	}
	for _, n := range needs {
		syms = append(syms, Sym{Name: n})
	}
	secs := map[string][]byte{".text": {0xc3}, ".modinfo": modinfo, "__ksymtab_strings": ksymStrings}
	return ELF(secs, []string{".text", ".modinfo", "__ksymtab_strings"}, syms)
}

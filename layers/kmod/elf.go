package kmod

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"strings"
)

// modMeta is everything depmod uses from one module file.
type modMeta struct {
	info    []keyValue // .modinfo, in section order
	exports []string   // exported symbols
	needs   []string   // symbols the module needs from elsewhere, in symtab order
}

type keyValue struct{ key, value string }

// splitStrings splits a section of NUL-terminated strings, dropping the
// empty ones (padding), as libkmod's kmod_elf_get_strings does.
func splitStrings(b []byte) []string {
	var out []string
	for _, s := range bytes.Split(b, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out
}

func sectionData(f *elf.File, name string) ([]byte, bool, error) {
	s := f.Section(name)
	if s == nil || s.Type == elf.SHT_NOBITS {
		return nil, false, nil
	}
	b, err := s.Data()
	if err != nil {
		return nil, true, fmt.Errorf("section %s: %w", name, err)
	}
	return b, true, nil
}

// parseModule extracts the .modinfo strings, the exported symbols and the
// needed symbols of a relocatable ELF kernel module, following libkmod:
//   - exports are the __crc_* symbols of .symtab (modversions); without any,
//     the strings of __ksymtab_strings;
//   - needs are the undefined .symtab symbols, followed by the __versions
//     entries no undefined symbol referred to (module_layout and the like).
func parseModule(data []byte) (*modMeta, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Type != elf.ET_REL {
		return nil, fmt.Errorf("not a relocatable ELF object (type %v)", f.Type)
	}
	m := &modMeta{}

	modinfo, ok, err := sectionData(f, ".modinfo")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("no .modinfo section")
	}
	for _, s := range splitStrings(modinfo) {
		k, v, _ := strings.Cut(s, "=")
		m.info = append(m.info, keyValue{k, v})
	}

	syms, err := f.Symbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("symbol table: %w", err)
	}
	for _, s := range syms {
		if name, ok := strings.CutPrefix(s.Name, "__crc_"); ok {
			m.exports = append(m.exports, name)
		}
	}
	if len(m.exports) == 0 {
		ks, _, err := sectionData(f, "__ksymtab_strings")
		if err != nil {
			return nil, err
		}
		m.exports = splitStrings(ks)
	}

	var versions []string
	vb, ok, err := sectionData(f, "__versions")
	if err != nil {
		return nil, err
	}
	if ok {
		// struct modversion_info { unsigned long crc; char name[64 - sizeof(long)]; }
		crcLen := 8
		if f.Class == elf.ELFCLASS32 {
			crcLen = 4
		}
		const entLen = 64
		if len(vb)%entLen == 0 {
			for off := 0; off < len(vb); off += entLen {
				name := vb[off+crcLen : off+entLen]
				if i := bytes.IndexByte(name, 0); i >= 0 {
					name = name[:i]
				}
				versions = append(versions, string(name))
			}
		}
	}
	visited := make([]bool, len(versions))
	sparc := f.Machine == elf.EM_SPARC || f.Machine == elf.EM_SPARCV9
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF || s.Name == "" {
			continue
		}
		if sparc && elf.ST_TYPE(s.Info) == 13 { // STT_REGISTER
			continue
		}
		m.needs = append(m.needs, s.Name)
		for i, v := range versions {
			if v == s.Name {
				visited[i] = true
				break
			}
		}
	}
	for i, v := range versions {
		if !visited[i] {
			m.needs = append(m.needs, v)
		}
	}
	return m, nil
}

// Modinfo returns the values of key in the .modinfo of the module file name read from r (a
// .ko, or .ko.gz, .ko.xz, .ko.zst by name), in order: e.g. the firmware files a driver may
// request ("firmware"). A module without the key has none.
func Modinfo(name string, r io.Reader, key string) ([]string, error) {
	var d decoders
	defer d.close()
	data, err := d.readModule(name, r)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	defer f.Close()
	info, _, err := sectionData(f, ".modinfo")
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	var out []string
	for _, s := range splitStrings(info) {
		if k, v, ok := strings.Cut(s, "="); ok && k == key {
			out = append(out, v)
		}
	}
	return out, nil
}

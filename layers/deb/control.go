package deb

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
)

// maxLineLen bounds a single line in a control file or Packages index.
const maxLineLen = 1 << 20

// Field is one field of a control paragraph.
//
// Value holds the text after the colon with surrounding whitespace removed.
// Continuation lines are appended, each preceded by "\n" and stripped of
// its leading whitespace, so multi-line fields (Description, SHA256 in a
// Release file) keep their line structure. Use [Paragraph.Folded] for
// folded fields such as Depends, where line breaks carry no meaning.
type Field struct {
	Name  string
	Value string
}

// Paragraph is a deb822 paragraph: an ordered list of fields.
type Paragraph []Field

// Get returns the value of the named field, compared case-insensitively,
// or "" if the field is absent.
func (p Paragraph) Get(name string) string {
	v, _ := p.Lookup(name)
	return v
}

// Lookup is like [Paragraph.Get] but also reports whether the field exists.
func (p Paragraph) Lookup(name string) (string, bool) {
	for _, f := range p {
		if strings.EqualFold(f.Name, name) {
			return f.Value, true
		}
	}
	return "", false
}

// Folded returns the named field with every run of whitespace, line
// breaks included, replaced by a single space (the reading of a folded
// field such as Depends).
func (p Paragraph) Folded(name string) string {
	return strings.Join(strings.Fields(p.Get(name)), " ")
}

// ParseParagraphs returns an iterator over the paragraphs of a deb822
// document (a control file, a Packages index, a Release file). Paragraphs
// are separated by one or more blank lines; CRLF line endings and lines
// starting with '#' are accepted. Iteration stops after the first error,
// which is yielded with a nil Paragraph.
func ParseParagraphs(r io.Reader) iter.Seq2[Paragraph, error] {
	return func(yield func(Paragraph, error) bool) {
		br := bufio.NewReaderSize(r, 64<<10)
		var (
			cur    Paragraph
			lineNo int
			last   strings.Builder // value of the field being built
			seen   = map[string]bool{}
		)
		flush := func() {
			if len(cur) > 0 {
				cur[len(cur)-1].Value = strings.TrimRight(last.String(), " \t")
			}
			last.Reset()
		}
		for {
			line, err := readLine(br)
			if err != nil && !errors.Is(err, io.EOF) {
				yield(nil, fmt.Errorf("deb: control data line %d: %w", lineNo+1, err))
				return
			}
			eof := errors.Is(err, io.EOF)
			if eof && line == nil {
				break
			}
			lineNo++
			switch {
			case len(bytes.TrimSpace(line)) == 0:
				if len(cur) > 0 {
					flush()
					if !yield(cur, nil) {
						return
					}
					cur = nil
					clear(seen)
				}
			case line[0] == '#':
				// comment
			case line[0] == ' ' || line[0] == '\t':
				if len(cur) == 0 {
					yield(nil, fmt.Errorf("deb: control data line %d: continuation line outside a field", lineNo))
					return
				}
				last.WriteByte('\n')
				last.Write(bytes.TrimSpace(line))
			default:
				name, value, ok := bytes.Cut(line, []byte{':'})
				if !ok {
					yield(nil, fmt.Errorf("deb: control data line %d: %q is not a field (missing ':')", lineNo, truncate(line)))
					return
				}
				n := string(name)
				if !validFieldName(n) {
					yield(nil, fmt.Errorf("deb: control data line %d: invalid field name %q", lineNo, truncate(name)))
					return
				}
				key := strings.ToLower(n)
				if seen[key] {
					yield(nil, fmt.Errorf("deb: control data line %d: duplicate field %q", lineNo, n))
					return
				}
				seen[key] = true
				flush()
				cur = append(cur, Field{Name: n})
				last.Write(bytes.TrimSpace(value))
			}
			if eof {
				break
			}
		}
		if len(cur) > 0 {
			flush()
			yield(cur, nil)
		}
	}
}

// ReadParagraphs reads all paragraphs of r; see [ParseParagraphs].
func ReadParagraphs(r io.Reader) ([]Paragraph, error) {
	var ps []Paragraph
	for p, err := range ParseParagraphs(r) {
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// readLine returns the next line without its "\n" or "\r\n". At the end of
// input it returns the final unterminated line (if any) with io.EOF, or a
// nil line with io.EOF.
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > maxLineLen {
			return nil, fmt.Errorf("line longer than %d bytes", maxLineLen)
		}
		switch {
		case err == nil:
			buf = append(buf, chunk...)
			buf = bytes.TrimSuffix(buf[:len(buf)-1], []byte{'\r'})
			return buf, nil
		case errors.Is(err, bufio.ErrBufferFull):
			buf = append(buf, chunk...)
		case errors.Is(err, io.EOF):
			if len(buf)+len(chunk) == 0 {
				return nil, io.EOF
			}
			buf = append(buf, chunk...)
			return bytes.TrimSuffix(buf, []byte{'\r'}), io.EOF
		default:
			return nil, err
		}
	}
}

func validFieldName(n string) bool {
	if n == "" || n[0] == '-' {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// Package lock reads and writes imgctl.lock: every source of a spec resolved to the digest of
// the exact bytes fetched, so builds are reproducible and reviewable (like go.sum).
package lock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/layers/atomicfile"
	"github.com/imgctl/imgctl/layers/localfile"

	"github.com/opencontainers/go-digest"
)

// Version is the lock file format version.
const Version = 1

// File is the content of imgctl.lock.
type File struct {
	Version int `json:"version"`
	// SourceDateEpoch is fixed when the lock is first written, so later builds from the same
	// lock stamp the same times into every artifact.
	SourceDateEpoch int64    `json:"sourceDateEpoch"`
	Sources         []Source `json:"sources"`
}

// Source is one resolved source.
type Source struct {
	Role     string        `json:"role"`
	URI      string        `json:"uri"`
	Digest   digest.Digest `json:"digest"`
	Resolved string        `json:"resolved,omitempty"`
	URL      string        `json:"url,omitempty"`
}

// Load reads a lock file; a missing file yields (nil, nil).
func Load(path string) (*File, error) {
	data, err := localfile.ReadFile(path, 64<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f File
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: not a valid lock file: %w", path, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: not a valid lock file: data after the JSON document (offset %d)", path, dec.InputOffset())
	}
	if f.Version != Version {
		return nil, fmt.Errorf("%s: lock version %d, this imgctl reads version %d", path, f.Version, Version)
	}
	for i, s := range f.Sources {
		if err := s.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%s: sources[%d] (%s): digest %q: %w", path, i, s.URI, s.Digest, err)
		}
	}
	return &f, nil
}

// Lookup returns the entry for uri in role, or nil.
func (f *File) Lookup(role, uri string) *Source {
	if f == nil {
		return nil
	}
	for i := range f.Sources {
		if f.Sources[i].Role == role && f.Sources[i].URI == uri {
			return &f.Sources[i]
		}
	}
	return nil
}

// Marshal renders the lock deterministically: sources sorted by role order as given and URI.
func (f *File) Marshal() ([]byte, error) {
	c := *f
	c.Sources = slices.Clone(f.Sources)
	slices.SortStableFunc(c.Sources, func(a, b Source) int {
		return strings.Compare(a.Role+"\x00"+a.URI, b.Role+"\x00"+b.URI)
	})
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // URIs keep their '&'
	enc.SetIndent("", "  ")
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Save writes the lock atomically (temp + fsync + rename).
func (f *File) Save(path string) error {
	data, err := f.Marshal()
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return atomicfile.Write("", path, data, 0o644)
}

// Package imageinfo is what a node knows about the image it runs: /etc/imgctl/image.json,
// written into the rootfs at build time and read by the node agent. It is a leaf package shared
// by the builders and imgctl-node.
package imageinfo

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
)

// Path is where the file lives on the node (without a leading root).
const Path = "/etc/imgctl/image.json"

// SchemaVersion of Info; readers reject other versions.
const SchemaVersion = 1

// Info describes the image. The image digest and readable version are not in it: both depend on
// artifacts written from the rootfs that contains this file.
type Info struct {
	SchemaVersion   int     `json:"schemaVersion"`
	Name            string  `json:"name"`
	Kubernetes      string  `json:"kubernetes"`
	Kernel          string  `json:"kernel,omitempty"`
	Bootstrap       string  `json:"bootstrap,omitempty"` // the bootstrap layer's version
	Imgctl          string  `json:"imgctl,omitempty"`    // version of the imgctl that built it
	SpecDigest      string  `json:"specDigest,omitempty"`
	SourceDateEpoch int64   `json:"sourceDateEpoch"`
	Layers          []Layer `json:"layers,omitempty"`
	// Binaries maps the absolute path of every baked executable (the kubelet, runtime and
	// bootstrap layers') to "sha256:" + 64 hex digits, as recorded in the image manifest.
	Binaries map[string]string `json:"binaries,omitempty"`
}

// Layer is one role layer of the image.
type Layer struct {
	Role    string `json:"role"`
	Version string `json:"version,omitempty"`
	Digest  string `json:"digest"`
}

// Marshal renders i deterministically (sorted keys, two-space indent, trailing newline).
func (i *Info) Marshal() ([]byte, error) {
	if err := i.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(i, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Validate checks the fields readers rely on.
func (i *Info) Validate() error {
	if i.SchemaVersion != SchemaVersion {
		return fmt.Errorf("schemaVersion: got %d, expected %d", i.SchemaVersion, SchemaVersion)
	}
	if i.Kubernetes == "" {
		return fmt.Errorf("kubernetes: missing (expected a version like 1.21.13)")
	}
	for _, p := range slices.Sorted(maps.Keys(i.Binaries)) {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return fmt.Errorf("binaries: %q: expected a clean absolute path", p)
		}
		if !ValidDigest(i.Binaries[p]) {
			return fmt.Errorf("binaries[%s]: %q: expected sha256: and 64 lower-case hex digits", p, i.Binaries[p])
		}
	}
	return nil
}

// ValidDigest reports whether d is "sha256:" + 64 lower-case hex digits.
func ValidDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 || strings.ToLower(h) != h {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

// Parse decodes and validates an image.json document; unknown fields are errors.
func Parse(data []byte) (*Info, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var i Info
	if err := dec.Decode(&i); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the JSON object")
	}
	if err := i.Validate(); err != nil {
		return nil, err
	}
	return &i, nil
}

// Load reads and parses the file at p; errors name p.
func Load(p string) (*Info, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	i, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return i, nil
}

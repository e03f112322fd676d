package spec

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/opencontainers/go-digest"
)

// Canonical returns a deterministic JSON encoding of n: object keys sorted, no positions, no
// insignificant whitespace, no HTML escaping, empty lists as [], the Kubernetes version without
// a leading v and targets sorted (they are a set). Layer, source and cmdline order is kept: it is
// meaningful. Two specs that differ only in YAML layout, key order or comments encode the same.
func (n *NodeImage) Canonical() []byte {
	layers := make([]any, 0, len(n.Spec.Layers))
	for _, l := range n.Spec.Layers {
		layers = append(layers, map[string]any{
			"role":    string(l.Role),
			"version": l.Version,
			"sources": nonNil(l.Sources),
		})
	}
	version := normalVersion(n.Spec.Kubernetes.Version)
	targets := nonNil(n.Spec.Targets)
	slices.Sort(targets)
	spec := map[string]any{
		"kubernetes": map[string]any{"version": version},
		"layers":     layers,
		"kernel":     map[string]any{"cmdline": nonNil(n.Spec.Kernel.Cmdline)},
		"targets":    targets,
	}
	if n.Spec.Flavor != "" {
		spec["flavor"] = n.Spec.Flavor // absent when unset: specs without a flavor keep their digest
	}
	if n.Spec.SourceDateEpoch != nil {
		spec["sourceDateEpoch"] = *n.Spec.SourceDateEpoch
	}
	doc := map[string]any{
		"apiVersion": n.APIVersion,
		"kind":       n.Kind,
		"metadata":   map[string]any{"name": n.Metadata.Name},
		"spec":       spec,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		panic("spec: canonical encoding: " + err.Error()) // unreachable: only strings, numbers, maps and slices
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// Digest returns the sha256 digest of Canonical(): the spec's identity in image manifests.
func (n *NodeImage) Digest() digest.Digest {
	return digest.SHA256.FromBytes(n.Canonical())
}

// nonNil returns a copy of s that encodes as [] when empty.
func nonNil(s []string) []string {
	out := make([]string, len(s))
	copy(out, s)
	return out
}

package spec

import (
	"encoding/json"
	"strings"
	"testing"
)

// Same spec as validYAML: different key order, flow style, comments, quoting and a leading v
// dropped; targets are a set.
const reorderedYAML = `# reordered
spec:
  targets: ["rootfs"]
  kernel: {cmdline: "console=ttyS0 quiet"}
  layers:
  - sources: ['mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&packages=systemd-sysv,udev']
    version: bookworm
    role: base
  - sources:
    - deb://deb.debian.org/debian?suite=bookworm&package=containerd
    - deb://deb.debian.org/debian?suite=bookworm&package=runc
    role: runtime
  sourceDateEpoch: 0x6553f100
  kubernetes: {version: 1.21.13}
metadata: {name: k8s-node}
kind: NodeImage
apiVersion: imgctl/v1alpha1
`

func TestCanonicalStable(t *testing.T) {
	a, b := mustParse(t, validYAML), mustParse(t, reorderedYAML)
	if string(a.Canonical()) != string(b.Canonical()) {
		t.Fatalf("canonical forms differ:\n%s\n%s", a.Canonical(), b.Canonical())
	}
	if a.Digest() != b.Digest() {
		t.Errorf("digests differ")
	}
	if err := a.Digest().Validate(); err != nil || a.Digest().Algorithm() != "sha256" {
		t.Errorf("Digest() = %q: %v", a.Digest(), err)
	}
	// Valid JSON, no positions, no HTML escaping, no trailing newline.
	c := string(a.Canonical())
	var v map[string]any
	if err := json.Unmarshal([]byte(c), &v); err != nil {
		t.Fatalf("Canonical is not JSON: %v", err)
	}
	if strings.Contains(c, `\u0026`) || strings.HasSuffix(c, "\n") || strings.Contains(c, "node.yaml") {
		t.Errorf("Canonical = %s", c)
	}
	const want = `{"apiVersion":"imgctl/v1alpha1","kind":"NodeImage","metadata":{"name":"k8s-node"},"spec":{"kernel":{"cmdline":["console=ttyS0","quiet"]},"kubernetes":{"version":"1.21.13"},"layers":[{"role":"base","sources":["mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&packages=systemd-sysv,udev"],"version":"bookworm"},{"role":"runtime","sources":["deb://deb.debian.org/debian?suite=bookworm&package=containerd","deb://deb.debian.org/debian?suite=bookworm&package=runc"],"version":""}],"sourceDateEpoch":1700000000,"targets":["rootfs"]}}`
	if c != want {
		t.Errorf("Canonical =\n%s\nwant\n%s", c, want)
	}
	// nil and empty lists, and target order, do not matter.
	x, y := mustParse(t, validYAML), mustParse(t, validYAML)
	x.Spec.Targets, y.Spec.Targets = []string{"raw", "rootfs"}, []string{"rootfs", "raw"}
	x.Spec.Kernel.Cmdline, y.Spec.Kernel.Cmdline = nil, []string{}
	if x.Digest() != y.Digest() {
		t.Errorf("digest depends on target order or nil-vs-empty lists")
	}
}

func TestDigestChanges(t *testing.T) {
	base := mustParse(t, validYAML).Digest()
	edits := map[string]func(n *NodeImage){
		"apiVersion":      func(n *NodeImage) { n.APIVersion = "imgctl/v1" },
		"kind":            func(n *NodeImage) { n.Kind = "Other" },
		"name":            func(n *NodeImage) { n.Metadata.Name = "other" },
		"k8s version":     func(n *NodeImage) { n.Spec.Kubernetes.Version = "1.21.14" },
		"epoch":           func(n *NodeImage) { *n.Spec.SourceDateEpoch++ },
		"epoch unset":     func(n *NodeImage) { n.Spec.SourceDateEpoch = nil },
		"layer order":     func(n *NodeImage) { n.Spec.Layers[0], n.Spec.Layers[1] = n.Spec.Layers[1], n.Spec.Layers[0] },
		"layer role":      func(n *NodeImage) { n.Spec.Layers[1].Role = RoleExtra },
		"layer version":   func(n *NodeImage) { n.Spec.Layers[0].Version = "trixie" },
		"source":          func(n *NodeImage) { n.Spec.Layers[1].Sources[1] += "&x=1" },
		"source order":    func(n *NodeImage) { s := n.Spec.Layers[1].Sources; s[0], s[1] = s[1], s[0] },
		"source added":    func(n *NodeImage) { n.Spec.Layers[0].Sources = append(n.Spec.Layers[0].Sources, "oci://x") },
		"layer removed":   func(n *NodeImage) { n.Spec.Layers = n.Spec.Layers[:1] },
		"cmdline":         func(n *NodeImage) { n.Spec.Kernel.Cmdline[1] = "debug" },
		"cmdline order":   func(n *NodeImage) { c := n.Spec.Kernel.Cmdline; c[0], c[1] = c[1], c[0] },
		"cmdline removed": func(n *NodeImage) { n.Spec.Kernel.Cmdline = nil },
		"target":          func(n *NodeImage) { n.Spec.Targets[0] = "raw" },
		"target added":    func(n *NodeImage) { n.Spec.Targets = append(n.Spec.Targets, "pxe") },
		// Moving a string across a field boundary must change the encoding.
		"boundary": func(n *NodeImage) {
			n.Spec.Kernel.Cmdline = []string{"console=ttyS0 quiet"}
		},
	}
	seen := map[string]string{string(base): "original"}
	for name, edit := range edits {
		n := mustParse(t, validYAML)
		edit(n)
		d := string(n.Digest())
		if prev, dup := seen[d]; dup {
			t.Errorf("edit %q gives the same digest as %q", name, prev)
		}
		seen[d] = name
	}
}

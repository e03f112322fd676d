package spec

import (
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/kubeversion"
	"github.com/opencontainers/go-digest"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(validYAML))
	f.Add([]byte(reorderedYAML))
	v, err := kubeversion.Parse("1.21.13")
	if err != nil {
		f.Fatal(err)
	}
	for _, fl := range Flavors() {
		def, err := renderDefault(v, fl)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(def)
	}
	f.Add([]byte(""))
	f.Add([]byte("~"))
	f.Add([]byte("a: [\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Add([]byte(validYAML + "---\n"))
	f.Add([]byte(strings.Replace(validYAML, "role: runtime", "role: base", 1)))
	f.Add([]byte(strings.Replace(validYAML, "[console=ttyS0, quiet]", "console=ttyS0 quiet", 1)))
	f.Add([]byte("apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata: {name: a}\nspec: {kubernetes: {version: v1.2.3}, sourceDateEpoch: -1, layers: [{role: extra, sources: [x]}], targets: [a, a, '']}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse("f.yaml", data)
		if err != nil {
			if n != nil {
				t.Fatalf("spec and error returned")
			}
			errs := Errors(err)
			if len(errs) == 0 {
				t.Fatalf("error without *Error: %v", err)
			}
			for _, e := range errs {
				if e.File != "f.yaml" || e.Line < 1 || e.Msg == "" {
					t.Fatalf("error without file, line or message: %#v", e)
				}
			}
			return
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("parsed spec does not re-validate: %v", err)
		}
		c := n.Canonical()
		if string(c) != string(n.Canonical()) || n.Digest() != digest.SHA256.FromBytes(c) {
			t.Fatalf("canonical form not deterministic")
		}
		for i, l := range n.Spec.Layers {
			for j := range l.Sources {
				if p := n.SourcePos(i, j); p.Line < 1 {
					t.Fatalf("parsed source %d/%d without position", i, j)
				}
			}
		}
		// Overrides keep the spec valid.
		for _, r := range Roles() {
			if err := n.SetSources(r, []string{"oci://fuzz/" + string(r)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("spec invalid after overrides: %v", err)
		}
	})
}

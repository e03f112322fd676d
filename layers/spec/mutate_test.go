package spec

import (
	"slices"
	"strings"
	"testing"
)

func roleOrder(n *NodeImage) []Role {
	var rs []Role
	for _, l := range n.Spec.Layers {
		rs = append(rs, l.Role)
	}
	return rs
}

func TestSetSourcesPresent(t *testing.T) {
	n := mustParse(t, validYAML)
	before := n.Digest()
	uris := []string{"oci://registry.example/runtime@sha256:abcd"}
	if err := n.SetSources(RoleRuntime, uris); err != nil {
		t.Fatal(err)
	}
	uris[0] = "mutated://" // the spec keeps its own copy
	l, ok := n.Layer(RoleRuntime)
	if !ok || !slices.Equal(l.Sources, []string{"oci://registry.example/runtime@sha256:abcd"}) {
		t.Fatalf("Layer(runtime) = %+v, %v", l, ok)
	}
	if got := n.SourcePos(1, 0); got != (Position{}) {
		t.Errorf("SourcePos of an override = %+v, want zero", got)
	}
	if got := n.SourcePos(0, 0); got.Line != 13 {
		t.Errorf("SourcePos of the untouched base source = %+v", got)
	}
	if n.Digest() == before {
		t.Errorf("digest unchanged by SetSources")
	}
	if err := n.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestSetSourcesAbsent(t *testing.T) {
	n := mustParse(t, validYAML) // base, runtime
	steps := []struct {
		role Role
		want []Role
	}{
		{RoleKubelet, []Role{RoleBase, RoleRuntime, RoleKubelet}},
		{RoleKernel, []Role{RoleBase, RoleKernel, RoleRuntime, RoleKubelet}},
		{RoleExtra, []Role{RoleBase, RoleKernel, RoleRuntime, RoleKubelet, RoleExtra}},
		{RoleBootloader, []Role{RoleBase, RoleKernel, RoleBootloader, RoleRuntime, RoleKubelet, RoleExtra}},
	}
	for _, s := range steps {
		if err := n.SetSources(s.role, []string{"file:///tmp/" + string(s.role)}); err != nil {
			t.Fatal(err)
		}
		if got := roleOrder(n); !slices.Equal(got, s.want) {
			t.Fatalf("after SetSources(%s): roles %v, want %v", s.role, got, s.want)
		}
	}
	// Parsed positions follow their layers; inserted layers have none.
	if p := n.SourcePos(3, 1); p.Line != 17 || p.Field != "spec.layers[3].sources[1]" {
		t.Errorf("runtime source moved to layer 3: SourcePos = %+v", p)
	}
	if p := n.SourcePos(1, 0); p != (Position{}) {
		t.Errorf("inserted kernel layer: SourcePos = %+v", p)
	}
	if err := n.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	l, ok := n.Layer(RoleBootloader)
	if !ok || l.Sources[0] != "file:///tmp/bootloader" {
		t.Errorf("Layer(bootloader) = %+v", l)
	}
	l.Version = "edited" // Layer returns a pointer into the spec
	if n.Spec.Layers[2].Version != "edited" {
		t.Errorf("Layer did not return a pointer into Spec.Layers")
	}
	if _, ok := n.Layer(RoleBootstrap); ok {
		t.Errorf("Layer(bootstrap) found")
	}
}

func TestSetSourcesNonCanonicalOrder(t *testing.T) {
	n := &NodeImage{Spec: Spec{Layers: []Layer{{Role: RoleKubelet}, {Role: RoleBase}}}}
	if err := n.SetSources(RoleRuntime, []string{"oci://r"}); err != nil {
		t.Fatal(err)
	}
	// Inserted before the first layer that comes later in Roles().
	if got, want := roleOrder(n), []Role{RoleRuntime, RoleKubelet, RoleBase}; !slices.Equal(got, want) {
		t.Errorf("roles = %v, want %v", got, want)
	}
}

func TestSetSourcesErrors(t *testing.T) {
	tests := []struct {
		role Role
		uris []string
		want string
	}{
		{"kernal", []string{"oci://x"}, `unknown role "kernal"`},
		{RoleKernel, nil, "no sources"},
		{RoleKernel, []string{"oci://x", ""}, "empty source"},
		{RoleKernel, []string{"/boot/vmlinuz"}, "not a URI"},
	}
	for _, tt := range tests {
		n := mustParse(t, validYAML)
		before := string(n.Canonical())
		err := n.SetSources(tt.role, tt.uris)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SetSources(%q, %q) error = %v, want %q", tt.role, tt.uris, err, tt.want)
		}
		if string(n.Canonical()) != before {
			t.Errorf("SetSources(%q, %q) changed the spec on error", tt.role, tt.uris)
		}
	}
}

func TestValidateInCode(t *testing.T) {
	n := &NodeImage{
		APIVersion: APIVersion, Kind: Kind, Metadata: Metadata{Name: "n"},
		Spec: Spec{Kubernetes: Kubernetes{Version: "1.21.13"}, Layers: []Layer{{Role: RoleBase, Sources: []string{"oci://b"}}}},
	}
	if err := n.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	n.Spec.Layers = append(n.Spec.Layers, Layer{Role: RoleBase, Sources: []string{"x"}})
	n.Spec.Targets = []string{"raw", "raw"}
	errs := Errors(n.Validate())
	var msgs []string
	for _, e := range errs {
		if e.Line != 0 || e.File != "" {
			t.Errorf("position for a spec built in code: %+v", e)
		}
		msgs = append(msgs, e.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, w := range []string{`spec.layers[1].role: duplicate role "base" (first as spec.layers[0].role;`, `spec.layers[1].sources[0]: source "x" is not a URI`, `spec.targets[1]: duplicate target "raw" (first as spec.targets[0])`} {
		if !strings.Contains(all, w) {
			t.Errorf("missing %q in\n%s", w, all)
		}
	}
}

func TestValidateAfterEdits(t *testing.T) {
	n := mustParse(t, validYAML)
	// Edited values lose their positions; untouched ones keep them.
	n.Spec.Layers[1].Sources[1] = "bad"
	n.Spec.Targets = []string{"rootfs", "rootfs"}
	n.Spec.Kubernetes.Version = "1.2"
	var msgs []string
	for _, e := range Errors(n.Validate()) {
		msgs = append(msgs, e.Error())
	}
	want := []string{
		`node.yaml:7:5: spec.kubernetes.version: invalid Kubernetes version "1.2" (expected X.Y.Z such as 1.21.13; supported: 1.21 to 1.36)`,
		`spec.layers[1].sources[1]: source "bad" is not a URI (expected SCHEME://..., e.g. oci://, https://, deb://, mmdebstrap://)`,
		`spec.targets[1]: duplicate target "rootfs" (first as spec.targets[0] at node.yaml:20:13)`,
	}
	if !slices.Equal(msgs, want) {
		t.Errorf("Validate after edits:\n%s\nwant\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
}

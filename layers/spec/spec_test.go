package spec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const validYAML = `apiVersion: imgctl/v1alpha1
kind: NodeImage
metadata:
  name: k8s-node            # comment
spec:
  kubernetes:
    version: v1.21.13
  sourceDateEpoch: 1700000000
  layers:
    - role: base
      version: bookworm
      sources:
        - mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&packages=systemd-sysv,udev
    - role: runtime
      sources:
        - deb://deb.debian.org/debian?suite=bookworm&package=containerd
        - deb://deb.debian.org/debian?suite=bookworm&package=runc
  kernel:
    cmdline: [console=ttyS0, quiet]
  targets: [rootfs]
`

func mustParse(t *testing.T, data string) *NodeImage {
	t.Helper()
	n, err := Parse("node.yaml", []byte(data))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return n
}

func TestParseValid(t *testing.T) {
	n := mustParse(t, validYAML)
	epoch := int64(1700000000)
	want := &NodeImage{
		APIVersion: APIVersion,
		Kind:       Kind,
		Metadata:   Metadata{Name: "k8s-node"},
		Spec: Spec{
			Kubernetes:      Kubernetes{Version: "1.21.13"},
			SourceDateEpoch: &epoch,
			Layers: []Layer{
				{Role: RoleBase, Version: "bookworm", Sources: []string{"mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&packages=systemd-sysv,udev"}},
				{Role: RoleRuntime, Sources: []string{
					"deb://deb.debian.org/debian?suite=bookworm&package=containerd",
					"deb://deb.debian.org/debian?suite=bookworm&package=runc",
				}},
			},
			Kernel:  Kernel{Cmdline: []string{"console=ttyS0", "quiet"}},
			Targets: []string{"rootfs"},
		},
	}
	if !reflect.DeepEqual(n.Spec, want.Spec) || n.APIVersion != want.APIVersion || n.Kind != want.Kind || n.Metadata != want.Metadata {
		t.Errorf("Parse =\n%+v\nwant\n%+v", *n, *want)
	}
	if err := n.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if got, want := n.SourcePos(1, 1), (Position{File: "node.yaml", Line: 17, Column: 11, Field: "spec.layers[1].sources[1]"}); got != want {
		t.Errorf("SourcePos(1, 1) = %+v, want %+v", got, want)
	}
	for _, bad := range [][2]int{{-1, 0}, {0, 1}, {2, 0}, {1, -1}} {
		if got := n.SourcePos(bad[0], bad[1]); got != (Position{}) {
			t.Errorf("SourcePos(%d, %d) = %+v, want zero", bad[0], bad[1], got)
		}
	}
	// A spec built in code equals the parsed one in canonical form.
	if got, want := string(n.Canonical()), string(want.Canonical()); got != want {
		t.Errorf("Canonical differs from the equivalent spec built in code:\n%s\n%s", got, want)
	}
}

func TestParseCmdlineString(t *testing.T) {
	n := mustParse(t, strings.Replace(validYAML, "cmdline: [console=ttyS0, quiet]", `cmdline: "console=ttyS0,115200  quiet panic=10"`, 1))
	if want := []string{"console=ttyS0,115200", "quiet", "panic=10"}; !slices.Equal(n.Spec.Kernel.Cmdline, want) {
		t.Errorf("cmdline = %q, want %q", n.Spec.Kernel.Cmdline, want)
	}
}

func TestParseOptionalFields(t *testing.T) {
	doc := `apiVersion: imgctl/v1alpha1
kind: NodeImage
metadata: {name: n1}
spec:
  kubernetes: {version: 1.30.0}
  layers:
  - {role: kernel, sources: [oci://r/k@sha256:00]}
`
	n := mustParse(t, doc)
	if n.Spec.SourceDateEpoch != nil || n.Spec.Kernel.Cmdline != nil || n.Spec.Targets != nil {
		t.Errorf("optional fields set: %+v", n.Spec)
	}
	zero := strings.Replace(doc, "spec:\n", "spec:\n  sourceDateEpoch: 0\n", 1)
	if n := mustParse(t, zero); n.Spec.SourceDateEpoch == nil || *n.Spec.SourceDateEpoch != 0 {
		t.Errorf("sourceDateEpoch 0 not kept: %v", n.Spec.SourceDateEpoch)
	}
}

// edit replaces old (which must occur) with new in validYAML.
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if !strings.Contains(validYAML, old) {
		t.Fatalf("validYAML lacks %q", old)
	}
	return strings.Replace(validYAML, old, new, 1)
}

func TestParseErrors(t *testing.T) {
	// Each want is a list of substrings that must all appear in one of the returned *Error
	// messages; every want must be matched, and no more errors than wants may be returned.
	type want []string
	tests := []struct {
		name string
		data string
		want []want
	}{
		// yaml.v3 locates this at the start of the list that the bad line breaks.
		{"malformed yaml", edit(t, "      version: bookworm\n", "      version: bookworm\n     bad: [\n"),
			[]want{{"node.yaml:10: ", "malformed YAML", "did not find expected '-' indicator"}}},
		{"malformed yaml scanner", edit(t, "      version: bookworm\n", "      version: bookworm: x\n"),
			[]want{{"node.yaml:11: ", "malformed YAML", "mapping values are not allowed"}}},
		{"malformed first line", "apiVersion: a: b\n", []want{{"node.yaml:1: ", "malformed YAML", "mapping values are not allowed"}}},
		{"control character", "apiVersion: x\nkind: \x01\n", []want{{"node.yaml:2:7: ", "malformed YAML", "control characters"}}},
		{"tab indentation", "apiVersion: x\nspec:\n\tlayers: []\n", []want{{"node.yaml:3:", "malformed YAML"}}},
		{"empty", "", []want{{"node.yaml:1: ", "empty document"}}},
		{"only comments", "# nothing\n", []want{{"node.yaml:1: ", "empty document"}}},
		{"not a mapping", "- a\n- b\n", []want{{"node.yaml:1:1: ", "expected a NodeImage document", "got a list"}}},
		{"null document", "~\n", []want{{"node.yaml:1:1: ", "expected a NodeImage document", "got null"}}},
		{"multiple documents", validYAML + "---\napiVersion: x\n", []want{{"node.yaml:21:1: ", "multiple YAML documents"}}},
		{"trailing separator", validYAML + "---\n", []want{{"node.yaml:21:1: ", "multiple YAML documents"}}},
		{"malformed second document", validYAML + "---\na: [\n", []want{{"node.yaml:", "malformed YAML"}}},
		{"wrong apiVersion", edit(t, "apiVersion: imgctl/v1alpha1", "apiVersion: imgctl/v1"),
			[]want{{"node.yaml:1:1: apiVersion: ", `unsupported apiVersion "imgctl/v1"`, "expected imgctl/v1alpha1"}}},
		{"missing apiVersion", edit(t, "apiVersion: imgctl/v1alpha1\n", ""),
			[]want{{"node.yaml:1:1: apiVersion: required field missing", "imgctl/v1alpha1"}}},
		{"wrong kind", edit(t, "kind: NodeImage", "kind: Node"),
			[]want{{"node.yaml:2:1: kind: ", `unsupported kind "Node"`, "expected NodeImage"}}},
		{"unknown top-level field", edit(t, "kind: NodeImage\n", "kind: NodeImage\nstatus: {}\n"),
			[]want{{"node.yaml:3:1: status: unknown field", "expected one of apiVersion, kind, metadata, spec"}}},
		{"unknown layer field", edit(t, "      version: bookworm\n", "      versoin: bookworm\n"),
			[]want{{"node.yaml:11:7: spec.layers[0].versoin: unknown field", "expected one of role, version, sources"}}},
		{"unknown spec field", edit(t, "  targets: [rootfs]\n", "  target: [rootfs]\n"),
			[]want{{"node.yaml:20:3: spec.target: unknown field", "targets"}}},
		{"duplicate field", edit(t, "  targets: [rootfs]\n", "  targets: [rootfs]\n  targets: [raw]\n"),
			[]want{{"node.yaml:21:3: spec.targets: duplicate field", "first at line 20"}}},
		{"alias", edit(t, "  targets: [rootfs]\n", "  targets: &t [rootfs]\n  extra: *t\n"),
			[]want{{"node.yaml:21:3: spec.extra: unknown field"}}},
		{"alias value", strings.Replace(edit(t, "  targets: [rootfs]\n", "  targets: *t\n"), "[console=ttyS0, quiet]", "&t [console=ttyS0, quiet]", 1),
			[]want{{"node.yaml:20:12: spec.targets: ", "aliases are not supported"}}},
		{"missing name", edit(t, "  name: k8s-node            # comment\n", "  {}\n"),
			[]want{{"node.yaml:3:1: metadata.name: required field missing"}}},
		{"missing metadata", edit(t, "metadata:\n  name: k8s-node            # comment\n", ""),
			[]want{{"node.yaml:1:1: metadata.name: required field missing"}}},
		{"bad name", edit(t, "name: k8s-node", "name: K8s_node"),
			[]want{{"node.yaml:4:3: metadata.name: ", `invalid name "K8s_node"`, "lowercase"}}},
		{"name is a list", edit(t, "name: k8s-node", "name: [a]"),
			[]want{{"node.yaml:4:9: metadata.name: expected a string, got a list"}}},
		{"missing version", edit(t, "    version: v1.21.13\n", "    {}\n"),
			[]want{{"node.yaml:6:3: spec.kubernetes.version: required field missing", "X.Y.Z"}}},
		{"missing kubernetes", edit(t, "  kubernetes:\n    version: v1.21.13\n", ""),
			[]want{{"node.yaml:5:1: spec.kubernetes.version: required field missing"}}},
		{"bad k8s version", edit(t, "version: v1.21.13", "version: 1.21"),
			[]want{{"node.yaml:7:5: spec.kubernetes.version: ", `invalid Kubernetes version "1.21"`, "expected X.Y.Z"}}},
		{"k8s prerelease", edit(t, "version: v1.21.13", "version: 1.21.0-rc.1"),
			[]want{{"node.yaml:7:5: spec.kubernetes.version: ", "invalid Kubernetes version"}}},
		{"negative sourceDateEpoch", edit(t, "1700000000", "-1"),
			[]want{{"node.yaml:8:3: spec.sourceDateEpoch: negative value -1", ">= 0"}}},
		{"string sourceDateEpoch", edit(t, "1700000000", `"1700000000"`),
			[]want{{"node.yaml:8:20: spec.sourceDateEpoch: expected an integer", `got str "1700000000"`}}},
		{"overflowing sourceDateEpoch", edit(t, "1700000000", "99999999999999999999"),
			[]want{{"node.yaml:8:20: spec.sourceDateEpoch: expected an integer"}}},
		{"missing layers", edit(t, validYAML[strings.Index(validYAML, "  layers:"):strings.Index(validYAML, "  kernel:")], ""),
			[]want{{"node.yaml:5:1: spec.layers: required field missing"}}},
		{"empty layers", edit(t, validYAML[strings.Index(validYAML, "  layers:"):strings.Index(validYAML, "  kernel:")], "  layers: []\n"),
			[]want{{"node.yaml:9:3: spec.layers: no layers"}}},
		{"layers not a list", edit(t, validYAML[strings.Index(validYAML, "  layers:"):strings.Index(validYAML, "  kernel:")], "  layers: base\n"),
			[]want{{"node.yaml:9:11: spec.layers: expected a list of layers", `got str "base"`}}},
		{"unknown role", edit(t, "role: runtime", "role: kernal"),
			[]want{{`node.yaml:14:7: spec.layers[1].role: unknown role "kernal" (expected one of base, kernel, bootloader, runtime, kubelet, bootstrap, extra)`}}},
		{"missing role", edit(t, "    - role: runtime\n      sources:", "    - sources:"),
			[]want{{"node.yaml:14:7: spec.layers[1].role: required field missing", "base, kernel"}}},
		{"duplicate role", edit(t, "role: runtime", "role: base"),
			[]want{{"node.yaml:14:7: spec.layers[1].role: ", `duplicate role "base"`, "spec.layers[0].role at node.yaml:10:7"}}},
		{"layer without sources", edit(t, "      sources:\n        - deb://deb.debian.org/debian?suite=bookworm&package=containerd\n        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "      sources: []\n"),
			[]want{{"node.yaml:15:7: spec.layers[1].sources: no sources"}}},
		{"layer sources missing", edit(t, "      sources:\n        - deb://deb.debian.org/debian?suite=bookworm&package=containerd\n        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", ""),
			[]want{{"node.yaml:14:7: spec.layers[1].sources: no sources"}}},
		{"sources not a list", edit(t, "      sources:\n        - deb://deb.debian.org/debian?suite=bookworm&package=containerd\n        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "      sources: oci://x\n"),
			[]want{{"node.yaml:15:16: spec.layers[1].sources: expected a list of strings"}}},
		{"empty source", edit(t, "        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "        - \"\"\n"),
			[]want{{"node.yaml:17:11: spec.layers[1].sources[1]: empty source"}}},
		{"whitespace source", edit(t, "        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "        - \"  \"\n"),
			[]want{{"node.yaml:17:11: spec.layers[1].sources[1]: empty source"}}},
		{"null source", edit(t, "        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "        -\n"),
			[]want{{"node.yaml:17:", "spec.layers[1].sources[1]: empty source"}}},
		{"padded source", edit(t, "        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "        - \" oci://x \"\n"),
			[]want{{"node.yaml:17:11: spec.layers[1].sources[1]: ", "leading or trailing whitespace"}}},
		{"source without scheme", edit(t, "        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "        - ./runc.deb\n"),
			[]want{{"node.yaml:17:11: spec.layers[1].sources[1]: ", `source "./runc.deb" is not a URI`, "SCHEME://"}}},
		{"source is a mapping", edit(t, "        - deb://deb.debian.org/debian?suite=bookworm&package=runc\n", "        - {uri: oci://x}\n"),
			[]want{{"node.yaml:17:11: spec.layers[1].sources[1]: expected a string, got a mapping"}}},
		{"duplicate targets", edit(t, "targets: [rootfs]", "targets: [rootfs, raw, rootfs]"),
			[]want{{"node.yaml:20:26: spec.targets[2]: ", `duplicate target "rootfs"`, "spec.targets[0] at node.yaml:20:13"}}},
		{"empty target", edit(t, "targets: [rootfs]", `targets: [rootfs, ""]`),
			[]want{{"node.yaml:20:21: spec.targets[1]: empty target name"}}},
		{"targets not a list", edit(t, "targets: [rootfs]", "targets: {a: b}"),
			[]want{{"node.yaml:20:12: spec.targets: expected a list of strings"}}},
		{"empty cmdline arg", edit(t, "cmdline: [console=ttyS0, quiet]", `cmdline: [console=ttyS0, ""]`),
			[]want{{"node.yaml:19:30: spec.kernel.cmdline[1]: empty kernel argument"}}},
		{"cmdline arg with a newline", edit(t, "cmdline: [console=ttyS0, quiet]", `cmdline: [console=ttyS0, "quiet\nchain http://evil/x"]`),
			[]want{{"spec.kernel.cmdline[1]: kernel argument", "control characters"}}},
		{"cmdline arg with iPXE expansion", edit(t, "cmdline: [console=ttyS0, quiet]", `cmdline: [console=ttyS0, "x=${net0/mac}"]`),
			[]want{{"spec.kernel.cmdline[1]", `"$" is not allowed`}}},
		{"cmdline arg with two words", edit(t, "cmdline: [console=ttyS0, quiet]", `cmdline: [console=ttyS0, "a b"]`),
			[]want{{"spec.kernel.cmdline[1]", "white space"}}},
		{"custom tag", edit(t, "name: k8s-node", "name: !secret k8s-node"),
			[]want{{"node.yaml:4:9: metadata.name: expected a string", "!secret"}}},
		{"many errors", `apiVersion: imgctl/v1alpha1
kind: NodeImage
metadata:
  name: n
spec:
  kubernetes:
    version: "1.x"
  sourceDateEpoch: -3
  layers:
    - role: kernal
      sources: [oci://k]
    - role: base
      sources: []
    - role: base
      sources: [nope]
  targets: [a, a]
`, []want{
			{"node.yaml:7:5: spec.kubernetes.version:"},
			{"node.yaml:8:3: spec.sourceDateEpoch:"},
			{"node.yaml:10:7: spec.layers[0].role: unknown role"},
			{"node.yaml:13:7: spec.layers[1].sources: no sources"},
			{"node.yaml:14:7: spec.layers[2].role: duplicate role", "node.yaml:12:7"},
			{"node.yaml:15:17: spec.layers[2].sources[0]: ", "not a URI"},
			{"node.yaml:16:16: spec.targets[1]: duplicate target"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := Parse("node.yaml", []byte(tt.data))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", n)
			}
			if n != nil {
				t.Errorf("Parse returned a spec with an error")
			}
			errs := Errors(err)
			if len(errs) == 0 {
				t.Fatalf("no *Error in %v", err)
			}
			var msgs []string
			for _, e := range errs {
				if e.File != "node.yaml" || e.Line < 1 {
					t.Errorf("error without file and line: %+v", e)
				}
				msgs = append(msgs, e.Error())
			}
			if len(errs) > len(tt.want) {
				t.Errorf("got %d errors, want %d:\n%s", len(errs), len(tt.want), strings.Join(msgs, "\n"))
			}
		want:
			for _, w := range tt.want {
				for _, m := range msgs {
					if containsAll(m, w) {
						continue want
					}
				}
				t.Errorf("no error contains all of %q; got:\n%s", w, strings.Join(msgs, "\n"))
			}
			if got, want := err.Error(), strings.Join(msgs, "\n"); got != want {
				t.Errorf("err.Error() = %q, want the messages joined by lines %q", got, want)
			}
		})
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		err  Error
		want string
	}{
		{Error{Position{"node.yaml", 12, 7, "spec.layers[2].role"}, "bad"}, "node.yaml:12:7: spec.layers[2].role: bad"},
		{Error{Position{"node.yaml", 3, 0, ""}, "bad"}, "node.yaml:3: bad"},
		{Error{Position{"", 0, 0, "spec.layers[1].sources[0]"}, "bad"}, "spec.layers[1].sources[0]: bad"},
		{Error{Position{}, "bad"}, "bad"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	wrapped := errors.Join(&tt0, errors.Join(&tt1), errors.New("plain"))
	if got := Errors(wrapped); len(got) != 2 || got[0] != &tt0 || got[1] != &tt1 {
		t.Errorf("Errors = %v", got)
	}
}

var tt0, tt1 = Error{Msg: "a"}, Error{Msg: "b"}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(path, []byte(edit(t, "role: runtime", "role: kernal")), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path+":14:7: spec.layers[1].role: unknown role") {
		t.Errorf("Load error = %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) error = %v, want ErrNotExist", err)
	}
	if err := os.WriteFile(path, []byte(validYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Errorf("Load: %v", err)
	}
}

func TestRoles(t *testing.T) {
	want := []Role{"base", "kernel", "bootloader", "runtime", "kubelet", "bootstrap", "extra"}
	got := Roles()
	if !slices.Equal(got, want) {
		t.Fatalf("Roles() = %v", got)
	}
	got[0] = "mutated"
	if Roles()[0] != RoleBase {
		t.Errorf("Roles() shares its slice")
	}
	for _, r := range want {
		if p, err := ParseRole(string(r)); err != nil || p != r {
			t.Errorf("ParseRole(%q) = %q, %v", r, p, err)
		}
	}
	for _, s := range []string{"", "Base", "kernal", " base"} {
		_, err := ParseRole(s)
		if err == nil || !strings.Contains(err.Error(), "expected one of base, kernel, bootloader, runtime, kubelet, bootstrap, extra") {
			t.Errorf("ParseRole(%q) error = %v", s, err)
		}
	}
}

// TestUnsupportedKubernetesVersion: a version the node agent cannot configure (older than 1.21,
// newer than the newest minor whose kubeadm API and sandbox image are known, or not 1.x) is
// refused by Default, Parse (so Load) and Validate, naming the version and the supported range.
func TestUnsupportedKubernetesVersion(t *testing.T) {
	const supported = "(supported: 1.21 to 1.36)"
	for _, v := range []string{"1.20.15", "v1.19.16", "1.0.0", "0.0.0", "2.21.0", "1.37.0"} {
		t.Run(v, func(t *testing.T) {
			want := fmt.Sprintf("spec.kubernetes.version: unsupported Kubernetes version %q %s", v, supported)
			if n, err := Default(v); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("unsupported Kubernetes version %q %s", v, supported)) {
				t.Errorf("Default(%q) = %v, %v; want the supported range", v, n != nil, err)
			}
			_, err := Parse("node.yaml", []byte(edit(t, "version: v1.21.13", "version: "+v)))
			if err == nil || err.Error() != "node.yaml:7:5: "+want {
				t.Errorf("Parse: error = %v\nwant node.yaml:7:5: %s", err, want)
			}
			n := mustParse(t, validYAML)
			n.Spec.Kubernetes.Version = v
			if err := n.Validate(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("unsupported Kubernetes version %q %s", v, supported)) {
				t.Errorf("Validate: error = %v", err)
			}
		})
	}
	for _, v := range []string{"1.21.0", "v1.21.13", "1.30.2", "1.36.0"} {
		if _, err := Default(v); err != nil {
			t.Errorf("Default(%q): %v", v, err)
		}
	}
}

// TestCheckKernelArg: the exported rule the netboot inventory shares with the spec.
func TestCheckKernelArg(t *testing.T) {
	for arg, want := range map[string]string{
		"console=ttyS0":         "",
		`foo="a b"`:             "",
		"":                      "empty kernel argument",
		"a b":                   "white space",
		"x=${uuid}":             `"$" is not allowed`,
		"a\nkernel evil":        "control characters",
		`foo="a b`:              "unbalanced double quote",
		"caf\u00e9":             "printable ASCII",
		"initrd=http://x/y\x7f": "control characters",
	} {
		err := CheckKernelArg(arg)
		switch {
		case want == "" && err != nil:
			t.Errorf("CheckKernelArg(%q) = %v, want nil", arg, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("CheckKernelArg(%q) = %v, want an error containing %q", arg, err, want)
		}
	}
}

package spec

import (
	"bytes"
	_ "embed"
	"fmt"
	"text/template"

	"github.com/imgctl/imgctl/layers/kubeversion"
)

// DefaultFile is the file name that errors in the embedded default spec report.
const DefaultFile = "<embedded default>"

//go:embed default.yaml.tmpl
var defaultYAML string

var defaultTemplate = template.Must(template.New("default.yaml.tmpl").
	Option("missingkey=error").
	Funcs(template.FuncMap{"list": func(s ...string) []string { return s }}).
	Parse(defaultYAML))

// defaultData is what the default template is executed with. Pause is the sandbox image
// pinned by digest, which the default spec bakes into the kubelet layer as an OCI archive that
// the node imports at boot (no pull); "" for minors without a verified digest (containerd pulls
// the image at the first pod).
func defaultData(v kubeversion.Version) any {
	return struct{ Version, Minor, Pause string }{Version: v.String(), Minor: v.MinorVersion(), Pause: v.PinnedSandboxImage()}
}

// Default returns the embedded default spec for Kubernetes k8sVersion (X.Y.Z, optionally with a
// leading v, within kubeversion.Range()): Debian bookworm base, cloud kernel, systemd-boot,
// containerd + runc, and kubelet, kubeadm and kubectl from dl.k8s.io, one role per layer in
// canonical order, target raw (a bootable GPT disk).
func Default(k8sVersion string) (*NodeImage, error) {
	v, err := kubeversion.Parse(k8sVersion)
	if err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	var buf bytes.Buffer
	if err := defaultTemplate.Execute(&buf, defaultData(v)); err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	return Parse(DefaultFile, buf.Bytes())
}

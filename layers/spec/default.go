package spec

import (
	"bytes"
	_ "embed"
	"fmt"
	"text/template"
)

// DefaultFile is the file name that errors in the embedded default spec report.
const DefaultFile = "<embedded default>"

//go:embed default.yaml.tmpl
var defaultYAML string

var defaultTemplate = template.Must(template.New("default.yaml.tmpl").
	Option("missingkey=error").
	Funcs(template.FuncMap{"list": func(s ...string) []string { return s }}).
	Parse(defaultYAML))

// Default returns the embedded default spec for Kubernetes k8sVersion (X.Y.Z, optionally with a
// leading v): Debian bookworm base, cloud kernel, systemd-boot, containerd + runc, and kubelet,
// kubeadm and kubectl from dl.k8s.io, one role per layer in canonical order, target raw (a bootable GPT disk).
func Default(k8sVersion string) (*NodeImage, error) {
	v, err := ParseKubernetesVersion(k8sVersion)
	if err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	var buf bytes.Buffer
	data := struct{ Version, Minor string }{Version: v, Minor: minorOf(v)}
	if err := defaultTemplate.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	return Parse(DefaultFile, buf.Bytes())
}

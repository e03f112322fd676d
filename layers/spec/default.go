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

// sandboxImages pins, per Kubernetes minor, the sandbox (pause) image that minor's kubeadm
// expects, by the digest registry.k8s.io serves for that tag (the same image k8s.gcr.io served).
// The default spec bakes it into the kubelet layer as an OCI archive, which the node imports at
// boot: no pull. Minors without a verified digest here get no baked pause image (containerd
// pulls it at the first pod); add a line when you have checked one.
var sandboxImages = map[string]string{
	"1.21": "registry.k8s.io/pause:3.4.1@sha256:6c3835cab3980f11b83277305d0d736051c32b17606f5ec59f1dda67c9ba3810",
}

// Default returns the embedded default spec for Kubernetes k8sVersion (X.Y.Z, optionally with a
// leading v): Debian bookworm base, cloud kernel, systemd-boot, containerd + runc, and kubelet,
// kubeadm and kubectl from dl.k8s.io, one role per layer in canonical order, target raw (a bootable GPT disk).
func Default(k8sVersion string) (*NodeImage, error) {
	v, err := ParseKubernetesVersion(k8sVersion)
	if err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	var buf bytes.Buffer
	data := struct{ Version, Minor, Pause string }{Version: v, Minor: minorOf(v), Pause: sandboxImages[minorOf(v)]}
	if err := defaultTemplate.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	return Parse(DefaultFile, buf.Bytes())
}

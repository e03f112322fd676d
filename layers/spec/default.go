package spec

import (
	"bytes"
	_ "embed"
	"fmt"
	"slices"
	"strings"
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
func defaultData(v kubeversion.Version, f Flavor) any {
	return struct {
		Version, Minor, Pause string
		Flavor                Flavor
	}{Version: v.String(), Minor: v.MinorVersion(), Pause: v.PinnedSandboxImage(), Flavor: f}
}

// Flavor is a variant of the embedded default spec: which Debian kernel package its kernel layer
// follows, and which firmware packages (from Debian's non-free-firmware component) it adds.
type Flavor struct {
	Name     string
	Kernel   string   // Debian metapackage, followed to its linux-image-RELEASE package
	Firmware []string // non-free-firmware packages merged into the kernel layer
	About    string   // one line for help texts
}

// FlavorCloud and FlavorMetal name the flavors of the embedded default spec.
const (
	FlavorCloud = "cloud"
	FlavorMetal = "metal"
)

// flavors of the embedded default, the first the default. Metal's firmware covers what the
// generic kernel's server NIC drivers request (modinfo -F firmware, Debian bookworm 6.1):
// ice's DDP package (intel/ice/ddp/ice.pkg) and tg3's tigon/*.bin are in firmware-misc-nonfree,
// bnx2x's in firmware-bnx2x and bnx2's in firmware-bnx2; igb, ixgbe, i40e, e1000e, mlx5_core,
// bnxt_en and ena request none, nor do megaraid_sas, mpt3sas, ahci and nvme.
var flavors = []Flavor{
	{Name: FlavorCloud, Kernel: "linux-image-cloud-amd64",
		About: "VMs and clouds: Debian's cloud kernel, virtio, NVMe and ENA but few physical drivers"},
	{Name: FlavorMetal, Kernel: "linux-image-amd64", Firmware: []string{"firmware-misc-nonfree", "firmware-bnx2x", "firmware-bnx2"},
		About: "bare metal: Debian's generic kernel with server NIC, RAID and HBA drivers, plus NIC firmware"},
}

// Flavors returns the flavors of the embedded default spec, the default (cloud) first.
func Flavors() []Flavor {
	out := slices.Clone(flavors)
	for i := range out {
		out[i].Firmware = slices.Clone(out[i].Firmware)
	}
	return out
}

// FlavorNames returns the names of Flavors(), the default first.
func FlavorNames() []string {
	names := make([]string, len(flavors))
	for i, f := range flavors {
		names[i] = f.Name
	}
	return names
}

// Default returns the embedded default spec for Kubernetes k8sVersion (X.Y.Z, optionally with a
// leading v, within kubeversion.Range()) in the cloud flavor: Debian bookworm base, cloud kernel, systemd-boot, containerd +
// runc + the CNI plugins (containernetworking-plugins), and kubelet, kubeadm and kubectl from dl.k8s.io, one role per layer in canonical order,
// target raw (a bootable GPT disk).
func Default(k8sVersion string) (*NodeImage, error) {
	return DefaultFlavor(k8sVersion, FlavorCloud)
}

// DefaultFlavor is Default in the named flavor (see Flavors); an unknown flavor is an error
// that lists the flavors.
func DefaultFlavor(k8sVersion, flavor string) (*NodeImage, error) {
	i := slices.IndexFunc(flavors, func(f Flavor) bool { return f.Name == flavor })
	if i < 0 {
		return nil, fmt.Errorf("default spec: unknown flavor %q (expected one of %s)", flavor, strings.Join(FlavorNames(), ", "))
	}
	v, err := kubeversion.Parse(k8sVersion)
	if err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	doc, err := renderDefault(v, flavors[i])
	if err != nil {
		return nil, fmt.Errorf("default spec: %w", err)
	}
	return Parse(DefaultFile, doc)
}

// renderDefault executes the default spec's template for version v in flavor f.
func renderDefault(v kubeversion.Version, f Flavor) ([]byte, error) {
	var buf bytes.Buffer
	if err := defaultTemplate.Execute(&buf, defaultData(v, f)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

package spec

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/layers/kubeversion"
)

// APIVersion and Kind identify a NodeImage document.
const (
	APIVersion = "imgctl/v1alpha1"
	Kind       = "NodeImage"
)

// Role says what a layer contributes to the image. Each role appears at most once in a spec.
type Role string

// The layer roles, in canonical order.
const (
	RoleBase       Role = "base"
	RoleKernel     Role = "kernel"
	RoleBootloader Role = "bootloader"
	RoleRuntime    Role = "runtime"
	RoleKubelet    Role = "kubelet"
	RoleBootstrap  Role = "bootstrap"
	RoleExtra      Role = "extra"
)

var roles = []Role{RoleBase, RoleKernel, RoleBootloader, RoleRuntime, RoleKubelet, RoleBootstrap, RoleExtra}

// Roles returns every role in canonical order (base first, extra last).
func Roles() []Role { return slices.Clone(roles) }

// ParseRole returns the Role named s; the error lists the valid roles.
func ParseRole(s string) (Role, error) {
	if r := Role(s); rank(r) >= 0 {
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q (expected one of %s)", s, roleList())
}

func roleList() string {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

// rank is r's index in Roles(), or -1 if r is not a known role.
func rank(r Role) int { return slices.Index(roles, r) }

// NodeImage is a parsed spec document. Specs returned by Parse, Load and Default remember where
// each value came from, for error messages; specs built in code have no positions.
type NodeImage struct {
	APIVersion string
	Kind       string
	Metadata   Metadata
	Spec       Spec

	file     string
	pos      map[string]itemPos // by field path: the key (or list item) of a value
	layerPos []layerPos         // parallel to Spec.Layers as parsed
	bad      map[string]bool    // fields that failed to decode (Validate stays quiet about them)
}

// Metadata names the image.
type Metadata struct {
	Name string
}

// Spec is the body of a NodeImage.
type Spec struct {
	// Flavor names the variant of the image (e.g. cloud or metal for the embedded default); it is
	// recorded in the image manifest. Empty: not set.
	Flavor          string
	Kubernetes      Kubernetes
	SourceDateEpoch *int64 // nil: not set
	Layers          []Layer
	Kernel          Kernel
	Targets         []string
}

// Kubernetes pins the Kubernetes version, X.Y.Z without a leading v (see package kubeversion).
type Kubernetes struct {
	Version string
}

// Layer is one image layer: a role, a free-text version recorded in the image manifest, and the
// source URIs merged, in order, into the layer.
type Layer struct {
	Role    Role
	Version string
	Sources []string
}

// Kernel holds kernel settings.
type Kernel struct {
	Cmdline []string
}

// srcPos is a 1-based line and column; zero means unknown.
type srcPos struct{ line, col int }

// itemPos is the place of a value, and for list items the value found there (so a position is
// only reported while the value is unchanged).
type itemPos struct {
	srcPos
	val     string
	checked bool // compare val before trusting the position
}

type layerPos struct {
	ok         bool
	role       Role // as parsed: guards against Spec.Layers edited behind our back
	item       srcPos
	roleKey    srcPos
	versionKey srcPos
	sourcesKey srcPos
	sources    []itemPos
}

// Layer returns the layer with role r.
func (n *NodeImage) Layer(r Role) (*Layer, bool) {
	for i := range n.Spec.Layers {
		if n.Spec.Layers[i].Role == r {
			return &n.Spec.Layers[i], true
		}
	}
	return nil, false
}

// SetSources applies a ROLE=URI override: it replaces the sources of r's layer with a copy of
// uris, or, if the spec has no such layer, inserts one at r's canonical position (before the
// first layer whose role comes later in Roles()). It does not change n if it returns an error.
func (n *NodeImage) SetSources(r Role, uris []string) error {
	if _, err := ParseRole(string(r)); err != nil {
		return fmt.Errorf("source override: %w", err)
	}
	if len(uris) == 0 {
		return fmt.Errorf("source override for role %q: no sources", r)
	}
	for _, u := range uris {
		if msg := checkSource(u); msg != "" {
			return fmt.Errorf("source override for role %q: %s", r, msg)
		}
	}
	uris = slices.Clone(uris)
	for i := range n.Spec.Layers {
		if n.Spec.Layers[i].Role == r {
			n.Spec.Layers[i].Sources = uris
			if lp := n.layerAt(i); lp != nil {
				lp.sources = nil
				lp.sourcesKey = srcPos{}
			}
			return nil
		}
	}
	at := len(n.Spec.Layers)
	for i, l := range n.Spec.Layers {
		if rank(l.Role) > rank(r) {
			at = i
			break
		}
	}
	n.Spec.Layers = slices.Insert(n.Spec.Layers, at, Layer{Role: r, Sources: uris})
	if n.layerPos != nil {
		for len(n.layerPos) < at {
			n.layerPos = append(n.layerPos, layerPos{})
		}
		n.layerPos = slices.Insert(n.layerPos, at, layerPos{})
	}
	return nil
}

// SourcePos returns the position of spec.layers[layer].sources[source], or the zero Position if
// that source did not come from the parsed file (defaults, overrides, edits) or does not exist.
func (n *NodeImage) SourcePos(layer, source int) Position {
	lp := n.layerAt(layer)
	if lp == nil || source < 0 || source >= len(lp.sources) || source >= len(n.Spec.Layers[layer].Sources) {
		return Position{}
	}
	ip := lp.sources[source]
	if ip.line == 0 || ip.val != n.Spec.Layers[layer].Sources[source] {
		return Position{}
	}
	return Position{File: n.file, Line: ip.line, Column: ip.col, Field: sourceField(layer, source)}
}

// layerAt returns the parsed positions of Spec.Layers[i], or nil if there are none.
func (n *NodeImage) layerAt(i int) *layerPos {
	if i < 0 || i >= len(n.layerPos) || i >= len(n.Spec.Layers) {
		return nil
	}
	lp := &n.layerPos[i]
	if !lp.ok || lp.role != n.Spec.Layers[i].Role {
		return nil
	}
	return lp
}

func layerField(i int) string     { return fmt.Sprintf("spec.layers[%d]", i) }
func sourceField(i, j int) string { return fmt.Sprintf("spec.layers[%d].sources[%d]", i, j) }

// checkSource returns why s is not acceptable as a source URI, or "".
// Full URI syntax is checked by the sources package; here we only catch obvious mistakes.
func checkSource(s string) string {
	switch {
	case strings.TrimSpace(s) == "":
		return "empty source (expected a URI such as oci://REGISTRY/REPO@sha256:...)"
	case strings.TrimSpace(s) != s:
		return fmt.Sprintf("source %q has leading or trailing whitespace", s)
	case !strings.Contains(s, "://"):
		return fmt.Sprintf("source %q is not a URI (expected SCHEME://..., e.g. oci://, https://, deb://, mmdebstrap://)", s)
	}
	return ""
}

// normalVersion returns the Kubernetes version s without a leading v if it is a supported
// version, else s unchanged (Validate reports it as the user wrote it).
func normalVersion(s string) string {
	if v, err := kubeversion.Parse(s); err == nil {
		return v.String()
	}
	return s
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// flavorRE is a flavor name: a DNS label.
var flavorRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

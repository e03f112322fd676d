// Package kubeversion is imgctl's knowledge of Kubernetes releases: the version grammar, the
// supported range and what changes from one minor to the next (the kubeadm configuration API, the
// sandbox image). The build side (layers/spec) and the node agent (imgctl-node's render) both use
// it, so a version the node agent cannot configure is refused when the image is built. It imports
// only the standard library.
package kubeversion

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// The supported Kubernetes releases are 1.OldestMinor to 1.NewestMinor, any patch.
//
// 1.21 is the oldest: the node agent's kubeadm and kubelet settings start there (the render
// oracle tests run kubeadm and kubelet 1.21.13); older minors need settings it does not write.
//
// 1.36 is the newest: every per-minor table below has been checked up to it. Its kubeadm reads
// kubeadm.k8s.io/v1beta4, the newest configuration API the node agent writes, its sandbox image is
// pause 3.10.2, and the node agent's kubelet flag gates go up to 1.35 (which removed
// --pod-infra-container-image). Before raising it, check the next minor's kubeadm API (a v1beta5
// needs the node agent to write it), its kubeadm PauseVersion and the kubelet flags it removed.
const (
	OldestMinor = 21
	NewestMinor = 36
)

// supportedMajor is the only Kubernetes major there is.
const supportedMajor = 1

// Range describes the supported versions in messages: "1.21 to 1.36".
func Range() string {
	return fmt.Sprintf("%d.%d to %d.%d", supportedMajor, OldestMinor, supportedMajor, NewestMinor)
}

// Errors from Parse wrap one of these.
var (
	// ErrInvalid: the text is not a version X.Y.Z.
	ErrInvalid = errors.New("invalid Kubernetes version")
	// ErrUnsupported: a version outside Range().
	ErrUnsupported = errors.New("unsupported Kubernetes version")
)

// grammar is a Kubernetes release version, MAJOR.MINOR.PATCH with an optional leading v: no
// leading zeros, no pre-release or build suffix; at most 9 digits per number, so each fits an int.
var grammar = regexp.MustCompile(`^v?(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$`)

// Version is a supported Kubernetes release. The zero Version is not one; Parse returns only
// versions within Range().
type Version struct {
	major, minor, patch int
}

// Parse reads a Kubernetes version X.Y.Z, optionally with a leading v (1.21.13, v1.31.4), and
// checks that it is supported. Its errors wrap ErrInvalid or ErrUnsupported and quote s; both name
// the supported range.
func Parse(s string) (Version, error) {
	m := grammar.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("%w %q (expected X.Y.Z such as 1.21.13; supported: %s)", ErrInvalid, s, Range())
	}
	var n [3]int
	for i := range n {
		var err error
		if n[i], err = strconv.Atoi(m[i+1]); err != nil { // unreachable: at most 9 digits
			return Version{}, fmt.Errorf("%w %q: %w", ErrInvalid, s, err)
		}
	}
	v := Version{major: n[0], minor: n[1], patch: n[2]}
	if v.major != supportedMajor || v.minor < OldestMinor || v.minor > NewestMinor {
		return Version{}, fmt.Errorf("%w %q (supported: %s)", ErrUnsupported, s, Range())
	}
	return v, nil
}

// Major returns X of X.Y.Z.
func (v Version) Major() int { return v.major }

// Minor returns Y of X.Y.Z.
func (v Version) Minor() int { return v.minor }

// Patch returns Z of X.Y.Z.
func (v Version) Patch() int { return v.patch }

// String returns X.Y.Z, without a leading v.
func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch) }

// MinorVersion returns X.Y, e.g. "1.21".
func (v Version) MinorVersion() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

// AtLeast reports whether v is 1.minor.0 or newer.
func (v Version) AtLeast(minor int) bool { return v.minor >= minor }

// Kubeadm configuration API versions (the apiVersion of InitConfiguration, ClusterConfiguration
// and JoinConfiguration).
const (
	KubeadmV1beta2 = "kubeadm.k8s.io/v1beta2"
	KubeadmV1beta3 = "kubeadm.k8s.io/v1beta3" // kubeadm 1.22 introduced it
	KubeadmV1beta4 = "kubeadm.k8s.io/v1beta4" // kubeadm 1.31 introduced it: extraArgs become lists of {name, value}
)

// since is a per-minor table row: value applies from 1.minor until the next row.
type since[T any] struct {
	minor int
	value T
}

// lookup returns the value of the last row of table (ascending by minor) at or below minor.
// Every table starts at or below OldestMinor (the tests check), so one always applies.
func lookup[T any](table []since[T], minor int) T {
	var v T
	for _, r := range table {
		if r.minor <= minor {
			v = r.value
		}
	}
	return v
}

// kubeadmAPIs is the kubeadm configuration API that each minor's kubeadm reads natively (v1beta2
// goes back to 1.15, before the supported range).
var kubeadmAPIs = []since[string]{
	{21, KubeadmV1beta2},
	{22, KubeadmV1beta3},
	{31, KubeadmV1beta4},
}

// KubeadmAPIVersion returns the kubeadm configuration apiVersion v's kubeadm reads natively:
// v1beta2 for 1.21, v1beta3 for 1.22 to 1.30, v1beta4 from 1.31.
func (v Version) KubeadmAPIVersion() string { return lookup(kubeadmAPIs, v.minor) }

// SandboxRepository serves every pause tag below. kubeadm before 1.25 defaults to k8s.gcr.io,
// which is frozen and redirects here.
const SandboxRepository = "registry.k8s.io/pause"

// pauseTags is kubeadm's constants.PauseVersion by minor.
var pauseTags = []since[string]{
	{21, "3.4.1"},
	{22, "3.5"},
	{23, "3.6"},
	{24, "3.7"},
	{25, "3.8"},
	{26, "3.9"}, // 1.26–1.30
	{31, "3.10"},
	{34, "3.10.1"},
	{36, "3.10.2"},
}

// pauseDigests pins pause tags by the digest registry.k8s.io serves for them (the same image
// k8s.gcr.io served). Builds bake a pinned sandbox image into the image; tags without a verified
// digest here are not baked (containerd pulls them at the first pod): add a line when you have
// checked one.
var pauseDigests = map[string]string{
	"3.4.1": "sha256:6c3835cab3980f11b83277305d0d736051c32b17606f5ec59f1dda67c9ba3810",
}

// SandboxImage returns the sandbox (pause) image v's kubeadm expects the container runtime to
// use, e.g. "registry.k8s.io/pause:3.4.1" for 1.21.
func (v Version) SandboxImage() string {
	return SandboxRepository + ":" + lookup(pauseTags, v.minor)
}

// PinnedSandboxImage returns SandboxImage pinned by digest ("registry.k8s.io/pause:3.4.1@sha256:…"),
// or "" if no digest for its tag has been verified.
func (v Version) PinnedSandboxImage() string {
	d, ok := pauseDigests[lookup(pauseTags, v.minor)]
	if !ok {
		return ""
	}
	return v.SandboxImage() + "@" + d
}

// ControlPlaneRepository is the image repository of the control-plane images imgctl builds
// (scripts/build-control-plane-images.sh) and kubeadm's imageRepository on nodes that run them.
// .invalid never resolves, so nothing is ever pulled from it by accident: the images are baked.
const ControlPlaneRepository = "registry.imgctl.invalid/kubernetes"

// ControlPlaneImage is one image kubeadm expects for a control plane: Component is kubeadm's
// name for it (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, pause, etcd,
// coredns) and Name the full reference, REPOSITORY/COMPONENT:TAG.
type ControlPlaneImage struct {
	Component, Name string
}

// Tag returns the tag of Name ("" if it has none).
func (i ControlPlaneImage) Tag() string {
	slash := strings.LastIndexByte(i.Name, '/')
	colon := strings.LastIndexByte(i.Name, ':')
	if colon <= slash {
		return ""
	}
	return i.Name[colon+1:]
}

// controlPlaneTags holds kubeadm's default etcd and CoreDNS tags (constants.DefaultEtcdVersion or
// SupportedEtcdVersion, and CoreDNSVersion) by minor. Only minors checked against that minor's
// kubeadm ("kubeadm config images list", test/kubelet_boot_test.go) have a row: later minors
// change the etcd tag within a minor's patches, so a row holds for the patches checked.
var controlPlaneTags = map[int]struct{ etcd, coredns string }{
	21: {"3.4.13-0", "v1.8.0"},
}

// ControlPlaneImages returns the seven images v's kubeadm expects with imageRepository repo, in
// the order "kubeadm config images list" prints them, with kubeadm's default tags; nil for a
// minor whose defaults have not been checked (so far only 1.21 has).
func (v Version) ControlPlaneImages(repo string) []ControlPlaneImage {
	tags, ok := controlPlaneTags[v.minor]
	if !ok || v.major != supportedMajor {
		return nil
	}
	kube := "v" + v.String()
	img := func(component, tag string) ControlPlaneImage {
		return ControlPlaneImage{Component: component, Name: repo + "/" + component + ":" + tag}
	}
	return []ControlPlaneImage{
		img("kube-apiserver", kube),
		img("kube-controller-manager", kube),
		img("kube-scheduler", kube),
		img("kube-proxy", kube),
		img("pause", lookup(pauseTags, v.minor)),
		img("etcd", tags.etcd),
		img("coredns", tags.coredns),
	}
}

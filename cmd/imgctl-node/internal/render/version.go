package render

import (
	"fmt"
	"regexp"
	"strconv"
)

// Kubeadm configuration API versions, by the Kubernetes minor that introduced them.
const (
	kubeadmV1beta2 = "kubeadm.k8s.io/v1beta2" // 1.15–1.21 here (kubeadm 1.22 introduced v1beta3)
	kubeadmV1beta3 = "kubeadm.k8s.io/v1beta3" // 1.22–1.30
	kubeadmV1beta4 = "kubeadm.k8s.io/v1beta4" // 1.31 on: extraArgs become lists of {name, value}
)

// minMinor is the oldest supported Kubernetes minor (1.21).
const minMinor = 21

// supportedRange describes the supported versions in errors.
const supportedRange = "1.21 or newer"

// kubeVersion is a parsed Kubernetes release version.
type kubeVersion struct {
	minor int
	raw   string // as given, without a leading "v"
	patch bool   // raw has a patch number (MAJOR.MINOR.PATCH)
}

// versionRE matches [v]1.MINOR[.PATCH[-PRERELEASE]].
var versionRE = regexp.MustCompile(`^v?(1)\.(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?)?$`)

// parseVersion parses a Kubernetes version (1.21, 1.21.13, v1.31.0-rc.1) and checks it is supported.
func parseVersion(s string) (kubeVersion, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return kubeVersion{}, fmt.Errorf("%q is not a Kubernetes version (expected MAJOR.MINOR.PATCH such as 1.21.13; supported: %s)", s, supportedRange)
	}
	minor, err := strconv.Atoi(m[2])
	if err != nil { // the pattern admits only digits; this is an overflow
		return kubeVersion{}, fmt.Errorf("%q is not a Kubernetes version (minor out of range)", s)
	}
	if minor < minMinor {
		return kubeVersion{}, fmt.Errorf("unsupported Kubernetes version %q (expected %s)", s, supportedRange)
	}
	raw := s
	if raw[0] == 'v' {
		raw = raw[1:]
	}
	return kubeVersion{minor: minor, raw: raw, patch: m[3] != ""}, nil
}

// atLeast reports whether v is 1.minor or newer.
func (v kubeVersion) atLeast(minor int) bool { return v.minor >= minor }

// kubeadmAPIVersion is the kubeadm configuration apiVersion this version's kubeadm reads natively.
func (v kubeVersion) kubeadmAPIVersion() string {
	switch {
	case v.atLeast(31):
		return kubeadmV1beta4
	case v.atLeast(22):
		return kubeadmV1beta3
	}
	return kubeadmV1beta2
}

// KubeadmAPIVersion returns the apiVersion of the kubeadm configuration documents (InitConfiguration,
// ClusterConfiguration, JoinConfiguration) that Render writes for Kubernetes k8s (1.21, 1.21.13,
// v1.25.16): "kubeadm.k8s.io/v1beta2" for 1.21, ".../v1beta3" for 1.22–1.30 and ".../v1beta4" from
// 1.31. A version older than 1.21 or one that does not parse is an error naming it and the
// supported range.
func KubeadmAPIVersion(k8s string) (string, error) {
	v, err := parseVersion(k8s)
	if err != nil {
		return "", err
	}
	return v.kubeadmAPIVersion(), nil
}

// sandboxImageRepository serves every pause tag below; kubeadm before 1.25 defaults to k8s.gcr.io,
// which is frozen and redirects here.
const sandboxImageRepository = "registry.k8s.io/pause"

// pauseTags is kubeadm's constants.PauseVersion by Kubernetes minor; a minor newer than the last
// entry takes the last entry's tag.
var pauseTags = []struct {
	minor int
	tag   string
}{
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

// DefaultSandboxImage returns the pause image that kubeadm of k8s's minor expects as the container
// runtime's sandbox image, e.g. "registry.k8s.io/pause:3.4.1" for 1.21. It returns "" for a version
// that does not parse or is older than 1.21 (KubeadmAPIVersion says why).
func DefaultSandboxImage(k8s string) string {
	v, err := parseVersion(k8s)
	if err != nil {
		return ""
	}
	return v.sandboxImage()
}

func (v kubeVersion) sandboxImage() string {
	tag := pauseTags[0].tag
	for _, p := range pauseTags {
		if v.minor >= p.minor {
			tag = p.tag
		}
	}
	return sandboxImageRepository + ":" + tag
}

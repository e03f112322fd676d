package kubeversion

import (
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in                  string
		major, minor, patch int
		str, minorVersion   string
	}{
		{"1.21.13", 1, 21, 13, "1.21.13", "1.21"},
		{"v1.21.0", 1, 21, 0, "1.21.0", "1.21"},
		{"1.25.16", 1, 25, 16, "1.25.16", "1.25"},
		{"v1.31.4", 1, 31, 4, "1.31.4", "1.31"},
		{"1.36.999999999", 1, 36, 999999999, "1.36.999999999", "1.36"},
	} {
		v, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if v.Major() != tc.major || v.Minor() != tc.minor || v.Patch() != tc.patch || v.String() != tc.str || v.MinorVersion() != tc.minorVersion {
			t.Errorf("Parse(%q) = %d %d %d %q %q, want %d %d %d %q %q", tc.in, v.Major(), v.Minor(), v.Patch(), v.String(), v.MinorVersion(),
				tc.major, tc.minor, tc.patch, tc.str, tc.minorVersion)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error
	}{
		{"", ErrInvalid},
		{"latest", ErrInvalid},
		{"1.21", ErrInvalid},
		{"v1.21", ErrInvalid},
		{"1.21.13.1", ErrInvalid},
		{"V1.21.13", ErrInvalid},
		{"vv1.21.13", ErrInvalid},
		{"1.021.3", ErrInvalid},
		{"01.21.1", ErrInvalid},
		{"1.21.x", ErrInvalid},
		{"1.21.13-rc.0", ErrInvalid},
		{"1.21.13+build", ErrInvalid},
		{" 1.21.13", ErrInvalid},
		{"1.21.13 ", ErrInvalid},
		{"1.21.13\n", ErrInvalid},
		{"1.21.9999999999", ErrInvalid},
		{"１.21.13", ErrInvalid}, // fullwidth digit
		{"0.0.0", ErrUnsupported},
		{"1.0.0", ErrUnsupported},
		{"1.19.16", ErrUnsupported},
		{"1.20.15", ErrUnsupported},
		{"v1.20.15", ErrUnsupported},
		{"1.37.0", ErrUnsupported},
		{"1.100.0", ErrUnsupported},
		{"2.21.0", ErrUnsupported},
		{"999999999.21.0", ErrUnsupported},
	} {
		_, err := Parse(tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) error = %v, want %v", tc.in, err, tc.want)
			continue
		}
		want := fmt.Sprintf("%v %q (supported: 1.21 to 1.36)", tc.want, tc.in)
		if tc.want == ErrInvalid {
			want = fmt.Sprintf("invalid Kubernetes version %q (expected X.Y.Z such as 1.21.13; supported: 1.21 to 1.36)", tc.in)
		}
		if err.Error() != want {
			t.Errorf("Parse(%q) error = %q\nwant %q", tc.in, err, want)
		}
	}
}

func TestRange(t *testing.T) {
	if got := Range(); got != "1.21 to 1.36" {
		t.Errorf("Range() = %q", got)
	}
	for _, s := range []string{"1.21.0", "1.36.0"} { // both ends are in it
		if _, err := Parse(s); err != nil {
			t.Errorf("Parse(%q): %v", s, err)
		}
	}
}

func TestAtLeast(t *testing.T) {
	v := mustParse(t, "1.27.3")
	for minor, want := range map[int]bool{21: true, 26: true, 27: true, 28: false, 35: false} {
		if got := v.AtLeast(minor); got != want {
			t.Errorf("1.27.3 AtLeast(%d) = %v, want %v", minor, got, want)
		}
	}
}

func TestKubeadmAPIVersion(t *testing.T) {
	for in, want := range map[string]string{
		"1.21.13": KubeadmV1beta2, "v1.21.0": KubeadmV1beta2,
		"1.22.0": KubeadmV1beta3, "1.25.16": KubeadmV1beta3, "1.30.14": KubeadmV1beta3,
		"1.31.0": KubeadmV1beta4, "1.31.4": KubeadmV1beta4, "1.35.1": KubeadmV1beta4, "1.36.0": KubeadmV1beta4,
	} {
		if got := mustParse(t, in).KubeadmAPIVersion(); got != want {
			t.Errorf("%s: KubeadmAPIVersion() = %q, want %q", in, got, want)
		}
	}
	if KubeadmV1beta2 != "kubeadm.k8s.io/v1beta2" || KubeadmV1beta3 != "kubeadm.k8s.io/v1beta3" || KubeadmV1beta4 != "kubeadm.k8s.io/v1beta4" {
		t.Errorf("API version constants: %q %q %q", KubeadmV1beta2, KubeadmV1beta3, KubeadmV1beta4)
	}
}

func TestSandboxImage(t *testing.T) {
	const pinned341 = "registry.k8s.io/pause:3.4.1@sha256:6c3835cab3980f11b83277305d0d736051c32b17606f5ec59f1dda67c9ba3810"
	for in, want := range map[string]struct{ tag, pinned string }{
		"1.21.13": {"3.4.1", pinned341}, "v1.21.0": {"3.4.1", pinned341},
		"1.22.17": {"3.5", ""}, "1.23.17": {"3.6", ""}, "1.24.17": {"3.7", ""}, "1.25.16": {"3.8", ""},
		"1.26.15": {"3.9", ""}, "1.27.16": {"3.9", ""}, "1.28.15": {"3.9", ""}, "1.29.14": {"3.9", ""}, "1.30.14": {"3.9", ""},
		"1.31.4": {"3.10", ""}, "1.32.0": {"3.10", ""}, "1.33.1": {"3.10", ""},
		"1.34.0": {"3.10.1", ""}, "1.35.0": {"3.10.1", ""}, "1.36.0": {"3.10.2", ""},
	} {
		v := mustParse(t, in)
		if got := v.SandboxImage(); got != "registry.k8s.io/pause:"+want.tag {
			t.Errorf("%s: SandboxImage() = %q, want registry.k8s.io/pause:%s", in, got, want.tag)
		}
		if got := v.PinnedSandboxImage(); got != want.pinned {
			t.Errorf("%s: PinnedSandboxImage() = %q, want %q", in, got, want.pinned)
		}
	}
}

// TestTablesCoverRange: every per-minor table starts at or below the oldest supported minor (so
// every supported version has a value), ascends, and has no row past the newest (a row there
// means NewestMinor is out of date); every pinned digest belongs to a tag some minor uses.
func TestTablesCoverRange(t *testing.T) {
	check := func(name string, minors []int) {
		if len(minors) == 0 || minors[0] > OldestMinor {
			t.Errorf("%s: first row %v does not cover 1.%d", name, minors, OldestMinor)
		}
		for i, m := range minors {
			if i > 0 && m <= minors[i-1] {
				t.Errorf("%s: rows out of order at 1.%d", name, m)
			}
			if m > NewestMinor {
				t.Errorf("%s: row for 1.%d is past NewestMinor 1.%d", name, m, NewestMinor)
			}
		}
	}
	check("kubeadmAPIs", rowMinors(kubeadmAPIs))
	check("pauseTags", rowMinors(pauseTags))
	for minor := range controlPlaneTags {
		if minor < OldestMinor || minor > NewestMinor {
			t.Errorf("controlPlaneTags: row for 1.%d is outside %s", minor, Range())
		}
	}
	tags := map[string]bool{}
	for _, r := range pauseTags {
		tags[r.value] = true
	}
	for tag, d := range pauseDigests {
		if !tags[tag] {
			t.Errorf("pauseDigests[%q]: no minor uses that tag", tag)
		}
		if !strings.HasPrefix(d, "sha256:") || len(d) != len("sha256:")+64 {
			t.Errorf("pauseDigests[%q] = %q, want sha256:<64 hex>", tag, d)
		}
	}
	for minor := OldestMinor; minor <= NewestMinor; minor++ {
		v := mustParse(t, "1."+strconv.Itoa(minor)+".0")
		if v.KubeadmAPIVersion() == "" || strings.HasSuffix(v.SandboxImage(), ":") {
			t.Errorf("1.%d: no kubeadm API (%q) or pause tag (%q)", minor, v.KubeadmAPIVersion(), v.SandboxImage())
		}
	}
}

func rowMinors[T any](table []since[T]) []int {
	var out []int
	for _, r := range table {
		out = append(out, r.minor)
	}
	return out
}

// TestLeaf: the package imports only the standard library, so the node agent and the build side
// can both import it without pulling anything else in.
func TestLeaf(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range parsed.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s: kubeversion is a leaf (standard library only)", f, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no source files found: the check is not looking at the package")
	}
}

func mustParse(t *testing.T, s string) Version {
	t.Helper()
	v, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestControlPlaneImages(t *testing.T) {
	const r = "registry.imgctl.invalid/kubernetes"
	if ControlPlaneRepository != r {
		t.Errorf("ControlPlaneRepository = %q, want %q", ControlPlaneRepository, r)
	}
	want := []ControlPlaneImage{
		{"kube-apiserver", r + "/kube-apiserver:v1.21.13"},
		{"kube-controller-manager", r + "/kube-controller-manager:v1.21.13"},
		{"kube-scheduler", r + "/kube-scheduler:v1.21.13"},
		{"kube-proxy", r + "/kube-proxy:v1.21.13"},
		{"pause", r + "/pause:3.4.1"},
		{"etcd", r + "/etcd:3.4.13-0"},
		{"coredns", r + "/coredns:v1.8.0"},
	}
	if got := mustParse(t, "v1.21.13").ControlPlaneImages(r); !slices.Equal(got, want) {
		t.Errorf("1.21.13: ControlPlaneImages(%q) =\n%v\nwant\n%v", r, got, want)
	}
	// Another repository and patch: only the repository and the kube-* tags change.
	got := mustParse(t, "1.21.0").ControlPlaneImages("example.test:5000/k8s")
	if len(got) != 7 || got[0].Name != "example.test:5000/k8s/kube-apiserver:v1.21.0" || got[4].Name != "example.test:5000/k8s/pause:3.4.1" || got[5].Name != "example.test:5000/k8s/etcd:3.4.13-0" {
		t.Errorf("1.21.0: ControlPlaneImages = %v", got)
	}
	// Minors whose kubeadm defaults nobody has checked have no list: a wrong tag would be a pull
	// of an image that is not there.
	for _, v := range []string{"1.22.0", "1.36.0"} {
		if got := mustParse(t, v).ControlPlaneImages(r); got != nil {
			t.Errorf("%s: ControlPlaneImages = %v, want nil (unchecked minor)", v, got)
		}
	}
	if got := (Version{}).ControlPlaneImages(r); got != nil {
		t.Errorf("zero Version: ControlPlaneImages = %v, want nil", got)
	}
}

func TestControlPlaneImageTag(t *testing.T) {
	for _, c := range []struct{ name, tag string }{
		{"registry.imgctl.invalid/kubernetes/etcd:3.4.13-0", "3.4.13-0"},
		{"localhost:5000/etcd:3.5.0-0", "3.5.0-0"},
		{"localhost:5000/etcd", ""},
	} {
		if got := (ControlPlaneImage{Component: "etcd", Name: c.name}).Tag(); got != c.tag {
			t.Errorf("%s: Tag() = %q, want %q", c.name, got, c.tag)
		}
	}
}

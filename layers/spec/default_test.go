package spec

import (
	"slices"
	"strings"
	"testing"
)

func TestDefault(t *testing.T) {
	n, err := Default("1.21.13")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if n.Spec.Flavor != FlavorCloud {
		t.Errorf("flavor = %q, want cloud", n.Spec.Flavor)
	}
	if n.APIVersion != APIVersion || n.Kind != Kind || n.Metadata.Name != "k8s-node-1.21.13" || n.Spec.Kubernetes.Version != "1.21.13" {
		t.Errorf("header = %q %q %q %q", n.APIVersion, n.Kind, n.Metadata.Name, n.Spec.Kubernetes.Version)
	}
	if n.Spec.SourceDateEpoch != nil {
		t.Errorf("sourceDateEpoch = %d, want unset", *n.Spec.SourceDateEpoch)
	}
	deb := "deb://deb.debian.org/debian?suite=bookworm&package="
	bin := func(name string) string {
		u := "https://dl.k8s.io/release/v1.21.13/bin/linux/amd64/" + name
		return u + "#sha256-from=" + u + ".sha256&path=/usr/bin/" + name + "&mode=0755"
	}
	want := []Layer{
		{Role: RoleBase, Sources: []string{"mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&variant=minbase&packages=systemd-sysv,udev,dbus,kmod,iproute2,ca-certificates,iptables,conntrack,ethtool,socat,ebtables,util-linux,mount,e2fsprogs,logrotate"}},
		{Role: RoleKernel, Sources: []string{deb + "linux-image-cloud-amd64&follow=linux-image-"}},
		{Role: RoleBootloader, Sources: []string{deb + "systemd-boot-efi"}},
		{Role: RoleRuntime, Sources: []string{deb + "containerd", deb + "runc", deb + "containernetworking-plugins"}},
		{Role: RoleKubelet, Version: "1.21.13", Sources: []string{bin("kubelet"), bin("kubeadm"), bin("kubectl"),
			"oci://registry.k8s.io/pause:3.4.1@sha256:6c3835cab3980f11b83277305d0d736051c32b17606f5ec59f1dda67c9ba3810#image=/usr/lib/imgctl/images/pause.tar"}},
		{Role: RoleBootstrap, Sources: []string{"imgctl://bootstrap"}},
	}
	if len(n.Spec.Layers) != len(want) {
		t.Fatalf("layers = %+v", n.Spec.Layers)
	}
	for i := range want {
		got := n.Spec.Layers[i]
		if got.Role != want[i].Role || got.Version != want[i].Version || !slices.Equal(got.Sources, want[i].Sources) {
			t.Errorf("layer %d =\n%+v\nwant\n%+v", i, got, want[i])
		}
	}
	if want := []string{"console=tty0", "console=ttyS0,115200", "panic=10"}; !slices.Equal(n.Spec.Kernel.Cmdline, want) {
		t.Errorf("cmdline = %q, want %q", n.Spec.Kernel.Cmdline, want)
	}
	if !slices.Equal(n.Spec.Targets, []string{"raw"}) {
		t.Errorf("targets = %q", n.Spec.Targets)
	}
	// Positions point into the embedded file.
	if p := n.SourcePos(3, 1); p.File != DefaultFile || p.Line == 0 || p.Field != "spec.layers[3].sources[1]" {
		t.Errorf("SourcePos(3, 1) = %+v", p)
	}
	// The default is a pure function of the version.
	n2, err := Default("v1.21.13")
	if err != nil {
		t.Fatal(err)
	}
	if n.Digest() != n2.Digest() {
		t.Errorf("Default(v1.21.13) differs from Default(1.21.13)")
	}
	n3, err := Default("1.30.2")
	if err != nil {
		t.Fatal(err)
	}
	if n3.Digest() == n.Digest() || n3.Metadata.Name != "k8s-node-1.30.2" || !strings.Contains(n3.Spec.Layers[4].Sources[0], "/v1.30.2/") {
		t.Errorf("Default(1.30.2) = %s", n3.Canonical())
	}
}

func TestDefaultBadVersion(t *testing.T) {
	for _, v := range []string{"", "1.21", "latest", "1.21.13\nspec: {}", `1.21.13"`} {
		n, err := Default(v)
		if err == nil {
			t.Errorf("Default(%q) = %s", v, n.Canonical())
			continue
		}
		if !strings.Contains(err.Error(), "invalid Kubernetes version") || !strings.Contains(err.Error(), "X.Y.Z") {
			t.Errorf("Default(%q) error = %v", v, err)
		}
	}
}

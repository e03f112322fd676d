package spec

import (
	"slices"
	"strings"
	"testing"
)

func TestDefaultFlavors(t *testing.T) {
	if got := FlavorNames(); !slices.Equal(got, []string{"cloud", "metal"}) {
		t.Fatalf("FlavorNames() = %q", got)
	}
	cloud, err := Default("1.21.13")
	if err != nil {
		t.Fatal(err)
	}
	cloud2, err := DefaultFlavor("1.21.13", FlavorCloud)
	if err != nil {
		t.Fatal(err)
	}
	if cloud.Digest() != cloud2.Digest() || cloud.Spec.Flavor != "cloud" {
		t.Errorf("Default is not the cloud flavor: flavor %q\n%s\n%s", cloud.Spec.Flavor, cloud.Canonical(), cloud2.Canonical())
	}
	metal, err := DefaultFlavor("v1.21.13", FlavorMetal)
	if err != nil {
		t.Fatal(err)
	}
	if err := metal.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if metal.Spec.Flavor != "metal" || metal.Digest() == cloud.Digest() {
		t.Errorf("metal flavor = %q, digest %s (cloud %s)", metal.Spec.Flavor, metal.Digest(), cloud.Digest())
	}
	deb := "deb://deb.debian.org/debian?suite=bookworm&"
	k, _ := metal.Layer(RoleKernel)
	want := []string{
		deb + "package=linux-image-amd64&follow=linux-image-",
		deb + "component=non-free-firmware&package=firmware-misc-nonfree",
		deb + "component=non-free-firmware&package=firmware-bnx2x",
		deb + "component=non-free-firmware&package=firmware-bnx2",
	}
	if !slices.Equal(k.Sources, want) {
		t.Errorf("metal kernel sources =\n%q\nwant\n%q", k.Sources, want)
	}
	// Everything but the kernel layer and the flavor is the cloud default.
	if len(metal.Spec.Layers) != len(cloud.Spec.Layers) {
		t.Fatalf("metal layers = %+v", metal.Spec.Layers)
	}
	for i, l := range metal.Spec.Layers {
		c := cloud.Spec.Layers[i]
		if l.Role != c.Role || l.Version != c.Version || (l.Role != RoleKernel && !slices.Equal(l.Sources, c.Sources)) {
			t.Errorf("metal layer %d = %+v, cloud %+v", i, l, c)
		}
	}
	if !slices.Equal(metal.Spec.Kernel.Cmdline, cloud.Spec.Kernel.Cmdline) || !slices.Equal(metal.Spec.Targets, cloud.Spec.Targets) || metal.Metadata.Name != cloud.Metadata.Name {
		t.Errorf("metal = %s\ncloud = %s", metal.Canonical(), cloud.Canonical())
	}
	// Flavors() is a copy: changing it does not change the default.
	fl := Flavors()
	fl[1].Kernel, fl[1].Firmware[0] = "x", "y"
	if again, _ := DefaultFlavor("1.21.13", FlavorMetal); again.Digest() != metal.Digest() {
		t.Error("Flavors() shares its data with the default spec")
	}
}

func TestDefaultUnknownFlavor(t *testing.T) {
	for _, f := range []string{"", "gpu", "Metal", "metal\nspec: {}"} {
		n, err := DefaultFlavor("1.21.13", f)
		if err == nil {
			t.Errorf("DefaultFlavor(%q) = %s", f, n.Canonical())
			continue
		}
		if want := "(expected one of cloud, metal)"; !strings.Contains(err.Error(), "unknown flavor") || !strings.Contains(err.Error(), want) {
			t.Errorf("DefaultFlavor(%q) error = %v, want it to name the flavor and %s", f, err, want)
		}
	}
}

func TestSpecFlavor(t *testing.T) {
	plain := mustParse(t, validYAML)
	if plain.Spec.Flavor != "" || strings.Contains(string(plain.Canonical()), "flavor") {
		t.Errorf("a spec without a flavor: %q, %s", plain.Spec.Flavor, plain.Canonical())
	}
	withFlavor := strings.Replace(validYAML, "spec:\n", "spec:\n  flavor: gpu-a100\n", 1)
	n := mustParse(t, withFlavor)
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	if n.Spec.Flavor != "gpu-a100" || !strings.Contains(string(n.Canonical()), `"flavor":"gpu-a100"`) || n.Digest() == plain.Digest() {
		t.Errorf("flavor = %q, canonical %s", n.Spec.Flavor, n.Canonical())
	}
	for _, bad := range []string{"GPU", "-x", "a_b", strings.Repeat("a", 64)} {
		n, err := Parse("node.yaml", []byte(strings.Replace(validYAML, "spec:\n", "spec:\n  flavor: "+bad+"\n", 1)))
		if err == nil {
			err = n.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), "node.yaml:") || !strings.Contains(err.Error(), "spec.flavor") || !strings.Contains(err.Error(), "invalid flavor") {
			t.Errorf("flavor %q: error = %v", bad, err)
		}
	}
}

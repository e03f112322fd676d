package test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/kubeversion"
	"github.com/imgctl/imgctl/layers/testenv"
)

// kubeadmImagesList runs the real kubeadm's "config images list" with args, offline (any HTTP(S)
// request goes to a closed loopback port), and returns the names it prints.
func kubeadmImagesList(t *testing.T, args ...string) []string {
	t.Helper()
	kubeadm := filepath.Join(kubernetesTools(t), "kubeadm")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubeadm, append([]string{"config", "images", "list"}, args...)...)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY="}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubeadm config images list %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.Fields(string(out))
}

// TestControlPlaneImagesMatchKubeadm: kubeversion's control-plane image names are exactly what
// the real kubeadm 1.21.13 lists for our image repository and for another one, in its order.
func TestControlPlaneImagesMatchKubeadm(t *testing.T) {
	testenv.Integration(t, "runs the real kubeadm 1.21.13 (scripts/build-kubernetes.sh)")
	v, err := kubeversion.Parse("1.21.13")
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{kubeversion.ControlPlaneRepository, "127.0.0.1:5000/k8s"} {
		var want []string
		for _, img := range v.ControlPlaneImages(repo) {
			want = append(want, img.Name)
		}
		got := kubeadmImagesList(t, "--kubernetes-version", "v1.21.13", "--image-repository", repo)
		if !slices.Equal(got, want) {
			t.Errorf("repository %s: kubeadm lists\n%s\nkubeversion.ControlPlaneImages has\n%s", repo, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// TestControlPlaneLayoutMatchesKubeadm: the layout scripts/build-control-plane-images.sh wrote
// into IMGCTL_CONTROL_PLANE_DIR (opt-in: building it takes minutes) holds exactly the images the
// real kubeadm 1.21.13 lists for imageRepository kubeversion.ControlPlaneRepository, with the
// etcd and CoreDNS tags of the baked images (etcd.local.imageTag, dns.imageTag), and sources.txt
// bakes each of them.
func TestControlPlaneLayoutMatchesKubeadm(t *testing.T) {
	dir := os.Getenv("IMGCTL_CONTROL_PLANE_DIR")
	if dir == "" {
		t.Skip("IMGCTL_CONTROL_PLANE_DIR is not set (opt-in: scripts/build-control-plane-images.sh 1.21.13 DIR)")
	}
	index := filepath.Join(dir, "layout", "index.json")
	testenv.Files(t, index)
	b, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatalf("%s: %v", index, err)
	}
	var held []string
	tags := map[string]string{} // component → tag
	for _, m := range idx.Manifests {
		name := m.Annotations["io.containerd.image.name"]
		if ref := m.Annotations["org.opencontainers.image.ref.name"]; ref != name {
			t.Errorf("%s: %s: ref.name %q != io.containerd.image.name %q", index, m.Digest, ref, name)
		}
		held = append(held, name)
		img := kubeversion.ControlPlaneImage{Name: name}
		component := strings.TrimPrefix(strings.TrimSuffix(name, ":"+img.Tag()), kubeversion.ControlPlaneRepository+"/")
		tags[component] = img.Tag()
	}
	cfg := filepath.Join(t.TempDir(), "kubeadm.yaml")
	if err := os.WriteFile(cfg, []byte(`apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.21.13
imageRepository: `+kubeversion.ControlPlaneRepository+`
etcd:
  local:
    imageTag: "`+tags["etcd"]+`"
dns:
  imageTag: "`+tags["coredns"]+`"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	want := kubeadmImagesList(t, "--config", cfg)
	slices.Sort(held)
	slices.Sort(want)
	if !slices.Equal(held, want) {
		t.Errorf("%s holds\n%s\nkubeadm lists\n%s", index, strings.Join(held, "\n"), strings.Join(want, "\n"))
	}
	sources, err := os.ReadFile(filepath.Join(dir, "sources.txt"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(sources)), "\n")
	if len(lines) != len(want) {
		t.Errorf("sources.txt has %d lines, want %d:\n%s", len(lines), len(want), sources)
	}
	abs, err := filepath.Abs(filepath.Join(dir, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range want {
		component := strings.TrimPrefix(strings.Split(name, ":")[0], kubeversion.ControlPlaneRepository+"/")
		suffix := "#image=/usr/lib/imgctl/images/" + component + ".tar&name=" + name
		if !slices.ContainsFunc(lines, func(l string) bool {
			return strings.HasPrefix(l, "oci-layout://"+abs+"@sha256:") && strings.HasSuffix(l, suffix)
		}) {
			t.Errorf("sources.txt has no line oci-layout://%s@sha256:…%s:\n%s", abs, suffix, sources)
		}
	}
}

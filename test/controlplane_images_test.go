package test

import (
	"bytes"
	"context"
	"errors"
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

// TestBuildControlPlaneImagesRefusesVersion: the script builds only the version the tools module
// pins, and says so before building anything.
func TestBuildControlPlaneImagesRefusesVersion(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command("../scripts/build-control-plane-images.sh", "1.22.0", out)
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(b), "test/tools/kubernetes pins 1.21.13, not 1.22.0") {
		t.Errorf("err = %v, output %q; want exit 2 naming the pinned version", err, b)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("%s: wrote %d entries before refusing", out, len(ents))
	}
}

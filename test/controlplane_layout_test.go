//go:build cluster

// The tests in this file check the control-plane images themselves (kubeadm's image list, the
// API server on etcd): they run in make e2e-cluster, not in make test, which uses the images to
// form a cluster (test/cluster_form_test.go).

package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// TestControlPlaneLayoutMatchesKubeadm: the layout scripts/build-control-plane-images.sh wrote
// (controlPlaneLayout) holds exactly the images the
// real kubeadm 1.21.13 lists for imageRepository kubeversion.ControlPlaneRepository, with the
// etcd and CoreDNS tags of the baked images (etcd.local.imageTag, dns.imageTag), and sources.txt
// bakes each of them.
func TestControlPlaneLayoutMatchesKubeadm(t *testing.T) {
	dir := controlPlaneLayout(t)
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

// TestControlPlaneAPIServerRuns: the kube-apiserver and etcd the script built (opt-in, as
// above) work together: etcd 3.5.0 stores for kube-apiserver 1.21.13 (built for etcd 3.4), and
// the OpenAPI definitions the script generates are complete enough for it to start (it exits
// when a served type has none) and to serve them.
func TestControlPlaneAPIServerRuns(t *testing.T) {
	dir := controlPlaneLayout(t)
	bin := filepath.Join(dir, "bin")
	testenv.Files(t, filepath.Join(bin, "etcd"), filepath.Join(bin, "kube-apiserver"))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	work := t.TempDir()
	ports := freePorts(t, 3)
	etcdURL := "http://127.0.0.1:" + ports[0]
	start := func(name string, args ...string) {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		log, err := os.Create(filepath.Join(work, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(log.Name())
				t.Logf("%s log (tail):\n%s", name, tail(string(b), 3000))
			}
		})
	}
	start("etcd", "--data-dir", filepath.Join(work, "etcd"), "--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+ports[1], "--initial-advertise-peer-urls", "http://127.0.0.1:"+ports[1],
		"--initial-cluster", "default=http://127.0.0.1:"+ports[1])
	key := filepath.Join(work, "sa.key")
	if out, err := exec.CommandContext(ctx, "openssl", "genrsa", "-out", key, "2048").CombinedOutput(); err != nil {
		t.Fatalf("openssl genrsa: %v\n%s", err, out)
	}
	tokens := filepath.Join(work, "tokens.csv") // AlwaysAllow turns anonymous requests away
	if err := os.WriteFile(tokens, []byte("imgctl-test-token,admin,1,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start("kube-apiserver", "--etcd-servers", etcdURL, "--token-auth-file", tokens, "--bind-address", "127.0.0.1", "--secure-port", ports[2],
		"--cert-dir", filepath.Join(work, "certs"), "--authorization-mode", "AlwaysAllow",
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", key,
		"--service-account-signing-key-file", key, "--service-cluster-ip-range", "10.96.0.0/12")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	base := "https://127.0.0.1:" + ports[2]
	get := func(path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer imgctl-test-token")
		return client.Do(req)
	}
	var last string
	for {
		resp, err := get("/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
			last = fmt.Sprintf("%s: %s", resp.Status, tail(string(b), 500))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kube-apiserver not ready: %s", last)
		case <-time.After(time.Second):
		}
	}
	resp, err := get("/openapi/v2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var spec struct{ Definitions map[string]json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&spec); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/openapi/v2: %s, %v", resp.Status, err)
	}
	for _, d := range []string{"io.k8s.api.core.v1.Pod", "io.k8s.api.apps.v1.Deployment", "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
		"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition", "io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.APIService"} {
		if _, ok := spec.Definitions[d]; !ok {
			t.Errorf("/openapi/v2 has no definition %s (%d definitions)", d, len(spec.Definitions))
		}
	}
	t.Logf("kube-apiserver ready on etcd 3.5.0; /openapi/v2 has %d definitions", len(spec.Definitions))
}

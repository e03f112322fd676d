package main

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/imgctl/imgctl/images/ociimage"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

// imgctl images pack wires its flags to ociimage.Pack: files with modes, trees, the process
// settings, SOURCE_DATE_EPOCH; prints the digest, or the result with -o json.
func TestImagesPack(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "odd:name")
	os.WriteFile(bin, []byte("pause"), 0o600)
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "x.conf"), []byte("x"), 0o644)
	lay := filepath.Join(dir, "layout")
	const name = "registry.imgctl.invalid/kubernetes/pause:3.4.1"
	args := []string{"images", "pack", "--layout", lay, "--name", name, "--file", bin + ":/pause:4755", "--dir", tree + ":/",
		"--entrypoint", "/pause", "--cmd", "-v", "--cmd", "x", "--env", "A=1", "--user", "65535:65535", "--workdir", "/etc"}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out, stderr, err := run(t, dir, args...)
	if err != nil {
		t.Fatalf("images pack: %v\n%s", err, stderr)
	}
	digest := strings.TrimSpace(out)
	p, err := layout.FromPath(lay)
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(digest)
	if err != nil {
		t.Fatalf("output %q is not a digest: %v", out, err)
	}
	img, err := p.Image(h)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if strings.Join(c.Entrypoint, " ") != "/pause" || strings.Join(c.Cmd, " ") != "-v x" || strings.Join(c.Env, " ") != "A=1" || c.User != "65535:65535" || c.WorkingDir != "/etc" || cfg.Created.Unix() != 1700000000 {
		t.Errorf("config %+v created %v", c, cfg.Created)
	}
	// -o json, and the same inputs give the same digest.
	out, stderr, err = run(t, dir, append([]string{"-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("images pack -o json: %v\n%s", err, stderr)
	}
	var res ociimage.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if res.Digest.String() != digest || res.Name != name || !res.Replaced || res.Entries != 3 || res.Size <= 0 {
		t.Errorf("json %+v, want digest %s, replaced, 3 entries (etc/, etc/x.conf, pause)", res, digest)
	}
	// The mode reached the layer: setuid 4755.
	ls, _ := img.Layers()
	if len(ls) != 1 {
		t.Fatalf("%d layers", len(ls))
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	modes := map[string]int64{}
	for tr := tar.NewReader(rc); ; {
		h, err := tr.Next()
		if err != nil {
			break
		}
		modes[h.Name] = h.Mode
	}
	if modes["pause"] != 0o4755 || modes["etc/x.conf"] != 0o644 || len(modes) != 3 {
		t.Errorf("layer modes %v, want pause 4755, etc/x.conf 644 (octal)", modes)
	}
}

func TestImagesPackFlagErrors(t *testing.T) {
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	const name = "registry.imgctl.invalid/kubernetes/pause:3.4.1"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", name}, "--layout and --name are required"},
		{[]string{"--layout", lay, "--name", name, "--file", "bin/pause"}, `--file "bin/pause": expected SRC:DST[:MODE]`},
		{[]string{"--layout", lay, "--name", name, "--file", "bin/pause:pause:0755"}, `--file "bin/pause:pause:0755": expected SRC:DST[:MODE]`},
		{[]string{"--layout", lay, "--name", name, "--dir", "rootfs"}, `--dir "rootfs": expected SRC:DST`},
		{[]string{"--layout", lay, "--name", "pause:3.4.1", "--file", "x:/x"}, `image name "pause:3.4.1"`},
		{[]string{"--layout", lay, "--name", name, "--file", "/nonexistent:/x"}, "/nonexistent: no such file"},
	} {
		_, _, err := run(t, dir, append([]string{"images", "pack"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want %q", c.args, err, c.want)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
	if _, _, err := run(t, dir, "images", "pack", "--layout", lay, "--name", name, "--file", filepath.Join(dir, "x")+":/x"); err == nil || !strings.Contains(err.Error(), `SOURCE_DATE_EPOCH="yesterday"`) {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
}

func TestParseFileFlag(t *testing.T) {
	for in, want := range map[string]ociimage.File{
		"a:/b":             {Src: "a", Dst: "/b"},
		"a:/b:0755":        {Src: "a", Dst: "/b", Mode: 0o755},
		"a:/b:755":         {Src: "a", Dst: "/b", Mode: 0o755},
		"a:/b:4755":        {Src: "a", Dst: "/b", Mode: 0o755 | os.ModeSetuid},
		"/x:y/a:/b/c:0644": {Src: "/x:y/a", Dst: "/b/c", Mode: 0o644},
	} {
		got, err := parseFileFlag(in)
		if err != nil || got != want {
			t.Errorf("parseFileFlag(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
}

func TestImagesControlPlaneNames(t *testing.T) {
	dir := t.TempDir()
	out, stderr, err := run(t, dir, "images", "control-plane-names", "--tag", "etcd=3.5.0-0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	v, _ := kubeversion.Parse("1.21.13")
	var want []string
	for _, img := range v.ControlPlaneImages(kubeversion.ControlPlaneRepository) {
		if img.Component == "etcd" {
			img.Name = kubeversion.ControlPlaneRepository + "/etcd:3.5.0-0"
		}
		want = append(want, img.Component+" "+img.Name)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		got = append(got, strings.Join(strings.Fields(l), " "))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--k8s", "1.30.0"}, "--k8s 1.30.0: kubeadm's control-plane images are known only for 1.21"},
		{[]string{"--k8s", "1.2"}, "--k8s: invalid Kubernetes version"},
		{[]string{"--tag", "etcd"}, `--tag "etcd": expected COMPONENT=TAG`},
		{[]string{"--tag", "kubelet=1"}, `--tag "kubelet=1": expected COMPONENT=TAG`},
		{[]string{"--tag", "etcd=bad tag"}, `--tag "etcd=bad tag"`},
		{[]string{"--repository", "UPPER"}, `--repository "UPPER"`},
	} {
		_, _, err := run(t, dir, append([]string{"images", "control-plane-names"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want %q", c.args, err, c.want)
		}
	}
}

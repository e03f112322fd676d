package source

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestParse(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	tests := []struct {
		raw  string
		want URI // only the fields set here are compared
		err  string
	}{
		{raw: "file:///srv/layer.tar.zst", want: URI{Kind: KindTar, Location: "/srv/layer.tar.zst"}},
		{raw: "file:///srv/x.deb", want: URI{Kind: KindDeb, Location: "/srv/x.deb"}},
		{raw: "file:///srv/dir/", want: URI{Kind: KindDir, Location: "/srv/dir/"}},
		{raw: "file:///srv/kubelet#path=/usr/bin/kubelet&mode=0755", want: URI{Kind: KindFile, Location: "/srv/kubelet", Dest: "/usr/bin/kubelet", Mode: 0o755}},
		{raw: "file:///srv/kubelet#path=/usr/bin/kubelet", want: URI{Kind: KindFile, Dest: "/usr/bin/kubelet", Mode: 0o755}},
		{raw: "https://h/x.tar.gz#sha256=" + hex + "&prefix=/opt/cni/bin", want: URI{Kind: KindTar, Location: "https://h/x.tar.gz", Prefix: "/opt/cni/bin", Digest: "sha256:" + "abababababababababababababababababababababababababababababababab"}},
		{raw: "https://h/kubelet#sha256-from=https://h/kubelet.sha256&path=/usr/bin/kubelet", want: URI{Kind: KindFile, ChecksumURL: "https://h/kubelet.sha256"}},
		{raw: "oci://registry.local:5000/base@sha256:" + hex, want: URI{Kind: KindOCI, Location: "registry.local:5000/base"}},
		{raw: "oci-layout:///srv/layout@sha256:" + hex, want: URI{Kind: KindOCILayout, Location: "/srv/layout"}},
		{raw: "oci://registry.k8s.io/pause:3.9@sha256:" + hex + "#image=/usr/lib/imgctl/images/pause.tar", want: URI{Kind: KindOCIArchive, Location: "registry.k8s.io/pause:3.9", Dest: "/usr/lib/imgctl/images/pause.tar", Mode: 0o644, ImageName: "registry.k8s.io/pause:3.9", Digest: digest.Digest("sha256:" + hex)}},
		{raw: "oci://registry.local:5000/base@sha256:" + hex + "#image=/x.tar", want: URI{Kind: KindOCIArchive, Location: "registry.local:5000/base", ImageName: "registry.local:5000/base@sha256:" + hex}},
		{raw: "oci://registry.local:5000/base@sha256:" + hex + "#image=/x.tar&name=registry.k8s.io/pause:3.9", want: URI{Kind: KindOCIArchive, Location: "registry.local:5000/base", ImageName: "registry.k8s.io/pause:3.9"}},
		{raw: "oci://registry.local:5000/base@sha256:" + hex + "#name=localhost/pause&image=/x.tar", want: URI{Kind: KindOCIArchive, ImageName: "localhost/pause@sha256:" + hex}},
		{raw: "oci://docker.io/busybox:1.36@sha256:" + hex + "#image=/x.tar", want: URI{Kind: KindOCIArchive, ImageName: "docker.io/library/busybox:1.36"}},
		{raw: "oci://index.docker.io/busybox@sha256:" + hex + "#image=/x.tar&name=busybox:1.36", want: URI{Kind: KindOCIArchive, ImageName: "docker.io/library/busybox:1.36"}},
		{raw: "oci-layout:///srv/layout@sha256:" + hex + "#image=/var/lib/images/pause.tar&name=registry.k8s.io/pause:3.9", want: URI{Kind: KindOCILayoutArchive, Location: "/srv/layout", Dest: "/var/lib/images/pause.tar", Mode: 0o644, ImageName: "registry.k8s.io/pause:3.9"}},
		{raw: "oci-layout:///srv/layout@sha256:" + hex + "#image=/x.tar&name=example.com/team/pause", want: URI{Kind: KindOCILayoutArchive, ImageName: "example.com/team/pause@sha256:" + hex}},
		{raw: "deb://deb.debian.org/debian?suite=bookworm&package=runc=1.1.5", want: URI{Kind: KindDebRepo, Location: "https://deb.debian.org/debian", Suite: "bookworm", Package: "runc", Version: "1.1.5", Component: "main", Arch: "amd64"}},
		{raw: "deb+http://127.0.0.1:8080/debian?suite=s&package=p1", want: URI{Kind: KindDebRepo, Location: "http://127.0.0.1:8080/debian"}},
		{raw: "mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&packages=systemd,udev", want: URI{Kind: KindMmdebstrap, Suite: "bookworm", Variant: "minbase", Packages: []string{"systemd", "udev"}}},
		{raw: "deb://deb.debian.org/debian?suite=bookworm&package=containerd=1.6.20~ds1-1+b1", want: URI{Kind: KindDebRepo, Package: "containerd", Version: "1.6.20~ds1-1+b1"}},
		{raw: "mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&packages=libstdc++6,g++-12", want: URI{Kind: KindMmdebstrap, Packages: []string{"libstdc++6", "g++-12"}}},
		{raw: "imgctl://bootstrap", want: URI{Kind: KindBootstrap}},

		{raw: "ftp://x/y", err: "unknown scheme"},
		{raw: "imgctl://kubelet", err: "expected imgctl://bootstrap"},
		{raw: "layer.tar", err: "expected SCHEME://"},
		{raw: "file://relative/x.tar", err: "absolute path"},
		{raw: "file:///srv/kubelet", err: "cannot tell what kubelet is"},
		{raw: "https://h/kubelet#path=/usr/bin/kubelet", err: "must be pinned"},
		{raw: "https://h/x.tar#sha256=1234", err: "expected 64 hex digits"},
		{raw: "https://h/x#sha256=" + hex + "&path=usr/bin/x", err: "clean absolute file path"},
		{raw: "https://h/x#sha256=" + hex + "&path=/x&mode=999", err: "octal permission bits"},
		{raw: "https://h/x.tar#sha256=" + hex + "&colour=red", err: `unknown parameter "colour"`},
		{raw: "oci://registry/base:latest", err: "pinned by digest"},
		{raw: "oci://registry/base@sha256:1234", err: "expected sha256:<64 hex>"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=/x.tar&mode=0755", err: `unknown parameter "mode" (expected image, name)`},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=x.tar", err: "image=x.tar: expected a clean absolute file path"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=/a/../x.tar", err: "expected a clean absolute file path"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=/", err: "expected a clean absolute file path"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#name=r.io/pause:1", err: "expected #image=/ABS/PATH.tar"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#", err: "expected #image=/ABS/PATH.tar"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=/x.tar&image=/y.tar", err: "image= given 2 times"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=/x.tar&name=r.io/pause@sha256:" + hex, err: "name=r.io/pause@sha256:" + hex + ": expected REGISTRY/REPO[:TAG] (the digest is the URI's pin)"},
		{raw: "oci://r.io/pause@sha256:" + hex + "#image=/x.tar&name=r.io/Pause:1", err: "name=r.io/Pause:1: expected REGISTRY/REPO[:TAG]"},
		{raw: "oci://r.io/pause:@sha256:" + hex + "#image=/x.tar", err: "image name r.io/pause:: empty tag"},
		{raw: "oci-layout:///srv/layout@sha256:" + hex + "#image=/x.tar", err: "add &name=REGISTRY/REPO[:TAG]"},
		{raw: "oci-layout:///srv/layout@sha256:1234#image=/x.tar", err: "expected sha256:<64 hex>"},
		{raw: "deb://deb.debian.org/debian?package=runc", err: "suite=SUITE"},
		{raw: "mmdebstrap://bookworm?packages=a", err: "missing mirror"},
		// Every key once: two values for one key leave which one wins to the reader.
		{raw: "file:///srv/x#path=/x&path=/y", err: `path= given 2 times ("/x", "/y"), expected once`},
		{raw: "file:///srv/x#path=/x&mode=0755&mode=0644", err: `mode= given 2 times ("0755", "0644"), expected once`},
		{raw: "https://h/x.tar#sha256=" + hex + "&sha256=" + hex, err: `sha256= given 2 times`},
		{raw: "file:///srv/x.tar#prefix=/a&prefix=/b", err: `prefix= given 2 times ("/a", "/b"), expected once`},
		{raw: "deb://deb.debian.org/debian?suite=bookworm&package=runc&package=bash", err: `package= given 2 times ("runc", "bash"), expected once`},
		{raw: "mmdebstrap://bookworm?mirror=http://a&mirror=http://b", err: `mirror= given 2 times`},
		{raw: "file:///srv/x#colour=red&path=/x", err: `unknown parameter "colour" (expected sha256, sha256-from, path, mode, prefix)`},
		{raw: "file:///srv/x#path", err: `path= has no value`},
		{raw: "file:///srv/x.tar#mode=", err: `mode= has no value`},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			u, err := Parse(tc.raw)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.raw) {
					t.Fatalf("err = %v, want one naming the URI and containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := tc.want
			check := func(field, got, want string) {
				if want != "" && got != want {
					t.Errorf("%s = %q, want %q", field, got, want)
				}
			}
			check("Kind", string(u.Kind), string(w.Kind))
			check("Location", u.Location, w.Location)
			check("Dest", u.Dest, w.Dest)
			check("ImageName", u.ImageName, w.ImageName)
			check("Prefix", u.Prefix, w.Prefix)
			check("Digest", string(u.Digest), string(w.Digest))
			check("ChecksumURL", u.ChecksumURL, w.ChecksumURL)
			check("Suite", u.Suite, w.Suite)
			check("Package", u.Package, w.Package)
			check("Version", u.Version, w.Version)
			check("Component", u.Component, w.Component)
			check("Arch", u.Arch, w.Arch)
			check("Variant", u.Variant, w.Variant)
			check("Packages", strings.Join(u.Packages, ","), strings.Join(w.Packages, ","))
			if w.Mode != 0 && u.Mode != w.Mode {
				t.Errorf("Mode = %o, want %o", u.Mode, w.Mode)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"file:///x.tar", "https://h/x#sha256=00&path=/a", "deb://h/d?suite=s&package=p=1", "oci://r/x@sha256:00", "oci://r.io/x:1@sha256:00#image=/x.tar&name=r.io/y", "mmdebstrap://s?mirror=m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := Parse(raw)
		if err != nil {
			return
		}
		if u.Kind == "" {
			t.Fatalf("%q parsed without a kind", raw)
		}
		if (u.Kind == KindFile || u.isArchive()) && !strings.HasPrefix(u.Dest, "/") {
			t.Fatalf("%q: file destination %q is not absolute", raw, u.Dest)
		}
		if u.isArchive() && (u.ImageName == "" || u.Mode != 0o644) {
			t.Fatalf("%q: image archive named %q, mode %o", raw, u.ImageName, u.Mode)
		}
		if u.Kind == KindMmdebstrap || u.Kind == KindDebRepo {
			// These values become program arguments (mmdebstrap) or mirror URL paths.
			for _, v := range append([]string{u.Suite, u.Location, u.Package, u.Version, u.Variant, u.Component, u.Arch, u.Follow}, u.Packages...) {
				if strings.HasPrefix(v, "-") || strings.ContainsAny(v, " \t\n") {
					t.Fatalf("%q: value %q could be read as an option", raw, v)
				}
			}
		}
	})
}

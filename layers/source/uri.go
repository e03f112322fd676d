// Package source parses source URIs, pins them to digests and turns what they name into
// cached, validated layer tars: the only way bytes from outside enter a build.
package source

import (
	"fmt"
	"maps"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

// Kind is the kind of content a URI names.
type Kind string

// The kinds of source.
const (
	KindTar        Kind = "tar"        // a layer tar, possibly gzip/zstd/xz compressed
	KindDeb        Kind = "deb"        // a Debian package file: its data.tar is the layer
	KindFile       Kind = "file"       // a single file placed at Dest with Mode
	KindDir        Kind = "dir"        // a local directory (development)
	KindOCI        Kind = "oci"        // an image in a registry, flattened
	KindOCILayout  Kind = "oci-layout" // an image in a local OCI layout, flattened
	KindDebRepo    Kind = "deb-repo"   // a package resolved from a Debian repository index
	KindMmdebstrap Kind = "mmdebstrap" // a Debian base made by mmdebstrap
	KindBootstrap  Kind = "bootstrap"  // imgctl's bootstrap layer: units + the node agent
)

// The image archive kinds (URIs with #image=PATH): an image kept whole rather than flattened,
// its linux/amd64 image written as an OCI image layout tar placed as one file at Dest (mode
// 0644), for the node to import into containerd without pulling.
const (
	KindOCIArchive       Kind = "oci-archive"        // from a registry: oci://…#image=PATH
	KindOCILayoutArchive Kind = "oci-layout-archive" // from a local OCI layout: oci-layout://…#image=PATH&name=…
)

// URI is a parsed source URI. The grammar (a contract other tools rely on):
//
//	file:///x.tar[.gz|.zst|.xz]   a layer tar          file:///x.deb   a Debian package
//	file:///dir/                  a directory          file:///x#path=/usr/bin/x&mode=0755   one file
//	https://…/x#sha256=HEX[&path=/usr/bin/x&mode=0755 | &prefix=/opt]   (or sha256-from=URL of a checksum file)
//	oci://REGISTRY/REPO[:TAG]@sha256:…   oci-layout:///DIR@sha256:…   (image layers flattened)
//	oci://REGISTRY/REPO[:TAG]@sha256:…#image=/ABS/PATH.tar[&name=REGISTRY/REPO[:TAG]]
//	oci-layout:///DIR@sha256:…#image=/ABS/PATH.tar&name=REGISTRY/REPO[:TAG]
//	                              the image as an OCI archive file at PATH (ctr images import)
//	deb://MIRROR/debian?suite=S&package=NAME[=VERSION][&follow=PREFIX][&component=main&arch=amd64]
//	mmdebstrap://SUITE?mirror=URL&packages=a,b[&variant=minbase]
//	imgctl://bootstrap            imgctl's bootstrap layer (units + the imgctl-node binary)
//
// file:// names a regular file or a directory: a FIFO, socket or device is refused. In deb://
// and mmdebstrap:// the values are Debian's (validate.go): SUITE, package names, versions,
// component and arch as Debian spells them ("+" is literal), mirror= an http(s):// or file:///
// URL; nothing that could reach mmdebstrap as an option is accepted.
type URI struct {
	Raw  string
	Kind Kind

	Location    string        // file path, directory, download URL, image reference or mirror URL
	Digest      digest.Digest // pinned content digest, if the URI carries one
	ChecksumURL string        // https: a published checksum file to pin from

	Dest   string // KindFile, KindOCIArchive, KindOCILayoutArchive: absolute path inside the image
	Mode   int64  // KindFile: permission bits (0644 for the archive kinds)
	Prefix string // KindTar: extract under this directory

	Suite, Component, Arch, Package, Version, Follow string // KindDebRepo
	Variant                                          string
	Packages                                         []string // KindMmdebstrap

	// ImageName is the full name an archive kind's image is imported under:
	// REGISTRY/REPO:TAG, or REGISTRY/REPO@sha256:… (the pin) when no tag is given.
	ImageName string
}

// Remote reports whether materializing the source may need the network.
func (u URI) Remote() bool {
	switch u.Kind {
	case KindOCI, KindOCIArchive, KindDebRepo, KindMmdebstrap:
		return true
	}
	return strings.HasPrefix(u.Location, "http://") || strings.HasPrefix(u.Location, "https://")
}

func (u URI) String() string { return u.Raw }

// Parse parses and checks a source URI.
func Parse(raw string) (URI, error) {
	u, err := parse(raw)
	if err != nil {
		return URI{}, fmt.Errorf("source %q: %w", raw, err)
	}
	return u, nil
}

func parse(raw string) (URI, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return URI{}, fmt.Errorf("expected SCHEME://…, one of file, https, http, oci, oci-layout, deb, mmdebstrap, imgctl")
	}
	u := URI{Raw: raw}
	switch scheme {
	case "file", "https", "http":
		loc, frag, _ := strings.Cut(raw, "#")
		if scheme == "file" {
			loc = strings.TrimPrefix(loc, "file://")
			if !strings.HasPrefix(loc, "/") {
				return URI{}, fmt.Errorf("file URIs need an absolute path (file:///path)")
			}
			unesc, err := url.PathUnescape(loc)
			if err != nil {
				return URI{}, err
			}
			loc = unesc
		} else if _, err := url.Parse(loc); err != nil {
			return URI{}, err
		}
		u.Location = loc
		if err := u.fragment(frag); err != nil {
			return URI{}, err
		}
		return u, u.classify(scheme)
	case "imgctl":
		if rest != "bootstrap" {
			return URI{}, fmt.Errorf("imgctl:// names a layer imgctl provides: expected imgctl://bootstrap")
		}
		u.Kind = KindBootstrap
		return u, nil
	case "oci", "oci-layout":
		rest, frag, hasFrag := strings.Cut(rest, "#")
		ref, dg, ok := strings.Cut(rest, "@")
		if !ok || ref == "" {
			return URI{}, fmt.Errorf("expected %s://%s@sha256:HEX (pinned by digest)", scheme, map[string]string{"oci": "REGISTRY/REPO[:TAG]", "oci-layout": "/DIR"}[scheme])
		}
		d, err := digest.Parse(dg)
		if err != nil || d.Algorithm() != digest.SHA256 {
			return URI{}, fmt.Errorf("digest %q: expected sha256:<64 hex>", dg)
		}
		u.Kind, u.Location, u.Digest = KindOCI, ref, d
		if scheme == "oci-layout" {
			if !strings.HasPrefix(ref, "/") {
				return URI{}, fmt.Errorf("oci-layout URIs need an absolute directory (oci-layout:///DIR@sha256:…)")
			}
			u.Kind = KindOCILayout
		}
		if hasFrag {
			return u, u.imageFragment(frag)
		}
		return u, nil
	case "deb", "deb+http":
		pu, err := url.Parse(raw)
		if err != nil {
			return URI{}, err
		}
		q := debQuery(pu)
		httpScheme := "https"
		if scheme == "deb+http" {
			httpScheme = "http"
		}
		u.Kind = KindDebRepo
		u.Location = httpScheme + "://" + pu.Host + strings.TrimSuffix(pu.Path, "/")
		u.Suite, u.Component, u.Arch, u.Follow = q.Get("suite"), q.Get("component"), q.Get("arch"), q.Get("follow")
		u.Package, u.Version, _ = strings.Cut(q.Get("package"), "=")
		if pu.Host == "" {
			return URI{}, fmt.Errorf("missing mirror host (deb://deb.debian.org/debian?…)")
		}
		if u.Suite == "" || u.Package == "" {
			return URI{}, fmt.Errorf("expected ?suite=SUITE&package=NAME[=VERSION]")
		}
		if u.Component == "" {
			u.Component = "main"
		}
		if u.Arch == "" {
			u.Arch = "amd64"
		}
		if err := checkKeys(q, "suite", "package", "follow", "component", "arch"); err != nil {
			return URI{}, err
		}
		return u, u.checkDebRepo()
	case "mmdebstrap":
		pu, err := url.Parse(raw)
		if err != nil {
			return URI{}, err
		}
		q := debQuery(pu)
		u.Kind, u.Suite, u.Location, u.Variant = KindMmdebstrap, pu.Host, q.Get("mirror"), q.Get("variant")
		if u.Suite == "" {
			return URI{}, fmt.Errorf("missing suite (mmdebstrap://bookworm?…)")
		}
		if u.Location == "" {
			return URI{}, fmt.Errorf("missing mirror=URL")
		}
		if u.Variant == "" {
			u.Variant = "minbase"
		}
		for _, p := range strings.Split(q.Get("packages"), ",") {
			if p = strings.TrimSpace(p); p != "" {
				u.Packages = append(u.Packages, p)
			}
		}
		if err := checkKeys(q, "mirror", "packages", "variant"); err != nil {
			return URI{}, err
		}
		return u, u.checkMmdebstrap()
	}
	return URI{}, fmt.Errorf("unknown scheme %q: expected file, https, http, oci, oci-layout, deb, mmdebstrap", scheme)
}

// debQuery reads a deb:// or mmdebstrap:// query with "+" kept as "+", not a space: Debian
// package names and versions hold "+" (libstdc++6, 1.6.20~ds1-1+b1) and never a space.
func debQuery(pu *url.URL) url.Values {
	q, _ := url.ParseQuery(strings.ReplaceAll(pu.RawQuery, "+", "%2B"))
	return q
}

// checkKeys refuses parameters other than known and any parameter given more than once
// (which value counts would be up to the reader), in sorted order so the error is stable.
func checkKeys(q url.Values, known ...string) error {
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if !slices.Contains(known, k) {
			return fmt.Errorf("unknown parameter %q (expected %s)", k, strings.Join(known, ", "))
		}
		if vs := q[k]; len(vs) > 1 {
			quoted := make([]string, len(vs))
			for i, v := range vs {
				quoted[i] = strconv.Quote(v)
			}
			return fmt.Errorf("%s= given %d times (%s), expected once", k, len(vs), strings.Join(quoted, ", "))
		}
	}
	return nil
}

// checkValues refuses a parameter given without a value ("#mode=", "#path"): an empty value
// is never meant and would otherwise read as the parameter's absence.
func checkValues(q url.Values) error {
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if q.Get(k) == "" {
			return fmt.Errorf("%s= has no value", k)
		}
	}
	return nil
}

// fragment parses "#sha256=HEX&path=/x&mode=0755&prefix=/opt&sha256-from=URL".
func (u *URI) fragment(frag string) error {
	if frag == "" {
		return nil
	}
	q, err := url.ParseQuery(frag)
	if err != nil {
		return fmt.Errorf("fragment: %w", err)
	}
	if err := checkKeys(q, "sha256", "sha256-from", "path", "mode", "prefix"); err != nil {
		return err
	}
	if err := checkValues(q); err != nil {
		return err
	}
	if h := q.Get("sha256"); h != "" {
		d := digest.NewDigestFromEncoded(digest.SHA256, strings.ToLower(h))
		if err := d.Validate(); err != nil {
			return fmt.Errorf("sha256=%s: expected 64 hex digits", h)
		}
		u.Digest = d
	}
	u.ChecksumURL = q.Get("sha256-from")
	if u.ChecksumURL != "" && u.Digest != "" {
		return fmt.Errorf("give either sha256= or sha256-from=, not both")
	}
	if p := q.Get("path"); p != "" {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			return fmt.Errorf("path=%s: expected a clean absolute file path", p)
		}
		u.Dest = p
	}
	u.Mode = 0o644
	if m := q.Get("mode"); m != "" {
		v, err := strconv.ParseInt(m, 8, 32)
		if err != nil || v < 0 || v > 0o7777 {
			return fmt.Errorf("mode=%s: expected octal permission bits like 0755", m)
		}
		u.Mode = v
	} else if u.Dest != "" {
		u.Mode = 0o755
	}
	if p := q.Get("prefix"); p != "" {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
			return fmt.Errorf("prefix=%s: expected a clean absolute directory", p)
		}
		u.Prefix = p
	}
	return nil
}

// imageFragment parses an oci/oci-layout fragment, "#image=/ABS/PATH.tar[&name=REGISTRY/REPO[:TAG]]":
// the image is kept whole, as an OCI archive file at PATH, named for containerd.
func (u *URI) imageFragment(frag string) error {
	q, err := url.ParseQuery(frag)
	if err != nil {
		return fmt.Errorf("fragment: %w", err)
	}
	if err := checkKeys(q, "image", "name"); err != nil {
		return err
	}
	p := q.Get("image")
	if p == "" {
		return fmt.Errorf("expected #image=/ABS/PATH.tar[&name=REGISTRY/REPO[:TAG]] (the file the image archive is placed at)")
	}
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("image=%s: expected a clean absolute file path", p)
	}
	ref := u.Location
	if u.Kind == KindOCILayout {
		u.Kind = KindOCILayoutArchive
		if _, ok := q["name"]; !ok {
			return fmt.Errorf("an image from an OCI layout needs a name to be imported under: add &name=REGISTRY/REPO[:TAG]")
		}
	} else {
		u.Kind = KindOCIArchive
	}
	if n, ok := q["name"]; ok {
		ref = n[0]
	}
	full, err := imageRef(ref, u.Digest)
	if err != nil {
		if _, ok := q["name"]; ok {
			return fmt.Errorf("name=%s: %w", ref, err)
		}
		return fmt.Errorf("image name %s: %w", ref, err)
	}
	u.Dest, u.Mode, u.ImageName = p, 0o644, full
	return nil
}

// imageRef turns REGISTRY/REPO[:TAG] into the full name the image is imported under: the
// name containerd's CRI looks it up by, so Docker Hub names are normalized the way containerd
// normalizes them (busybox:1 -> docker.io/library/busybox:1). Without a tag the name is
// pinned by digest: REGISTRY/REPO@sha256:HEX.
func imageRef(ref string, pin digest.Digest) (string, error) {
	if ref == "" || strings.Contains(ref, "@") {
		return "", fmt.Errorf("expected REGISTRY/REPO[:TAG] (the digest is the URI's pin)")
	}
	repo, tag := ref, ""
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		repo, tag = ref[:i], ref[i+1:]
		if tag == "" {
			return "", fmt.Errorf("empty tag, expected REGISTRY/REPO[:TAG]")
		}
	}
	domain, rest, ok := strings.Cut(repo, "/")
	if !ok || !(strings.ContainsAny(domain, ".:") || domain == "localhost") {
		domain, rest = "docker.io", repo
	}
	if domain == "index.docker.io" {
		domain = "docker.io"
	}
	if domain == "docker.io" && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	full := domain + "/" + rest
	if tag != "" {
		full += ":" + tag
	} else {
		full += "@" + pin.String()
	}
	if _, err := name.ParseReference(full, name.StrictValidation); err != nil {
		return "", fmt.Errorf("expected REGISTRY/REPO[:TAG]: %w", err)
	}
	return full, nil
}

var archiveSuffixes = []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz"}

func (u *URI) classify(scheme string) error {
	loc := u.Location
	switch {
	case u.Dest != "":
		u.Kind = KindFile
	case strings.HasSuffix(loc, ".deb"):
		u.Kind = KindDeb
	case scheme == "file" && strings.HasSuffix(loc, "/"):
		u.Kind = KindDir
	default:
		for _, s := range archiveSuffixes {
			if strings.HasSuffix(loc, s) {
				u.Kind = KindTar
			}
		}
		if u.Kind == "" {
			return fmt.Errorf("cannot tell what %s is: name a .deb, a .tar[.gz|.zst|.xz], a directory ending in /, or add #path=/dest/file", path.Base(loc))
		}
	}
	if u.Prefix != "" && u.Kind != KindTar && u.Kind != KindDir {
		return fmt.Errorf("prefix= applies to archives and directories only")
	}
	if scheme != "file" && u.Digest == "" && u.ChecksumURL == "" {
		return fmt.Errorf("remote files must be pinned: add #sha256=HEX or #sha256-from=URL")
	}
	return nil
}

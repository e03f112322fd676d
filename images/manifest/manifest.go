// Package manifest defines the imgctl image manifest: the config that records how an image was made
// and the OCI image manifest (v1.1, with artifactType) that ties it to the image's artifacts.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	nodeupdate "github.com/imgctl/imgctl/images/update" // not update: the golden-file flag of the tests
)

// Media and artifact types of an imgctl image.
const (
	// ArtifactType is the artifactType of every imgctl image manifest.
	ArtifactType = nodeupdate.ArtifactType // application/vnd.imgctl.image.v1
	// ConfigMediaType is the media type of the config blob (a JSON Config).
	ConfigMediaType = "application/vnd.imgctl.image.config.v1+json"

	// RootfsMediaType is the canonical normalized rootfs tar (uncompressed).
	RootfsMediaType = "application/vnd.imgctl.rootfs.v1.tar"
	// DiskRawMediaType is a raw GPT disk image (disk.raw).
	DiskRawMediaType = "application/vnd.imgctl.disk.v1.raw"
	// DiskSparseMediaType is a raw GPT disk image in Android sparse format (disk.simg): only
	// blocks holding data are stored. `simg2img` or `imgctl build --output` expands it.
	DiskSparseMediaType = "application/vnd.imgctl.disk.v1.raw+sparse"
	// KernelMediaType is a kernel image (vmlinuz).
	KernelMediaType = "application/vnd.imgctl.kernel.v1"
	// InitrdMediaType is an initramfs (newc cpio, possibly compressed).
	InitrdMediaType = "application/vnd.imgctl.initrd.v1"
	// SquashfsMediaType is the read-only root filesystem as squashfs (rootfs.squashfs).
	SquashfsMediaType = "application/vnd.imgctl.rootfs.v1.squashfs"
	// IPXEScriptMediaType is an iPXE boot script.
	IPXEScriptMediaType = "application/vnd.imgctl.ipxe.v1+text"
)

// Annotation keys written on image manifests and index entries.
const (
	AnnotationTitle             = nodeupdate.AnnotationTitle   // org.opencontainers.image.title
	AnnotationVersion           = nodeupdate.AnnotationVersion // org.opencontainers.image.version
	AnnotationCreated           = ocispec.AnnotationCreated    // org.opencontainers.image.created
	AnnotationRefName           = ocispec.AnnotationRefName    // org.opencontainers.image.ref.name
	AnnotationKubernetesVersion = nodeupdate.AnnotationKubernetesVersion
	AnnotationKernelVersion     = "dev.imgctl.kernel.version"
	AnnotationName              = "dev.imgctl.name"
	AnnotationArchitecture      = nodeupdate.AnnotationArchitecture // GOARCH's name of the image's architecture
)

// Artifact annotation keys the boot targets write (raw, pxe) and readers (imgctl serve) use.
const (
	AnnotationKernelRelease      = "dev.imgctl.kernel.release"         // vmlinuz: the kernel release
	AnnotationKernelCmdline      = nodeupdate.AnnotationKernelCmdline  // a kernel command line, space-separated (the spec's; disk.simg: slot A's)
	AnnotationInitrdDrivers      = "dev.imgctl.initrd.drivers"         // initrd.img: optional drivers included, comma-separated
	AnnotationRootDigest         = nodeupdate.AnnotationRootDigest     // the root blob's digest (squashfs + verity hash area), sha256:HEX
	AnnotationRootSize           = nodeupdate.AnnotationRootSize       // the root blob's size in bytes
	AnnotationRootCompressor     = "dev.imgctl.root.compressor"        // the root squashfs's compressor
	AnnotationRootVerityRootHash = nodeupdate.AnnotationVerityRootHash // the root's dm-verity root hash, hex
	AnnotationRootVerityOffset   = nodeupdate.AnnotationVerityOffset   // the root's verity hash area's offset in the blob (the squashfs's size)
	AnnotationDiskSize           = "dev.imgctl.disk.size"              // disk image size in bytes
	AnnotationDiskPartitions     = "dev.imgctl.disk.partitions"        // disk partition table (JSON)
	AnnotationDiskGUID           = "dev.imgctl.disk.guid"              // disk GUID
)

// Names of the boot artifacts (file names in an export and org.opencontainers.image.title):
// the raw and pxe targets write them, netboot servers find them by them.
const (
	KernelArtifact       = nodeupdate.KernelArtifact
	InitrdArtifact       = nodeupdate.InitrdArtifact
	RootSquashfsArtifact = nodeupdate.RootArtifact
	IPXEScriptArtifact   = "boot.ipxe"
)

// SchemaVersion is the only Config.SchemaVersion this package writes and accepts.
const SchemaVersion = 1

// ErrInvalid marks a config, artifact or manifest that breaks the rules of this package.
var ErrInvalid = errors.New("invalid image manifest")

// Config is the config blob of an imgctl image: everything needed to tell what is inside it and
// to rebuild it bit for bit.
type Config struct {
	SchemaVersion int `json:"schemaVersion"`
	// Name is the image's name (e.g. "node"); Version its readable version
	// (e.g. "1.21.13-6.1.0-56-20261126"), used as the OCI ref.name in a store.
	Name    string `json:"name"`
	Version string `json:"version"`
	// SpecDigest is the digest of the NodeImage spec (with its lock) the image was built from.
	SpecDigest digest.Digest `json:"specDigest"`
	Kubernetes string        `json:"kubernetes"`
	// Flavor is the spec's flavor (e.g. cloud or metal for the embedded default); empty when the
	// spec names none.
	Flavor string `json:"flavor,omitempty"`
	// Kernel is the kernel release (uname -r); empty for an image without a kernel.
	Kernel string `json:"kernel,omitempty"`
	// Architecture is the image's architecture as GOARCH names it (amd64); empty in images
	// built before it was recorded.
	Architecture string `json:"architecture,omitempty"`
	// Bootstrap is the version of the bootstrap layer.
	Bootstrap string `json:"bootstrap,omitempty"`
	// Imgctl is the version of the imgctl that built the image.
	Imgctl string `json:"imgctl"`
	// SourceDateEpoch is the build's fixed time (Unix seconds): every timestamp derives from it.
	SourceDateEpoch int64   `json:"sourceDateEpoch"`
	Layers          []Layer `json:"layers"`
	Rootfs          Rootfs  `json:"rootfs"`
	// Binaries maps every executable of the runtime, kubelet and bootstrap layers (absolute
	// path in the rootfs) to its sha256. The same list is in the rootfs as /etc/imgctl/image.json,
	// and the node verifies the files against it at every boot (kube-node-installation).
	Binaries map[string]digest.Digest `json:"binaries,omitempty"`
}

// Layer is one composed filesystem layer.
type Layer struct {
	Role    string `json:"role"`
	Version string `json:"version,omitempty"`
	// Digest is the sha256 of the uncompressed layer tar.
	Digest  digest.Digest `json:"digest"`
	Size    int64         `json:"size"`
	Sources []Source      `json:"sources,omitempty"`
}

// Source is one pinned input of a layer.
type Source struct {
	URI string `json:"uri"`
	// Digest is the digest of the input as fetched.
	Digest digest.Digest `json:"digest"`
	// Resolved is what the source resolved to, e.g. "containerd=1.6.20~ds1-1+b1".
	Resolved string `json:"resolved,omitempty"`
}

// Rootfs describes the canonical rootfs tar every artifact was written from.
type Rootfs struct {
	Digest  digest.Digest `json:"digest"`
	Size    int64         `json:"size"`
	Entries int           `json:"entries"`
}

// Created is the image's creation time: SourceDateEpoch in UTC.
func (c Config) Created() time.Time { return time.Unix(c.SourceDateEpoch, 0).UTC() }

// versionRE is what a Version may look like: it becomes an OCI ref.name and a skopeo
// "oci:DIR:VERSION" reference, so no ':' or '/' and no leading separator.
var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// CheckVersion reports whether v can be an image version (what a store resolves besides a
// digest, and what a netboot inventory may pin a machine to).
func CheckVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("version %q: want [A-Za-z0-9][A-Za-z0-9._+-]* (at most 128 characters)", v)
	}
	return nil
}

// nameRE is what a Name may look like.
var nameRE = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*$`)

// flavorRE is what a Flavor may look like (a DNS label, as the spec's flavor).
var flavorRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// archRE is what an Architecture may look like (GOARCH's names).
var archRE = regexp.MustCompile(`^[a-z0-9]{1,16}$`)

// Validate reports the first rule the config breaks, wrapping ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if c.SchemaVersion != SchemaVersion {
		bad("schemaVersion %d, want %d", c.SchemaVersion, SchemaVersion)
	}
	if !nameRE.MatchString(c.Name) {
		bad("name %q: want lower-case alphanumerics separated by '.', '_' or '-'", c.Name)
	}
	if err := CheckVersion(c.Version); err != nil {
		bad("%v", err)
	}
	if err := c.SpecDigest.Validate(); err != nil {
		bad("specDigest %q: %v", c.SpecDigest, err)
	}
	if c.Flavor != "" && !flavorRE.MatchString(c.Flavor) {
		bad("flavor %q: want at most 63 lower-case alphanumerics or '-', starting and ending with an alphanumeric", c.Flavor)
	}
	if c.Architecture != "" && !archRE.MatchString(c.Architecture) {
		bad("architecture %q: want GOARCH's name (amd64, arm64)", c.Architecture)
	}
	if c.SourceDateEpoch < 0 {
		bad("sourceDateEpoch %d is negative", c.SourceDateEpoch)
	}
	for i, l := range c.Layers {
		if l.Role == "" {
			bad("layers[%d]: empty role", i)
		}
		if err := l.Digest.Validate(); err != nil {
			bad("layers[%d] (%s): digest %q: %v", i, l.Role, l.Digest, err)
		}
		if l.Size < 0 {
			bad("layers[%d] (%s): negative size %d", i, l.Role, l.Size)
		}
		for j, s := range l.Sources {
			if s.URI == "" {
				bad("layers[%d] (%s).sources[%d]: empty uri", i, l.Role, j)
			}
			if s.Digest != "" {
				if err := s.Digest.Validate(); err != nil {
					bad("layers[%d] (%s).sources[%d]: digest %q: %v", i, l.Role, j, s.Digest, err)
				}
			}
		}
	}
	if c.Rootfs.Digest != "" {
		if err := c.Rootfs.Digest.Validate(); err != nil {
			bad("rootfs digest %q: %v", c.Rootfs.Digest, err)
		}
	}
	if c.Rootfs.Size < 0 || c.Rootfs.Entries < 0 {
		bad("rootfs: negative size or entries")
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
}

// Artifact is one file of an image (rootfs.tar, disk.raw, vmlinuz, …): a layer of its manifest.
type Artifact struct {
	// Name is the artifact's file name, written as org.opencontainers.image.title.
	Name        string
	MediaType   string
	Digest      digest.Digest
	Size        int64
	Annotations map[string]string
}

// Validate checks that the artifact can be a manifest layer.
func (a Artifact) Validate() error {
	switch {
	case a.Name == "" || a.Name == "." || a.Name == ".." || strings.ContainsAny(a.Name, "/\\\x00"):
		return fmt.Errorf("%w: artifact name %q: want a plain file name", ErrInvalid, a.Name)
	case a.MediaType == "":
		return fmt.Errorf("%w: artifact %q: empty media type", ErrInvalid, a.Name)
	case a.Size < 0:
		return fmt.Errorf("%w: artifact %q: negative size %d", ErrInvalid, a.Name, a.Size)
	}
	if err := a.Digest.Validate(); err != nil {
		return fmt.Errorf("%w: artifact %q: digest %q: %w", ErrInvalid, a.Name, a.Digest, err)
	}
	return nil
}

// ValidateArtifacts validates each artifact and rejects duplicate names.
func ValidateArtifacts(artifacts []Artifact) error {
	seen := make(map[string]bool, len(artifacts))
	for _, a := range artifacts {
		if err := a.Validate(); err != nil {
			return err
		}
		if seen[a.Name] {
			return fmt.Errorf("%w: duplicate artifact name %q", ErrInvalid, a.Name)
		}
		seen[a.Name] = true
	}
	return nil
}

// EncodeConfig returns the canonical JSON of cfg after validating it. The same config always
// encodes to the same bytes.
func EncodeConfig(cfg Config) ([]byte, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return marshal(cfg)
}

// DecodeConfig parses and validates a config blob. Unknown fields are ignored so that older
// readers accept configs from newer writers of the same schema version.
func DecodeConfig(data []byte) (Config, error) {
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return Config{}, fmt.Errorf("%w: decoding config: %w", ErrInvalid, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ConfigDescriptor is the descriptor of an encoded config blob.
func ConfigDescriptor(encoded []byte) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType: ConfigMediaType,
		Digest:    digest.FromBytes(encoded),
		Size:      int64(len(encoded)),
	}
}

// Build returns the OCI image manifest of an image: config is the descriptor of cfg's encoded
// blob (see ConfigDescriptor) and artifacts become its layers, in the order given. It is a pure
// function of its inputs; call Validate and ValidateArtifacts first (Render does).
func Build(cfg Config, config ocispec.Descriptor, artifacts []Artifact) ocispec.Manifest {
	layers := make([]ocispec.Descriptor, 0, len(artifacts))
	for _, a := range artifacts {
		ann := make(map[string]string, len(a.Annotations)+1)
		for k, v := range a.Annotations {
			ann[k] = v
		}
		ann[AnnotationTitle] = a.Name
		layers = append(layers, ocispec.Descriptor{
			MediaType:   a.MediaType,
			Digest:      a.Digest,
			Size:        a.Size,
			Annotations: ann,
		})
	}
	ann := map[string]string{
		AnnotationName:    cfg.Name,
		AnnotationVersion: cfg.Version,
		AnnotationCreated: cfg.Created().Format(time.RFC3339),
	}
	if cfg.Kubernetes != "" {
		ann[AnnotationKubernetesVersion] = cfg.Kubernetes
	}
	if cfg.Kernel != "" {
		ann[AnnotationKernelVersion] = cfg.Kernel
	}
	if cfg.Architecture != "" {
		ann[AnnotationArchitecture] = cfg.Architecture
	}
	return ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config: ocispec.Descriptor{
			MediaType: ConfigMediaType,
			Digest:    config.Digest,
			Size:      config.Size,
		},
		Layers:      layers,
		Annotations: ann,
	}
}

// EncodeManifest returns the canonical JSON of m: the same manifest always encodes to the
// same bytes (encoding/json sorts map keys).
func EncodeManifest(m ocispec.Manifest) ([]byte, error) { return marshal(m) }

// Rendered is an image's config and manifest, encoded, with their descriptors.
type Rendered struct {
	Config             Config
	ConfigJSON         []byte
	ConfigDescriptor   ocispec.Descriptor
	Manifest           ocispec.Manifest
	ManifestJSON       []byte
	ManifestDescriptor ocispec.Descriptor
}

// Render validates cfg and artifacts, then encodes the config and builds and encodes the
// manifest. The manifest descriptor carries ArtifactType.
func Render(cfg Config, artifacts []Artifact) (Rendered, error) {
	cj, err := EncodeConfig(cfg)
	if err != nil {
		return Rendered{}, err
	}
	if err := ValidateArtifacts(artifacts); err != nil {
		return Rendered{}, err
	}
	cd := ConfigDescriptor(cj)
	m := Build(cfg, cd, artifacts)
	mj, err := EncodeManifest(m)
	if err != nil {
		return Rendered{}, err
	}
	return Rendered{
		Config:           cfg,
		ConfigJSON:       cj,
		ConfigDescriptor: cd,
		Manifest:         m,
		ManifestJSON:     mj,
		ManifestDescriptor: ocispec.Descriptor{
			MediaType:    ocispec.MediaTypeImageManifest,
			ArtifactType: ArtifactType,
			Digest:       digest.FromBytes(mj),
			Size:         int64(len(mj)),
		},
	}, nil
}

// DecodeManifest parses an image manifest and checks that it is an imgctl image manifest.
func DecodeManifest(data []byte) (ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return ocispec.Manifest{}, fmt.Errorf("%w: decoding manifest: %w", ErrInvalid, err)
	}
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest {
		return ocispec.Manifest{}, fmt.Errorf("%w: not an OCI image manifest (schemaVersion %d, mediaType %q)",
			ErrInvalid, m.SchemaVersion, m.MediaType)
	}
	if m.Config.MediaType != ConfigMediaType {
		return ocispec.Manifest{}, fmt.Errorf("%w: config media type %q, want %q", ErrInvalid, m.Config.MediaType, ConfigMediaType)
	}
	if err := m.Config.Digest.Validate(); err != nil {
		return ocispec.Manifest{}, fmt.Errorf("%w: config digest %q: %w", ErrInvalid, m.Config.Digest, err)
	}
	for i, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil {
			return ocispec.Manifest{}, fmt.Errorf("%w: layers[%d] digest %q: %w", ErrInvalid, i, l.Digest, err)
		}
	}
	return m, nil
}

// Artifacts returns the manifest's layers as artifacts (the inverse of Build).
func Artifacts(m ocispec.Manifest) []Artifact {
	out := make([]Artifact, 0, len(m.Layers))
	for _, l := range m.Layers {
		var ann map[string]string
		for k, v := range l.Annotations {
			if k == AnnotationTitle {
				continue
			}
			if ann == nil {
				ann = make(map[string]string)
			}
			ann[k] = v
		}
		out = append(out, Artifact{
			Name:        l.Annotations[AnnotationTitle],
			MediaType:   l.MediaType,
			Digest:      l.Digest,
			Size:        l.Size,
			Annotations: ann,
		})
	}
	return out
}

// marshal encodes v as compact JSON without HTML escaping ('<', '>' and '&' stay as they are,
// as other OCI tools write them).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encoding JSON: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

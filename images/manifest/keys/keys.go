// Package keys spells the image manifest's annotation keys and artifact names that a node reads
// to update itself (package images/update): a leaf, the standard library only, so the node agent
// can import it. Package manifest re-exports every one of them: builders and servers use those.
package keys

// Manifest annotations (on the image manifest).
const (
	// Version is the image's readable version (OCI's org.opencontainers.image.version).
	Version = "org.opencontainers.image.version"
	// KubernetesVersion is the image's Kubernetes version (1.21.13).
	KubernetesVersion = "dev.imgctl.kubernetes.version"
	// Architecture is the image's architecture, as GOARCH spells it (amd64).
	Architecture = "dev.imgctl.architecture"
)

// Artifact annotations (on a manifest layer).
const (
	// Title is the artifact's file name (OCI's org.opencontainers.image.title).
	Title = "org.opencontainers.image.title"
	// KernelCmdline is a kernel command line, space-separated: on rootfs.squashfs and boot.ipxe
	// the spec's, on disk.simg slot A's whole command line.
	KernelCmdline = "dev.imgctl.kernel.cmdline"
	// RootDigest is the root blob's digest, sha256:HEX: rootfs.squashfs with its verity hash area.
	RootDigest = "dev.imgctl.root.digest"
	// RootSize is the root blob's size in bytes, hash area included.
	RootSize = "dev.imgctl.root.size"
	// RootVerityRootHash is the root's dm-verity root hash, 64 lower-case hex.
	RootVerityRootHash = "dev.imgctl.root.verity.roothash"
	// RootVerityOffset is where the root's verity hash area starts in the root blob: the
	// squashfs's size in bytes, a multiple of 4096.
	RootVerityOffset = "dev.imgctl.root.verity.offset"
)

// Artifact names (Title) of the boot artifacts.
const (
	KernelArtifact       = "vmlinuz"
	InitrdArtifact       = "initrd.img"
	RootSquashfsArtifact = "rootfs.squashfs"
)

// Package boot is the contract between the image builders and the node agent: the kernel
// command-line keys, the forms of a device in their values, the GPT partition labels, the A/B
// slots' loader entries and ESP paths, and the initrd's module list. Both sides import it (the GPT encoding is its package gpt), so the two
// cannot drift. It is a leaf: the standard library only, small enough for every initrd.
package boot

import "strings"

// Kernel command-line keys (KEY=VALUE; a flag may stand alone).
const (
	// KeyRoot names the root image: a device (see Device forms) or, for a network root, an
	// http(s) URL whose last path element is the image's digest sha256:HEX (or any URL with
	// KeyRootDigest). Required.
	KeyRoot = "imgctl.root"
	// KeyRootDigest is the root's digest, sha256:HEX. For a network root it is required when
	// KeyRoot's URL does not end in it: a network root is never mounted unverified. On a disk
	// root it names the slot's root blob (rootfs.squashfs with its hash area): the node's
	// identity for updates and boot reports; the init does not re-hash a disk root (KeyVerity
	// verifies its blocks).
	KeyRootDigest = "imgctl.root-digest"
	// KeyVerity is the root's dm-verity root hash, 64 lower-case hex: with it the init maps the
	// root through dm-verity (package verity's format) and mounts the mapped device.
	KeyVerity = "imgctl.verity"
	// KeyVerityOffset is where the root's verity hash area (its superblock) starts: bytes from
	// the root device's start, the size of the data, a multiple of 4096. Required with KeyVerity.
	KeyVerityOffset = "imgctl.verity-offset"
	// KeyState names the STATE partition (a device) that holds /var.
	KeyState = "imgctl.state"
	// KeyInit is the root's init, an absolute path.
	KeyInit = "imgctl.init"
	// KeyRootTimeout bounds the wait for the root device: a Go duration or seconds.
	KeyRootTimeout = "imgctl.root-timeout"
	// KeyDebug (a flag) keeps a failed init from rebooting, so the console can be read.
	KeyDebug = "imgctl.debug"
	// KeyMetadata is the imgctl metadata server's base URL.
	KeyMetadata = "imgctl.metadata"
	// KeyCredential is the node credential sent to the metadata server as a bearer token.
	KeyCredential = "imgctl.credential"
	// KeyMetadataInsecure (a flag) allows sending the credential over plain http://.
	KeyMetadataInsecure = "imgctl.metadata-insecure"
	// KeyMetadataPin pins the metadata server's TLS certificate: sha256:HEX of the leaf
	// certificate's DER bytes (imgctl serve passes it when it serves TLS). With a pin, the node
	// accepts exactly that certificate, whatever signed it.
	KeyMetadataPin = "imgctl.metadata-pin"
	// KeyMetadataOrder lists the metadata providers to ask, comma-separated.
	KeyMetadataOrder = "imgctl.metadata-order"

	// KeyBootIF is the NIC a network root boots through, as iPXE and pxelinux pass it:
	// 01-aa-bb-cc-dd-ee-ff (hardware type 1, Ethernet, and the MAC).
	KeyBootIF = "BOOTIF"
	// KeyIP configures the boot NIC the way dracut and the kernel's nfsroot do: ip=dhcp,
	// ip=IFACE:dhcp, or ip=CLIENT::GW:NETMASK:HOST:IFACE:none.
	KeyIP = "ip"
)

// Param formats one kernel command-line parameter: KEY=VALUE.
func Param(key, value string) string { return key + "=" + value }

// Device forms of a KeyRoot or KeyState value: PARTUUID=GUID, PARTLABEL=NAME, or a /dev/ path.
const (
	PartUUID  = "PARTUUID"  // the GPT partition's unique GUID, lower case
	PartLabel = "PARTLABEL" // the GPT partition's name
	DevPrefix = "/dev/"     // a device node path
)

// PartUUIDDevice is the device form PARTUUID=guid, with guid lower-cased (as the node agent
// compares it).
func PartUUIDDevice(guid string) string { return PartUUID + "=" + strings.ToLower(guid) }

// PartLabelDevice is the device form PARTLABEL=label.
func PartLabelDevice(label string) string { return PartLabel + "=" + label }

// Partition labels (GPT partition names) of a node's disk. An initrd finds them as PARTNAME in
// /sys/class/block/*/uevent; LabelESP is also the ESP's FAT volume label and LabelState the
// ext4 label the node agent gives STATE when it formats it.
const (
	LabelESP   = "ESP"    // the EFI system partition: boot loader, kernels, initrds
	LabelRootA = "ROOT-A" // root image slot A (read-only squashfs)
	LabelRootB = "ROOT-B" // root image slot B, the next image during A/B updates
	LabelState = "STATE"  // /var; unformatted in the image, grown and formatted at first boot
)

// ModuleListPath is where the initrd lists the kernel modules its init loads, in order, one
// path relative to / a line. It is relative (as in the initrd's archive); the init reads
// "/" + ModuleListPath.
const ModuleListPath = "etc/imgctl/modules"

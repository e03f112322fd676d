#!/usr/bin/env bash
# Installs the Debian packages that imgctl's demo and tests use, when any is missing.
# mmdebstrap: Debian base layers; kmod: depmod oracle; skopeo: OCI interop oracle;
# xz-utils, zstd, binutils, dpkg-dev: fixtures; debian-archive-keyring: index signatures;
# time: peak RSS in benchmarks; qemu-system-x86 + ovmf: boot tests and make demo; gdisk,
# dosfstools, mtools, e2fsprogs, squashfs-tools(-ng), fdisk: disk oracles and benchmark peers;
# the script linter (shellcheck); android-sdk-libsparse-utils: simg2img oracle; systemd:
# systemd-analyze verify of the bootstrap units; containerd: the CRI client's real peer;
# openssl: the demo node's throwaway certificates; docker-registry (distribution 2.8): the real
# registry with TLS and htpasswd auth the registry and cosign tests push to; iproute2: the
# network namespaces and veth pairs of the network-root init's DHCP tests; ipxe-qemu (NIC
# option ROMs: iPXE for BIOS netboot) and ipxe (ipxe.efi for UEFI netboot): the netboot e2e tests;
# nginx: the peer of the imgctl serve benchmark (scripts/bench-serve.sh).
set -euo pipefail
packages=(ca-certificates git make mmdebstrap kmod xz-utils zstd skopeo debian-archive-keyring
  binutils dpkg-dev squashfs-tools squashfs-tools-ng time cpio qemu-system-x86 ovmf gdisk
  dosfstools mtools e2fsprogs fdisk util-linux shellcheck android-sdk-libsparse-utils systemd containerd openssl docker-registry
  iproute2 ipxe-qemu ipxe nginx)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: need root to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq -o DPkg::Lock::Timeout=600
$sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}"

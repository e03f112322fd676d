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
# nginx: the peer of the imgctl serve benchmark (scripts/bench-serve.sh); cryptsetup-bin
# (veritysetup): the dm-verity oracle; containernetworking-plugins and iptables: the real CNI
# plugins the pod-network tests run the node's conflist with (in a network namespace).
# Not from Debian: moto 5.2.1 (moto_server, the AWS peer of the AMI tests), which these machines
# have preinstalled; the script installs it with pip only when it is missing and pip can reach an
# index, and otherwise says so (under CI=true the AMI tests then fail rather than skip).
set -euo pipefail

check_moto() {
  command -v moto_server >/dev/null && return 0
  echo "install-deps.sh: moto_server is missing; trying pip install 'moto[server]==5.2.1'" >&2
  python3 -m pip install -q 'moto[server]==5.2.1' >&2 ||
    echo "install-deps.sh: could not install moto 5.2.1: the AMI tests need moto_server in PATH" >&2
}
trap check_moto EXIT
packages=(ca-certificates git make mmdebstrap kmod xz-utils zstd skopeo debian-archive-keyring
  binutils dpkg-dev squashfs-tools squashfs-tools-ng time cpio qemu-system-x86 ovmf gdisk
  dosfstools mtools e2fsprogs fdisk util-linux shellcheck android-sdk-libsparse-utils systemd containerd openssl docker-registry
  iproute2 ipxe-qemu ipxe nginx cryptsetup-bin containernetworking-plugins iptables)
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

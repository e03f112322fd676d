#!/usr/bin/env bash
# Boots a raw disk image built by imgctl in qemu (UEFI via OVMF, TCG: no KVM needed) and waits
# until systemd reaches multi-user.target, then, when the image has the bootstrap units, until the
# node is configured and its kubelet answers /healthz (step=kubelet-healthy); prints the
# imgctl-node step lines and the time it took. A step that fails ends the wait. The disk is
# copied first (sparse), so the image in the store is never modified. The guest gets a NIC on
# qemu's user network with restrict=on: DHCP works, nothing leaves this machine.
#   scripts/boot-qemu.sh DISK.raw [TIMEOUT_SECONDS]
set -euo pipefail
disk=${1:?usage: boot-qemu.sh DISK.raw [TIMEOUT_SECONDS]}
timeout_s=${2:-300}
ovmf_code=/usr/share/OVMF/OVMF_CODE.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS.fd
for f in "$ovmf_code" "$ovmf_vars"; do
  [ -r "$f" ] || { echo "boot-qemu.sh: $f missing (apt-get install ovmf)" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "boot-qemu.sh: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 2; }
tmp=$(mktemp -d)
qpid=
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
cp --sparse=always "$disk" "$tmp/disk.raw"
truncate -s 4G "$tmp/disk.raw" # room for STATE to grow into at first boot
cp "$ovmf_vars" "$tmp/vars.fd"
log=${CONSOLE_LOG:-$(dirname "$disk")/console.log}
rm -f "$log" # never read an earlier boot's console
start=$(date +%s)
qemu-system-x86_64 -accel tcg -cpu max -machine q35 -m 1536 -smp 2 -nographic -monitor none \
  -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,romfile= -no-reboot -serial "file:$log" \
  -drive "if=pflash,format=raw,readonly=on,file=$ovmf_code" -drive "if=pflash,format=raw,file=$tmp/vars.fd" \
  -drive "file=$tmp/disk.raw,format=raw,if=virtio" >/dev/null 2>&1 &
qpid=$!
echo "booting $disk in qemu (TCG); console: $log" >&2
steps() { grep -a "imgctl-node step=" "$log" | sed 's/^.*imgctl-node step=/imgctl-node step=/' | tr -d '\r' || true; }
multiuser=
for _ in $(seq "$timeout_s"); do
  # systemd's own line, or the demo layer's (systemd prints no status once a getty owns the console)
  if [ -z "$multiuser" ] && grep -aq "Reached target.*multi-user.target\|Reached target.*Multi-User System\|imgctl-demo: multi-user.target reached" "$log" 2>/dev/null; then
    multiuser=$(( $(date +%s) - start ))
    if ! grep -aq "kube-node-installation" "$log"; then # an image without the bootstrap layer
      steps
      echo "multi-user.target reached after $multiuser s (wall, TCG)"
      exit 0
    fi
  fi
  if [ -n "$multiuser" ] && grep -aq "step=kubelet-healthy status=ok" "$log"; then
    steps
    echo "multi-user.target reached after $multiuser s, kubelet healthy after $(( $(date +%s) - start )) s (wall, TCG)"
    exit 0
  fi
  if grep -aq "imgctl-node step=[^ ]* status=fail" "$log" 2>/dev/null; then
    steps
    echo "boot-qemu.sh: a boot step failed; see $log" >&2
    exit 1
  fi
  if ! kill -0 "$qpid" 2>/dev/null; then
    steps
    echo "boot-qemu.sh: the guest stopped before it was up; see $log" >&2
    exit 1
  fi
  sleep 1
done
echo "boot-qemu.sh: not up after ${timeout_s}s; see $log" >&2
exit 1

#!/usr/bin/env bash
# Boot-to-kubelet latency of the demo node image (make demo-image: the default spec, the real
# kubelet v1.21.13, the demo NodeConfig baked in) under qemu TCG, from the console alone:
# systemd's start ("systemd … running in system mode") to the kubelet's (step=kubelet-start),
# and the bootstrap steps on the way. Goal: <= 10 s of guest uptime after systemd starts.
# Appends a section to BENCHMARKS.md (make bench).
#
# Usage: scripts/bench-boot.sh DISK.raw
# Environment:
#   RUNS=3            boots
#   WAIT_IDLE=0       seconds to wait for other processes to leave the CPUs before measuring
#   BENCHMARKS=BENCHMARKS.md  file to append the results to (empty: print only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
disk=${1:?usage: bench-boot.sh DISK.raw}
RUNS=${RUNS:-3}
WAIT_IDLE=${WAIT_IDLE:-0}
BENCHMARKS=${BENCHMARKS-BENCHMARKS.md}
step_timeout=600
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/m"
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"
[ -f "$disk" ] || die "$disk missing (make demo-image builds it)"

# at LOG PATTERN: the console timestamp (seconds of guest uptime) of the first line matching.
at() { grep -a -m1 "$2" "$1" | sed -n 's/^[^[]*\[ *\([0-9][0-9]*\.[0-9]*\)\].*/\1/p'; }
# latency LOG STEP: the latency of an ok (or skipped: verify-binaries on a dm-verity root) step
# line, in seconds.
latency() { grep -a -m1 -E "step=$2 status=(ok|skip)" "$1" | sed -n 's/.* latency=\([0-9]*\)ms.*/\1/p' | awk '{printf "%.2f\n", $1 / 1000}'; }

busy=
wait_idle "$WAIT_IDLE" # sets busy
for i in $(seq "$RUNS"); do
  log=$tmp/console-$i.log
  CONSOLE_LOG=$log timeout "$step_timeout" scripts/boot-qemu.sh "$disk" 300 >/dev/null 2>&1 ||
    die "boot $i failed: $(grep -a 'status=fail' "$log" | head -n 3)"
  t_systemd=$(at "$log" 'systemd\[1\]: systemd .* running in system mode')
  t_kubelet=$(at "$log" 'step=kubelet-start status=ok')
  t_healthy=$(at "$log" 'step=kubelet-healthy status=ok')
  if [ -z "$t_systemd" ] || [ -z "$t_kubelet" ] || [ -z "$t_healthy" ]; then
    die "boot $i: timestamps missing in the console log"
  fi
  awk -v s="$t_systemd" -v k="$t_kubelet" 'BEGIN {printf "%.2f\n", k - s}' >>"$tmp/m/kubelet"
  awk -v s="$t_systemd" -v k="$t_healthy" 'BEGIN {printf "%.2f\n", k - s}' >>"$tmp/m/healthy"
  echo "$t_systemd" >>"$tmp/m/systemd"
  for s in verify-binaries metadata containerd kubelet-healthy; do latency "$log" "$s" >>"$tmp/m/$s"; done
  echo "boot $i: systemd at ${t_systemd}s, kubelet started ${t_kubelet}s (+$(tail -n1 "$tmp/m/kubelet")s), healthy ${t_healthy}s" >&2
done

row() { # NAME FILE
  read -r best median < <(stats "$2")
  echo "| $1 | $best | $median | $(sort -n "$2" | tr '\n' ' ')|"
}
read -r _ kmed < <(stats "$tmp/m/kubelet")
verdict=$(awk -v m="$kmed" 'BEGIN {print (m <= 10) ? "met" : "**not met**"}')
section=$tmp/section.md
{
  echo
  echo "## boot to kubelet under qemu TCG — $(date -u '+%Y-%m-%d %H:%M UTC'), imgctl $(git describe --always --dirty 2>/dev/null || echo dev)"
  echo
  echo "$(machine); CPUs ${busy}% busy before. \`scripts/bench-boot.sh $disk\` ($RUNS boots): qemu -accel tcg -cpu max -smp 2 -m 1536, OVMF, virtio disk enlarged to 4 GiB, user NIC with restrict=on. Image: \`make demo-image\` (default spec, real kubelet/kubeadm v1.21.13, demo NodeConfig in /etc/imgctl/node.yaml)."
  echo
  echo "Goal ≤ 10 s from systemd's start to the kubelet's: $verdict (median ${kmed} s)."
  echo
  echo "| seconds | best | median | all |"
  echo "| --- | ---: | ---: | --- |"
  row "systemd starts (guest uptime)" "$tmp/m/systemd"
  row "kubelet started, after systemd" "$tmp/m/kubelet"
  row "kubelet /healthz ok, after systemd" "$tmp/m/healthy"
  row "step verify-binaries (hash every baked executable; skipped on a dm-verity root)" "$tmp/m/verify-binaries"
  row "step metadata" "$tmp/m/metadata"
  row "step containerd (restart + CRI answers)" "$tmp/m/containerd"
  row "step kubelet-healthy (start to /healthz ok)" "$tmp/m/kubelet-healthy"
} >"$section"
cat "$section"
if [ -n "$BENCHMARKS" ]; then
  cat "$section" >>"$BENCHMARKS"
  echo "appended to $BENCHMARKS" >&2
fi

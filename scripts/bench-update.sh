#!/usr/bin/env bash
# Measures what a disk node's in-place update downloads and appends the results to BENCHMARKS.md
# (make bench): `imgctl images diff -o json V1 V2` of the default image against
#   1. a kubelet-only change: the same kubelet relinked with another version stamp
#      (-X k8s.io/component-base/version.gitVersion=vK8S-bench.2, as a patch release rebuilds
#      it: the build ID and version strings change, code moves), goal <= 25% of the root;
#   2. a kernel change: the kernel layer from another linux-image-*-cloud-amd64 release of
#      Debian bookworm (KERNEL_V2), if the Debian mirror serves it.
# Bytes fetched = B's root blocks found nowhere in A's root + B's dm-verity hash area + B's
# kernel and initrd where they differ (imgctl images diff's "update"), over B's root blob.
#
# Usage: scripts/bench-update.sh
#   The layers come from the bench cache of scripts/bench-compose.sh (.cache/bench; cold:
#   network and mmdebstrap, ~2 min). Builds use the pxe target (the same rootfs.squashfs blob a
#   raw disk carries in ROOT-A and publishes for updates).
# Environment:
#   K8S=1.21.13       Kubernetes version of the embedded default spec
#   TOOLS_DIR=.cache/tools  kubelet from $TOOLS_DIR/kubernetes/v$K8S/kubelet (make kubernetes)
#   KUBELET_V2=FILE   the changed kubelet (default: relinked from test/tools/kubernetes, cached
#                     in .cache/bench/kubelet-v2)
#   KERNEL_V2=PKG     Debian package of the changed kernel (default linux-image-6.1.0-47-cloud-amd64;
#                     empty: skip the kernel change)
#   BENCHMARKS=BENCHMARKS.md  file to append the results to (empty: print only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
K8S=${K8S:-1.21.13}
TOOLS_DIR=${TOOLS_DIR:-$here/.cache/tools}
BENCHMARKS=${BENCHMARKS-BENCHMARKS.md}
KERNEL_V2=${KERNEL_V2-linux-image-6.1.0-47-cloud-amd64}
epoch=1700000000
bench=$here/.cache/bench
step_timeout=1800 # seconds, one build (cold: layers from the network)
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"

command -v go >/dev/null || die "go is not on PATH"
command -v jq >/dev/null || die "jq is missing (Debian package: jq)"
{ [ -x bin/imgctl ] && [ -x bin/imgctl-node ]; } || die "bin/imgctl or bin/imgctl-node is missing: run make build (make bench does)"
[ -f "$bench/imgctl.lock" ] || die "no $bench/imgctl.lock: run scripts/bench-compose.sh first (make bench does)"
tmp=$(mktemp -d "$bench/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
mkdir "$tmp/m"

bench_kubelet
[ -f "$TOOLS_DIR/kubernetes/v$K8S/kubelet" ] || die "no $TOOLS_DIR/kubernetes/v$K8S/kubelet: run make kubernetes (a real kubelet makes the measurement meaningful)"
kubelet_v2=${KUBELET_V2:-$bench/kubelet-v2/v$K8S-bench.2/kubelet}
if [ ! -f "$kubelet_v2" ]; then
  echo "relinking kubelet v$K8S with the version stamp v$K8S-bench.2 into ${kubelet_v2#"$here"/}" >&2
  mkdir -p "$(dirname "$kubelet_v2")"
  (cd test/tools/kubernetes && GONOSUMDB=k8s.io GOFLAGS=-mod=mod CGO_ENABLED=0 timeout "$step_timeout" go build -trimpath \
    -tags providerless,dockerless -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$K8S-bench.2 -X k8s.io/component-base/version.gitTreeState=clean" \
    -o "$kubelet_v2.tmp" k8s.io/kubernetes/cmd/kubelet) || die "relinking the kubelet failed"
  mv "$kubelet_v2.tmp" "$kubelet_v2"
fi
kubelet_v2_version=$("$kubelet_v2" --version)

# build NAME [--source ...]: one pxe build of the default spec into $tmp/store; prints its digest.
build() {
  local name=$1 image
  shift
  cp "$bench/imgctl.lock" "$tmp/lock.$name"
  echo "building $name" >&2
  image=$(SOURCE_DATE_EPOCH=$epoch timeout "$step_timeout" bin/imgctl -q --cache "$bench/cache" --store "$tmp/store" \
    build --k8s "$K8S" --lock "$tmp/lock.$name" --target pxe --node-agent bin/imgctl-node "$@" 2>"$tmp/m/$name.err" | tail -n 1) ||
    { tail -n 5 "$tmp/m/$name.err" >&2; return 1; }
  case $image in sha256:*) echo "$image" ;; *) tail -n 5 "$tmp/m/$name.err" >&2 && return 1 ;; esac
}

# diff NAME A B: imgctl images diff -o json into $tmp/m/NAME.json, timed.
diff_images() {
  local t0 t1
  t0=$(date +%s%N)
  timeout "$step_timeout" bin/imgctl --store "$tmp/store" -o json images diff "$2" "$3" >"$tmp/m/$1.json" ||
    die "imgctl images diff $2 $3 failed"
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000)) >"$tmp/m/$1.ms"
}

kube_src() { echo "kubelet=file://$1#path=/usr/bin/kubelet&mode=0755"; }
v1=$(build v1 --source "$(kube_src "$kubelet")") || die "building v1 failed"
v2=$(build kubelet --source "$(kube_src "$kubelet_v2")") || die "building the kubelet change failed"
diff_images kubelet "$v1" "$v2"
kernel_note=""
if [ -n "$KERNEL_V2" ]; then
  if v3=$(build kernel --source "$(kube_src "$kubelet")" --source "kernel=deb://deb.debian.org/debian?suite=bookworm&package=$KERNEL_V2"); then
    diff_images kernel "$v1" "$v3"
  else
    kernel_note="the kernel change was not measured: building with $KERNEL_V2 failed ($(tail -n 1 "$tmp/m/kernel.err"))"
  fi
else
  kernel_note="the kernel change was not measured (KERNEL_V2 empty)"
fi

mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
row() { # LABEL NAME
  local j=$tmp/m/$2.json
  jq -r --arg l "$1" --arg ms "$(cat "$tmp/m/$2.ms")" '
    def mb: . / 1e6 * 10 | round / 10;
    "| \($l) | \(.update.rootBytes | mb) | \(.blocks.fetch) of \(.blocks.blocks) | \(.update.blockBytes | mb) + \(.update.hashAreaBytes | mb) + \(.update.kernelBytes | mb) + \(.update.initrdBytes | mb) = **\(.update.fetchBytes | mb)** | **\(.update.percent * 10 | round / 10)%** | \(.files.changed) changed, \(.files.added) added, \(.files.removed) removed | \($ms | tonumber / 1000) |"' "$j"
}
kube_pct=$(jq -r '.update.percent' "$tmp/m/kubelet.json")
if awk -v p="$kube_pct" 'BEGIN {exit !(p <= 25)}'; then verdict="met"; else verdict="**not met**"; fi
verity=$(jq -r 'if .blocks.verityB then "B carries its dm-verity tree (leaves read from its hash area, checked against the root hash)" else "B has no dm-verity tree yet (leaves hashed from its blocks; no hash area fetched)" end' "$tmp/m/kubelet.json")
start_date=$(date -u '+%Y-%m-%d %H:%M UTC')

section=$tmp/section.md
{
  echo "## in-place update: bytes a disk node fetches (imgctl images diff) — $start_date, imgctl $(git describe --tags --always --dirty 2>/dev/null || echo dev)"
  echo
  echo "- Machine: $(machine); 1-min load average $(loadavg) at the end."
  echo "- Input: the default spec (k8s $K8S) built with \`--target pxe\` from the bench cache (.cache/bench) and a copy of its lock; v1 with the $kubelet_desc. Kubelet change: the same kubelet relinked with \`-X k8s.io/component-base/version.gitVersion=v$K8S-bench.2\` ($kubelet_v2_version). Kernel change: the kernel layer \`deb://deb.debian.org/debian?suite=bookworm&package=$KERNEL_V2\` instead of the lock's."
  echo "- Method: \`imgctl images diff -o json V1 V2\`: B's 4 KiB root blocks that are nowhere in A's root are fetched (update.PlanBlocks with an empty inactive slot), plus B's hash area, plus B's kernel and initrd when they differ. $verity. Reproduce: \`scripts/bench-update.sh\` (\`make bench\` runs it)."
  echo
  echo "Goal for the kubelet change ≤ 25% of the root: $verdict ($(awk -v p="$kube_pct" 'BEGIN {printf "%.1f", p}')%)."
  echo
  echo "| change | B's root MB | blocks fetched | MB fetched: blocks + hash area + kernel + initrd | ÷ B's root | files | diff s |"
  echo "| --- | ---: | ---: | ---: | ---: | --- | ---: |"
  row "kubelet relinked (version stamp)" kubelet
  if [ -f "$tmp/m/kernel.json" ]; then row "kernel $KERNEL_V2" kernel; fi
  echo
  if [ -n "$kernel_note" ]; then
    echo "Note: $kernel_note."
    echo
  fi
} >"$section"
cat "$section"
if [ -n "$BENCHMARKS" ]; then
  [ -f "$BENCHMARKS" ] || die "$BENCHMARKS is missing"
  cat "$section" >>"$BENCHMARKS"
  echo "appended to $BENCHMARKS" >&2
fi

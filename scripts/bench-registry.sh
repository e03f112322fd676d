#!/usr/bin/env bash
# imgctl push and pull against skopeo copy, the peer, on one image of a store, to a fresh
# in-memory registry on loopback for every run (go-containerregistry's pkg/registry,
# test/bench/registry), so nothing is already there. Appends a section to BENCHMARKS.md.
#
# Usage: scripts/bench-registry.sh [STORE [IMAGE]]   (default: .imgctl/store and its newest image;
#   make bench builds the demo image there first)
# Environment:
#   RUNS=3            timed runs of each command, interleaved
#   BENCHMARKS=BENCHMARKS.md  file to append the results to (empty: print only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
store=${1:-.imgctl/store}
RUNS=${RUNS:-3}
BENCHMARKS=${BENCHMARKS-BENCHMARKS.md}
step_timeout=600
tmp=$(mktemp -d)
reg_pid=
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$tmp/m"
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"
[ -x bin/imgctl ] || die "bin/imgctl is missing: run make build (make bench does)"
command -v skopeo >/dev/null || die "skopeo is missing (scripts/install-deps.sh)"
image=${2:-$(bin/imgctl --store "$store" -o json images list | sed -n 's/.*"Digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' | head -n 1)}
[ -n "$image" ] || die "no image in $store (make demo-image builds one)"
version=$(bin/imgctl --store "$store" -o json images list | grep -A2 "\"$image\"" | sed -n 's/.*"Version": *"\([^"]*\)".*/\1/p')
[ -n "$version" ] || die "image $image has no version"
# bytes uploaded: the manifest's config and artifacts
bytes=$(skopeo inspect --raw "oci:$store:$version" | grep -o '"size":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s}')
go build -o "$tmp/registry" ./test/bench/registry

# registry: starts a fresh registry (killing the previous one) and sets addr.
registry() {
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; fi
  "$tmp/registry" -timeout 10m >"$tmp/addr" &
  reg_pid=$!
  for _ in $(seq 50); do [ -s "$tmp/addr" ] && break; sleep 0.1; done
  addr=$(cat "$tmp/addr")
  [ -n "$addr" ] || die "the bench registry did not start"
}

busy=
wait_idle 0 # sets busy
for i in $(seq "$RUNS"); do
  registry
  timed push bin/imgctl -q --store "$store" push "$image" "$addr/imgctl/node"
  registry
  timed skopeo_push skopeo copy -q --dest-tls-verify=false "oci:$store:$version" "docker://$addr/imgctl/node:$version"
  # pulls from a registry that has the image (pushed untimed), into empty destinations
  bin/imgctl -q --store "$store" push "$image" "$addr/imgctl/node" >/dev/null
  rm -rf "$tmp/pull" "$tmp/skopeo"
  timed pull bin/imgctl -q --store "$tmp/pull" pull "$addr/imgctl/node:$version"
  timed skopeo_pull skopeo copy -q --src-tls-verify=false "docker://$addr/imgctl/node:$version" "oci:$tmp/skopeo:$version"
  echo "run $i done" >&2
done

row() { # NAME LABEL PEER
  local best m pb pm cpu
  read -r best m < <(stats "$tmp/m/$1.ns")
  read -r pb pm < <(stats "$tmp/m/$3.ns")
  cpu=$(stats "$tmp/m/$1.cpu" | cut -d' ' -f2)
  awk -v l="$2" -v b="$best" -v m="$m" -v c="$cpu" -v r="$(maxof "$tmp/m/$1.rss")" -v pb="$pb" -v pm="$pm" -v by="$bytes" \
    'BEGIN {printf "| %s | %.2f | %.2f | %d | %.2f | %.1f | %.2f× / %.2f× |\n", l, b/1e9, m/1e9, by/1e6/(m/1e9), c, r/1024, b/pb, m/pm}'
}
section=$tmp/section.md
{
  echo
  echo "## push and pull vs skopeo copy — $(date -u '+%Y-%m-%d %H:%M UTC'), imgctl $(git describe --always --dirty 2>/dev/null || echo dev)"
  echo
  echo "$(machine); CPUs ${busy}% busy before. \`scripts/bench-registry.sh\` ($RUNS runs each, interleaved; a fresh in-memory registry on 127.0.0.1 for every push, so every blob is uploaded): image $version, $((bytes / 1000000)) MB of artifacts. Ratio = imgctl's time / skopeo's (< 1: imgctl faster)."
  echo
  echo "| command | best s | median s | MB/s median | CPU s median | peak RSS MiB | ÷ skopeo (best / median) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  row push "\`imgctl push IMAGE REGISTRY/REPO\`" skopeo_push
  row skopeo_push "\`skopeo copy oci:STORE:VERSION docker://…\`" skopeo_push
  row pull "\`imgctl pull REGISTRY/REPO:VERSION\` (into an empty store, every blob verified)" skopeo_pull
  row skopeo_pull "\`skopeo copy docker://… oci:DIR:VERSION\`" skopeo_pull
} >"$section"
cat "$section"
if [ -n "$BENCHMARKS" ]; then
  cat "$section" >>"$BENCHMARKS"
  echo "appended to $BENCHMARKS" >&2
fi

#!/usr/bin/env bash
# AMI uploads (images/ebssnap) against the in-process fake EBS endpoint (images/awsfake) on
# 127.0.0.1, measured by test/bench/ami. Appends a section to BENCHMARKS.md.
#
# 1. Zero-skip: bytes sent ÷ disk size for a full upload of the default image's disk.simg
#    (`imgctl build --k8s K8S --target raw`, the layers of the bench cache).
# 2. Incremental: the same image with only the kubelet changed (one byte put in front of it, so
#    every kubelet block differs: bench-raw.sh's kubelet change), uploaded on top of the first
#    one's snapshot with its recorded block hashes. Blocks sent ÷ the volume's blocks and ÷ what
#    a full upload sends (goal ≤ 15%), and where the changed blocks lie, by GPT partition.
# 3. Throughput: upload MB/s at 1, 16 and 64 blocks in flight, next to the limit: a plain Go
#    client PUTting the same 512 KiB blocks to a trivial loopback server at the same concurrency.
# 4. (RUNS > 1, as root, with mksquashfs) What would fix (2): the two images' rootfs trees
#    written by mksquashfs in path order (as imgctl writes them) and with `-sort` putting the
#    files that changed last; 512 KiB blocks that differ between the two images of each pair.
#
# Usage: scripts/bench-ami.sh   (make bench runs it)
# Environment:
#   RUNS=3            timed runs of each throughput measurement, interleaved
#   K8S=1.21.13       Kubernetes version of the embedded default spec
#   TOOLS_DIR=.cache/tools  kubelet from $TOOLS_DIR/kubernetes/v$K8S/kubelet if built, else a
#                     tiny generated file
#   WAIT_IDLE=0       seconds to wait for other processes to leave the CPUs before measuring
#   AMI_LAYOUT=1      run measurement 4 (default: 1 when RUNS > 1, else 0)
#   BENCHMARKS=BENCHMARKS.md  file to append the results to (empty: print only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
RUNS=${RUNS:-3}
K8S=${K8S:-1.21.13}
TOOLS_DIR=${TOOLS_DIR:-$here/.cache/tools}
WAIT_IDLE=${WAIT_IDLE:-0}
BENCHMARKS=${BENCHMARKS-BENCHMARKS.md}
epoch=1700000000
bench=$here/.cache/bench
build_timeout=1800 # seconds, cold build of the layers
step_timeout=600   # seconds, any single command
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"

case $RUNS in '' | *[!0-9]* | 0) die "RUNS=$RUNS: expected a positive number" ;; esac
if [ "$RUNS" -gt 1 ]; then layout=${AMI_LAYOUT:-1}; else layout=${AMI_LAYOUT:-0}; fi
{ [ -x bin/imgctl ] && [ -x bin/imgctl-node ]; } || die "bin/imgctl or bin/imgctl-node is missing: run make build (make bench does)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian package: time)"
if [ "$layout" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "AMI_LAYOUT=1 extracts the rootfs with its device nodes: run as root, or set AMI_LAYOUT=0"
  command -v mksquashfs >/dev/null || die "mksquashfs is missing (Debian package squashfs-tools), or set AMI_LAYOUT=0"
fi

mkdir -p "$bench"
tmp=$(mktemp -d "$bench/tmp.XXXXXX") # on the repository's filesystem, like the bench cache
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
mkdir "$tmp/m"

bench_kubelet
bench_build "$build_timeout" >/dev/null # the layers, into the bench cache (cached after the first run)
go build -o "$tmp/ami" ./test/bench/ami

# ami_build NAME CACHE KUBELET: builds the default spec's raw image (and its rootfs tar) with
# KUBELET as /usr/bin/kubelet into $tmp/store; sets simg_NAME and rootfs_NAME to its disk.simg
# and rootfs blob files and image_NAME to its digest.
ami_build() {
  local image inspect simg rootfs
  cp "$bench/imgctl.lock" "$tmp/lock"
  SOURCE_DATE_EPOCH=$epoch timeout "$step_timeout" bin/imgctl -q --cache "$2" --store "$tmp/store" \
    build --k8s "$K8S" --lock "$tmp/lock" --target rootfs,raw --node-agent bin/imgctl-node \
    --source "kubelet=file://$3#path=/usr/bin/kubelet&mode=0755" >"$tmp/$1.out" 2>"$tmp/$1.err" ||
    die "$1: imgctl build failed: $(tail -n 3 "$tmp/$1.err")"
  image=$(tail -n 1 "$tmp/$1.out")
  case $image in sha256:*) ;; *) die "$1: imgctl build printed no image digest" ;; esac
  inspect=$(bin/imgctl --store "$tmp/store" images inspect "$image")
  simg=$(sed -n 's/^ *disk.simg *sha256:\([0-9a-f]*\).*/\1/p' <<<"$inspect")
  rootfs=$(sed -n 's/^rootfs *sha256:\([0-9a-f]*\).*/\1/p' <<<"$inspect")
  { [ -n "$simg" ] && [ -n "$rootfs" ]; } || die "$1: image $image has no disk.simg or rootfs"
  printf -v "simg_$1" %s "$tmp/store/blobs/sha256/$simg"
  printf -v "rootfs_$1" %s "$tmp/store/blobs/sha256/$rootfs"
  printf -v "image_$1" %s "$image"
}
echo "building the default image and the same with only the kubelet changed" >&2
ami_build base "$bench/cache" "$kubelet"
# the kubelet change of bench-raw.sh: one byte put in front, every kubelet block differs; the
# bench cache copied with the previous image's squashfs blocks, into the same store
cache_copy "$tmp/cache-bump" blocks
{ printf 1; cat "$kubelet"; } >"$tmp/kubelet-bump"
ami_build bump "$tmp/cache-bump" "$tmp/kubelet-bump"
rm -rf "$tmp/cache-bump"
# shellcheck disable=SC2154 # set by ami_build
{ [ "$simg_base" != "$simg_bump" ] && [ "$image_base" != "$image_bump" ]; } || die "the kubelet change did not change the image"

busy=
wait_idle "$WAIT_IDLE" # sets busy
load0=$(loadavg)
echo "measuring: a full upload and the kubelet change on top of it, then $RUNS interleaved runs at 1, 16 and 64 in flight (CPUs ${busy}% busy before)" >&2
others=$(running)
read -r j0_busy j0_total < <(jiffies)
# 1 and 2: deterministic counts, one run
timed incremental "$tmp/ami" incremental -base "$simg_base" -next "$simg_bump" -areas "$tmp/m/areas.md"
cp "$tmp/m/incremental.stdout" "$tmp/m/incremental.json"
# 3: each measurement is a process (timed: its CPU counts as ours in others_during)
conc="1 16 64"
for i in $(seq "$RUNS"); do
  for c in $conc; do
    for k in upload put; do
      timed "$k.$c" "$tmp/ami" "$k" -simg "$simg_base" -concurrency "$c"
      cat "$tmp/m/$k.$c.stdout" >>"$tmp/m/$k.$c"
    done
  done
  echo "  run $i of $RUNS done" >&2
done
read -r j1_busy j1_total < <(jiffies)
others_during=$(others_during "$j0_busy" "$j0_total" "$j1_busy" "$j1_total")
load1=$(loadavg)

# 4
layout_rows=
if [ "$layout" = 1 ]; then
  echo "what would fix it: mksquashfs of both rootfs trees, in path order and with the changed files last" >&2
  sq=(-comp zstd -Xcompression-level 3 -processors 2 -noappend -quiet -no-progress)
  for v in base bump; do
    r=rootfs_$v
    mkdir "$tmp/tree-$v"
    tar -xpf "${!r}" --numeric-owner -C "$tmp/tree-$v"
  done
  mapfile -t changed < <(diff -rq --no-dereference "$tmp/tree-base" "$tmp/tree-bump" 2>/dev/null |
    sed -n "s|^Files $tmp/tree-base/\(.*\) and .* differ\$|\1|p")
  [ ${#changed[@]} -ge 1 ] || die "no file differs between the two rootfs trees"
  changed_md=
  p=-32768
  for f in "${changed[@]}"; do
    echo "$f $p" >>"$tmp/sort"
    changed_md+="\`$f\` "
    p=$((p + 1))
  done
  for v in base bump; do
    timeout "$step_timeout" mksquashfs "$tmp/tree-$v" "$tmp/path-$v.sqfs" "${sq[@]}" >/dev/null
    timeout "$step_timeout" mksquashfs "$tmp/tree-$v" "$tmp/last-$v.sqfs" "${sq[@]}" -sort "$tmp/sort" >/dev/null
  done
  for k in path last; do
    "$tmp/ami" blockdiff "$tmp/$k-base.sqfs" "$tmp/$k-bump.sqfs" >"$tmp/m/layout.$k"
  done
  rm -rf "$tmp/tree-base" "$tmp/tree-bump"
  layout_rows=1
fi

# ---- report ----
inc=$tmp/m/incremental.json
# jnum FILE FIELD: FIELD of the JSON line in FILE, for flat fields (the first match)
jnum() { json_field "$2" "$1" | head -n 1; }
# sub FILE OBJECT FIELD: FIELD inside the object OBJECT ("base", "next") of FILE
sub() { sed -n "s/.*\"$2\":{\([^}]*\)}.*/{\1}/p" "$1" | json_field "$3" /dev/stdin; }
med() { stats "$tmp/m/$1.$c.$2" | cut -d' ' -f2; } # NAME FIELD: median of FIELD over the runs at $c
pct() { awk -v v="$1" 'BEGIN {printf "%.1f%%", 100 * v}'; }
verdict() { awk -v v="$1" -v g="$2" 'BEGIN {print (v <= g) ? "met" : "**not met**"}'; }
sent_full=$(jnum "$inc" sent_of_full)
sent_blocks=$(jnum "$inc" sent_of_blocks)
section=$tmp/section.md
{
  echo
  echo "## AMI upload (EBS direct APIs) against the in-process fake — $(date -u '+%Y-%m-%d %H:%M UTC'), imgctl $(git describe --always --dirty 2>/dev/null || echo dev)"
  echo
  echo "- Machine: $(machine). Uploader, fake EBS endpoint (images/awsfake: checks every block's sha256 and length and the aggregate checksum) and the baseline's server share the CPUs (loopback)."
  echo "- Load: CPUs ${busy}% busy just before; other processes used ${others_during}% of all CPU time during the measurements; 1-min load average $load0 before, $load1 after (these include the benchmark); running before: ${others:-nothing else}."
  echo "- Input: the default image (\`imgctl build --k8s $K8S --target raw\`, the bench cache's layers, $kubelet_desc), disk.simg $(stat -c %s "$simg_base") bytes for a $(sub "$inc" base disk_bytes)-byte disk; the kubelet change: the same build with the kubelet with one byte put in front (every kubelet block differs), as in bench-raw.sh."
  echo "- Method: ebssnap.Upload from the stored disk.simg (test/bench/ami); MB/s = bytes sent / 10^6 / the whole upload's time (StartSnapshot to CompleteSnapshot); $RUNS run(s) of each throughput measurement, uploader and baseline interleaved. Reproduce: \`scripts/bench-ami.sh\` (\`make bench\` runs it; \`RUNS\`, \`AMI_LAYOUT\` in its header)."
  echo
  echo "### zero-skip: a full upload of the default image"
  echo
  echo "$(sub "$inc" base bytes_sent) bytes sent for a $(sub "$inc" base disk_bytes)-byte disk: **$(pct "$(sub "$inc" base zero_skip)")** ($(sub "$inc" base sent) of $(sub "$inc" base blocks) blocks of 512 KiB; $(sub "$inc" base data_blocks) blocks hold data, the rest are never read nor sent); the fake received $(sub "$inc" base received) bytes."
  echo
  echo "### incremental: the kubelet change on top of the published image"
  echo
  echo "$(sub "$inc" next sent) blocks sent ($(sub "$inc" next bytes_sent) bytes), $(sub "$inc" next unchanged) data blocks inherited from the parent snapshot: **$(pct "$sent_blocks") of the volume's $(sub "$inc" next blocks) blocks**, **$(pct "$sent_full") of the $(jnum "$inc" full_sent) blocks a full upload of the new image sends**. Goal ≤ 15%: $(verdict "$sent_blocks" 0.15) against the volume's blocks (a full upload already sends only $(pct "$(awk -v a="$(jnum "$inc" full_sent)" -v b="$(sub "$inc" next blocks)" 'BEGIN {print a / b}')") of them), $(verdict "$sent_full" 0.15) against a full upload."
  echo
  echo "Where the blocks changed (a block across a boundary counts where it starts):"
  echo
  echo "| area | blocks | data blocks (new image) | changed | changed ÷ data | first change, into the area | every data block changed from (into the area) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  cat "$tmp/m/areas.md"
  if [ -n "$layout_rows" ]; then
    echo
    echo "What would fix it: the two rootfs trees differ in ${changed_md}only. Written by \`mksquashfs ${sq[*]}\` (the order of its data is the tree's path order, as imgctl's writer's), and again with \`-sort\` putting those files' data last; 512 KiB blocks of the two images of each pair that differ:"
    echo
    echo "| squashfs data order | blocks | changed | changed ÷ blocks | first changed block |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for k in path last; do
      awk -v k="$k" -v b="$(jnum "$tmp/m/layout.$k" blocks)" -v c="$(jnum "$tmp/m/layout.$k" changed)" -v f="$(jnum "$tmp/m/layout.$k" first)" \
        'BEGIN {printf "| %s | %d | %d | %.1f%% | %d |\n", (k == "path" ? "path order" : "changed files last (-sort)"), b, c, 100 * c / b, f}'
    done
  fi
  echo
  echo "### throughput: MB/s at 1, 16 and 64 blocks in flight"
  echo
  echo "| in flight | ebssnap.Upload → fake EBS, MB/s best | median | CPU s median | connections opened (median) | plain PUT of the same blocks → trivial server, MB/s best | median | CPU s median | upload ÷ PUT (median MB/s) |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for c in $conc; do
    for k in upload put; do
      for f in mbps cpu_seconds connections; do
        json_field "$f" "$tmp/m/$k.$c" >"$tmp/m/$k.$c.$f"
      done
    done
    awk -v c="$c" -v ub="$(maxof "$tmp/m/upload.$c.mbps")" -v um="$(med upload mbps)" -v uc="$(med upload cpu_seconds)" \
      -v cm="$(med upload connections)" -v pb="$(maxof "$tmp/m/put.$c.mbps")" -v pm="$(med put mbps)" -v pc="$(med put cpu_seconds)" \
      'BEGIN {printf "| %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.0f | %.2f | %.2f× |\n", c, ub, um, uc, cm, pb, pm, pc, um / pm}'
  done
  echo
  echo "Both send the $(jnum "$tmp/m/put.64" blocks) non-zero blocks ($(jnum "$tmp/m/put.64" bytes) bytes); the upload also reads them from disk.simg, hashes each (sha256, the checksum the API wants) and signs each request (SigV4), and the fake hashes each again; the PUT client reads them and nothing else, its server drops the bodies. CPU s: user + system of the measuring process while it sends (uploader and fake, or PUT client and server). Connections: TCP connections the upload's HTTP client opened (ebssnap keeps as many idle as blocks in flight; the SDK's default is 10); the PUT client keeps as many as it has in flight."
} >"$section"
cat "$section"
if [ -n "$BENCHMARKS" ]; then
  cat "$section" >>"$BENCHMARKS"
  echo "appended to $BENCHMARKS" >&2
fi

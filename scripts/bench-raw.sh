#!/usr/bin/env bash
# Benchmarks the raw target and its squashfs writer against their peers and appends the results
# to BENCHMARKS.md (make bench).
#
# 1. builders/squashfs (test/bench/squashfs) on the node rootfs tar of the default spec against
#    mksquashfs (on the tree extracted from that tar) and tar2sqfs (on the tar itself), zstd
#    level 3 and lz4, 2 compressor threads each. Goal: >= 1.0x mksquashfs's speed at equal or
#    smaller size.
# 2. `imgctl build --target raw` with a warm cache, into a fresh store (the rootfs is composed)
#    and into a warm one (the rootfs blob is reused), against the shell pipeline mksquashfs +
#    truncate + sfdisk + mkfs.vfat + mtools + dd on the pre-extracted tree. Goal: <= 1.5x.
# 3. The same raw build after changing only the kubelet file (one byte appended), warm cache,
#    against the full build of (2). Goal: <= 50%.
#
# Usage: scripts/bench-raw.sh   (as root: the peers extract device nodes and owners)
#   The rootfs comes from the bench build of scripts/bench-compose.sh (.cache/bench; cold:
#   network and mmdebstrap, ~2 min; cached afterwards).
# Environment:
#   RUNS=5            timed runs of each command, interleaved
#   K8S=1.21.13       Kubernetes version of the embedded default spec
#   TOOLS_DIR=.cache/tools  kubelet from $TOOLS_DIR/kubernetes/v$K8S/kubelet if built (make kubernetes),
#                     else a tiny generated file
#   WAIT_IDLE=0       seconds to wait for other processes to leave the CPUs before measuring
#   BENCHMARKS=BENCHMARKS.md  file to append the results to (empty: print only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
RUNS=${RUNS:-5}
K8S=${K8S:-1.21.13}
TOOLS_DIR=${TOOLS_DIR:-$here/.cache/tools}
WAIT_IDLE=${WAIT_IDLE:-0}
BENCHMARKS=${BENCHMARKS-BENCHMARKS.md}
epoch=1700000000
bench=$here/.cache/bench
build_timeout=1800 # seconds, cold build of the layers
step_timeout=600   # seconds, any single measured command
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"

[ "$(id -u)" = 0 ] || die "run as root: the peers extract the rootfs with its device nodes and owners"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian package: time)"
tar --version | grep -q 'GNU tar' || die "tar is not GNU tar"
command -v go >/dev/null || die "go is not on PATH"
case $RUNS in '' | *[!0-9]* | 0) die "RUNS=$RUNS: expected a positive number" ;; esac
{ [ -x bin/imgctl ] && [ -x bin/imgctl-node ]; } || die "bin/imgctl or bin/imgctl-node is missing: run make build (make bench does)"
missing=()
for t in mksquashfs:squashfs-tools unsquashfs:squashfs-tools tar2sqfs:squashfs-tools-ng sfdisk:fdisk \
  mkfs.vfat:dosfstools mcopy:mtools mmd:mtools; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >&2 ||
    die "could not install ${missing[*]} with apt-get"
fi

mkdir -p "$bench"
tmp=$(mktemp -d "$bench/tmp.XXXXXX") # every output on the repository's filesystem
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
mkdir "$tmp/m" "$tmp/tree" "$tmp/out" "$tmp/esp"

# ---- the rootfs ----
bench_kubelet
image=$(bench_build "$build_timeout")
rootfs_hex=$(bin/imgctl --store "$bench/store" images inspect "$image" | sed -n 's/^rootfs *sha256:\([0-9a-f]*\).*/\1/p')
rootfs=$bench/store/blobs/sha256/$rootfs_hex
[ -f "$rootfs" ] || die "the rootfs blob $rootfs is missing"
rootfs_bytes=$(stat -c %s "$rootfs")
cp "$bench/imgctl.lock" "$tmp/lock.base" # every build gets a copy: .cache/bench/imgctl.lock stays as it is
go build -o "$tmp/sqbench" ./test/bench/squashfs
tar -xpf "$rootfs" --numeric-owner -C "$tmp/tree" # the peers' tree, not timed
entries=$(tar -tf "$rootfs" | wc -l)

# raw_build NAME STORE CACHE KUBELET [TARGETS]: one timed `imgctl build --target TARGETS`
# (default raw; stderr to $tmp/m/NAME.err, its phases line appended to NAME.phases).
raw_build() {
  local name=$1 store=$2 cache=$3 kube=$4 targets=${5:-raw}
  cp "$tmp/lock.base" "$tmp/lock"
  # shellcheck disable=SC2016 # expanded by the inner bash
  timed "$name" env SOURCE_DATE_EPOCH=$epoch bash -c 'err=$1; shift; exec "$@" 2>"$err"' _ "$tmp/m/$name.err" \
    bin/imgctl --cache "$cache" --store "$store" build --k8s "$K8S" --lock "$tmp/lock" --target "$targets" \
    --node-agent bin/imgctl-node --source "kubelet=file://$kube#path=/usr/bin/kubelet&mode=0755"
  grep -q '^sha256:' "$tmp/m/$name.stdout" || die "$name: imgctl build printed no image digest: $(tail -n 3 "$tmp/m/$name.err")"
  grep '^phases: ' "$tmp/m/$name.err" >>"$tmp/m/$name.phases" || die "$name: no phases line"
}

# ---- warm-up and references (not timed) ----
echo "warm-up: one raw build into a store that is kept (the warm store)" >&2
raw_build warmup "$tmp/store-warm" "$bench/cache" "$kubelet"
raw_image=$(tail -n 1 "$tmp/m/warmup.stdout")
inspect=$(bin/imgctl --store "$tmp/store-warm" images inspect "$raw_image")
initrd_hex=$(sed -n 's/^ *initrd.img *sha256:\([0-9a-f]*\).*/\1/p' <<<"$inspect")
[ -n "$initrd_hex" ] || die "no initrd.img artifact in the raw image"

# The pipeline's ESP content: what the raw target puts there.
cp "$tmp/tree/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$tmp/esp/BOOTX64.EFI"
mapfile -t kernels < <(find "$tmp/tree/boot" -maxdepth 1 -name 'vmlinuz-*' | sort)
[ ${#kernels[@]} -ge 1 ] || die "no /boot/vmlinuz-* in the rootfs"
cp "${kernels[-1]}" "$tmp/esp/vmlinuz"
cp "$tmp/store-warm/blobs/sha256/$initrd_hex" "$tmp/esp/initrd.img"
printf 'timeout 0\neditor no\nauto-entries no\nauto-firmware no\n' >"$tmp/esp/loader.conf"
printf 'title imgctl node (slot A)\nsort-key imgctl\nversion %s\nlinux /imgctl/a/vmlinuz\ninitrd /imgctl/a/initrd.img\noptions console=ttyS0,115200 imgctl.root=PARTLABEL=ROOT-A\n' \
  "$epoch" >"$tmp/esp/entry.conf"
cat >"$tmp/esp/layout.sfdisk" <<'EOF'
label: gpt
first-lba: 2048
start=2048, size=128MiB, type=uefi, name=ESP
size=1GiB, type=linux, name=ROOT-A
size=1GiB, type=linux, name=ROOT-B
type=linux, name=STATE
EOF
# The shell pipeline: TREE ESPDIR OUTDIR. ESP at 1 MiB, ROOT-A at 129 MiB.
cat >"$tmp/pipeline.sh" <<'EOF'
set -euo pipefail
tree=$1 esp=$2
cd "$3"
mksquashfs "$tree" root.sqfs -comp zstd -Xcompression-level 3 -processors 2 -noappend -quiet -no-progress >/dev/null
truncate -s 3G disk.raw
sfdisk --quiet disk.raw <"$esp/layout.sfdisk"
mkfs.vfat -F 32 -C esp.img 131072 >/dev/null
mmd -i esp.img ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/imgctl ::/imgctl/a
mcopy -i esp.img "$esp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i esp.img "$esp/BOOTX64.EFI" ::/EFI/systemd/systemd-bootx64.efi
mcopy -i esp.img "$esp/loader.conf" ::/loader/loader.conf
mcopy -i esp.img "$esp/entry.conf" ::/loader/entries/imgctl-a+3.conf
mcopy -i esp.img "$esp/vmlinuz" ::/imgctl/a/vmlinuz
mcopy -i esp.img "$esp/initrd.img" ::/imgctl/a/initrd.img
dd if=esp.img of=disk.raw bs=1M seek=1 conv=notrunc,sparse status=none
dd if=root.sqfs of=disk.raw bs=1M seek=129 conv=notrunc,sparse status=none
EOF
pipeline() { # runs the pipeline into a fresh $tmp/out (the rm is not timed)
  rm -rf "$tmp/out" && mkdir "$tmp/out"
  timed pipeline bash "$tmp/pipeline.sh" "$tmp/tree" "$tmp/esp" "$tmp/out"
}
pipeline # warm-up, and a check that it works
fdisk_check=$(sfdisk --dump "$tmp/out/disk.raw" | grep -c 'name=' || true)
[ "$fdisk_check" = 4 ] || die "the pipeline's disk has $fdisk_check named partitions, expected 4"
rm -f "$tmp/m/pipeline".* "$tmp/m/all.cpu"

# Squashfs listings: ours against mksquashfs's of the extracted tree.
"$tmp/sqbench" -out "$tmp/out/ours.sqfs" "$rootfs" >/dev/null
mksquashfs "$tmp/tree" "$tmp/out/mk.sqfs" -comp zstd -Xcompression-level 3 -processors 2 -noappend -quiet -no-progress >/dev/null
tar2sqfs -q -j 2 -c zstd -X level=3 -f "$tmp/out/t2s.sqfs" <"$rootfs" 2>/dev/null
listing_diff=$(diff <(timeout "$step_timeout" unsquashfs -lln "$tmp/out/ours.sqfs") \
  <(timeout "$step_timeout" unsquashfs -lln "$tmp/out/mk.sqfs") | grep -c '^[<>]' || true)

# The write phase of one build, from the -vv log's timestamps (not timed).
rm -rf "$tmp/store-vv"
cp "$tmp/lock.base" "$tmp/lock"
t0=$(date +%s.%N)
SOURCE_DATE_EPOCH=$epoch timeout "$step_timeout" bin/imgctl -vv --cache "$bench/cache" --store "$tmp/store-vv" \
  build --k8s "$K8S" --lock "$tmp/lock" --target raw --node-agent bin/imgctl-node \
  --source "kubelet=file://$kubelet#path=/usr/bin/kubelet&mode=0755" >/dev/null 2>"$tmp/m/vv.err"
rm -rf "$tmp/store-vv"
# breakdown: "phases line; seconds from the process start to each log event"
vv_at() { # PATTERN: seconds from t0 to the first log line matching PATTERN
  local ts
  ts=$(grep -m 1 -- "$1" "$tmp/m/vv.err" | sed -n 's/^time=[0-9-]*T\([0-9:.]*\)Z.*/\1/p')
  [ -n "$ts" ] || {
    echo "?"
    return
  }
  awk -v ts="$ts" -v t0="$t0" 'BEGIN { split(ts, a, ":"); s = a[1] * 3600 + a[2] * 60 + a[3];
    d = s - (t0 % 86400); if (d < 0) d += 86400; printf "%.2f", d }'
}
vv_phases=$(grep '^phases: ' "$tmp/m/vv.err" | sed 's/^phases: //')
vv_sq=$(vv_at 'squashfs image written')
vv_disk=$(vv_at 'wrote disk image')
vv_link=$(vv_at 'linked blob.*disk.raw')
vv_stored=$(vv_at 'stored image')
raw_root_size=$(sed -n 's/.*squashfs image written.* size=\([0-9]*\).*/\1/p' "$tmp/m/vv.err" | head -n 1)

# ---- wait for an idle machine, then measure ----
wait_idle "$WAIT_IDLE"
load_before=$(loadavg)
others=$(running)
start_date=$(date -u '+%Y-%m-%d %H:%M UTC')
echo "measuring: $RUNS interleaved runs of 6 squashfs writers, then of 4 raw builds and the pipeline (CPUs ${busy}% busy before)" >&2
read -r j0_busy j0_total < <(jiffies)
sq_cmds=(sq_zstd mk_zstd t2s_zstd sq_lz4 mk_lz4 t2s_lz4)
for i in $(seq "$RUNS"); do
  rm -f "$tmp"/out/*.sqfs
  timed sq_zstd "$tmp/sqbench" -out "$tmp/out/ours.sqfs" -comp zstd -level 3 -workers 2 "$rootfs"
  timed mk_zstd mksquashfs "$tmp/tree" "$tmp/out/mk.sqfs" -noappend -comp zstd -Xcompression-level 3 -processors 2 -quiet -no-progress
  # shellcheck disable=SC2016 # expanded by the inner bash
  timed t2s_zstd bash -c 'exec tar2sqfs -q -j 2 -c zstd -X level=3 -f "$1" <"$2" 2>/dev/null' _ "$tmp/out/t2s.sqfs" "$rootfs"
  for c in sq_zstd:ours mk_zstd:mk t2s_zstd:t2s; do stat -c %s "$tmp/out/${c#*:}.sqfs" >>"$tmp/m/${c%%:*}.size"; done
  rm -f "$tmp"/out/*.sqfs
  timed sq_lz4 "$tmp/sqbench" -out "$tmp/out/ours.sqfs" -comp lz4 -level 0 -workers 2 "$rootfs"
  timed mk_lz4 mksquashfs "$tmp/tree" "$tmp/out/mk.sqfs" -noappend -comp lz4 -processors 2 -quiet -no-progress
  # shellcheck disable=SC2016 # expanded by the inner bash
  timed t2s_lz4 bash -c 'exec tar2sqfs -q -j 2 -c lz4 -f "$1" <"$2" 2>/dev/null' _ "$tmp/out/t2s.sqfs" "$rootfs"
  for c in sq_lz4:ours mk_lz4:mk t2s_lz4:t2s; do stat -c %s "$tmp/out/${c#*:}.sqfs" >>"$tmp/m/${c%%:*}.size"; done
  echo "  squashfs run $i of $RUNS done" >&2
done
for i in $(seq "$RUNS"); do
  rm -rf "$tmp/store-fresh" "$tmp/store-kube"
  # Full build: downloads and layers cached, but no compressed squashfs blocks: everything
  # after the layers is done from scratch.
  cache_copy "$tmp/cache-full"
  raw_build raw_fresh "$tmp/store-fresh" "$tmp/cache-full" "$kubelet"
  rm -rf "$tmp/store-fresh" "$tmp/cache-full"
  # The same with the pxe target too: the rootfs is composed and compressed once for both.
  cache_copy "$tmp/cache-full"
  raw_build rawpxe_fresh "$tmp/store-fresh" "$tmp/cache-full" "$kubelet" raw,pxe
  rm -rf "$tmp/store-fresh"
  raw_build raw_warm "$tmp/store-warm" "$bench/cache" "$kubelet"
  pipeline
  # Only the kubelet changes, as a new version would: one byte put in front (a different one
  # every run), so every kubelet block differs; the block cache holds the previous image's and
  # the store the previous image (as a user's would: its initrd is reused), hard-linked.
  cache_copy "$tmp/cache3" blocks
  cp -al "$tmp/store-warm" "$tmp/store-kube"
  { printf '%d' "$i"; cat "$kubelet"; } >"$tmp/kubelet-$i"
  raw_build raw_kubelet "$tmp/store-kube" "$tmp/cache3" "$tmp/kubelet-$i"
  rm -rf "$tmp/store-kube" "$tmp/kubelet-$i" "$tmp/cache3" "$tmp/cache-full"
  echo "  raw run $i of $RUNS done" >&2
done
read -r j1_busy j1_total < <(jiffies)
load_after=$(loadavg)
others_during=$(others_during "$j0_busy" "$j0_total" "$j1_busy" "$j1_total")
for c in "${sq_cmds[@]}"; do
  [ "$(sort -u "$tmp/m/$c.size" | wc -l)" = 1 ] || die "$c: the image size changed between runs"
done

# ---- report ----
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
med() { stats "$tmp/m/$1.ns" | cut -d' ' -f2; }
sq_row() { # LABEL NAME OURS: a squashfs table row; ratio = peer's time / ours
  local best m cpu size
  read -r best m < <(stats "$tmp/m/$2.ns")
  cpu=$(stats "$tmp/m/$2.cpu" | cut -d' ' -f2)
  size=$(head -n 1 "$tmp/m/$2.size")
  read -r ob om < <(stats "$tmp/m/$3.ns")
  awk -v l="$1" -v b="$best" -v m="$m" -v n="$rootfs_bytes" -v cpu="$cpu" -v rss="$(maxof "$tmp/m/$2.rss")" \
    -v size="$size" -v osize="$(head -n 1 "$tmp/m/$3.size")" -v ob="$ob" -v om="$om" -v self="$([ "$2" = "$3" ] && echo 1)" 'BEGIN {
    ratio = self ? "—" : sprintf("%.2f× / %.2f×", b / ob, m / om)
    printf "| %s | %.3f | %.3f | %.0f | %.2f | %.1f | %.1f | %+.2f%% | %s |\n", l, b / 1e9, m / 1e9, n / m * 1e3, cpu, rss / 1024,
      size / 1e6, 100 * (size - osize) / osize, ratio }'
}
phase_medians() { # NAME: the median of each phase over the runs' phases lines
  sed 's/^phases: //; s/, /\n/g' "$tmp/m/$1.phases" | sed 's/s$//' |
    awk '{v[$1] = v[$1] " " $2; if (!($1 in seen)) {seen[$1] = 1; order[++n] = $1}}
    END {for (i = 1; i <= n; i++) { k = split(substr(v[order[i]], 2), a, " "); 
      for (x = 1; x <= k; x++) for (y = x + 1; y <= k; y++) if (a[y] < a[x]) {t = a[x]; a[x] = a[y]; a[y] = t}
      m = (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
      printf "%s%s %.2f s", (i > 1 ? ", " : ""), order[i], m }}'
}
raw_row() { # LABEL NAME: a raw build table row; ratio = its time / the pipeline's
  local best m cpu
  read -r best m < <(stats "$tmp/m/$2.ns")
  cpu=$(stats "$tmp/m/$2.cpu" | cut -d' ' -f2)
  read -r pb pm < <(stats "$tmp/m/pipeline.ns")
  awk -v l="$1" -v b="$best" -v m="$m" -v cpu="$cpu" -v rss="$(maxof "$tmp/m/$2.rss")" -v pb="$pb" -v pm="$pm" \
    -v ph="$([ -f "$tmp/m/$2.phases" ] && phase_medians "$2" || echo "—")" 'BEGIN {
    printf "| %s | %.2f | %.2f | %.2f | %.1f | %.2f× / %.2f× | %s |\n", l, b / 1e9, m / 1e9, cpu, rss / 1024, b / pb, m / pm, ph }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
sq_speed=$(ratio "$(med mk_zstd)" "$(med sq_zstd)")
sq_size_ok=$(awk -v a="$(head -n 1 "$tmp/m/sq_zstd.size")" -v b="$(head -n 1 "$tmp/m/mk_zstd.size")" 'BEGIN {print (a <= b) ? "yes" : "no"}')
if awk -v s="$sq_speed" 'BEGIN {exit !(s >= 1)}' && [ "$sq_size_ok" = yes ]; then sq_verdict="met"; else sq_verdict="**not met**"; fi
raw_ratio=$(ratio "$(med raw_fresh)" "$(med pipeline)")
raw_warm_ratio=$(ratio "$(med raw_warm)" "$(med pipeline)")
if awk -v r="$raw_ratio" 'BEGIN {exit !(r <= 1.5)}'; then raw_verdict="met"; else raw_verdict="**not met**"; fi
kube_pct=$(awk -v a="$(med raw_kubelet)" -v b="$(med raw_fresh)" 'BEGIN {printf "%.0f", 100 * a / b}')
if [ "$kube_pct" -le 50 ]; then kube_verdict="met"; else kube_verdict="**not met**"; fi
rawpxe_ratio=$(ratio "$(med rawpxe_fresh)" "$(med raw_fresh)")
if awk -v r="$rawpxe_ratio" 'BEGIN {exit !(r <= 1.1)}'; then rawpxe_verdict="met"; else rawpxe_verdict="**not met**"; fi
loaded="idle"
if [ "$busy" -gt 20 ] || [ "$others_during" -gt 10 ]; then
  loaded="**loaded by other processes**"
fi

section=$tmp/section.md
{
  echo "## raw target and squashfs writer vs mksquashfs, tar2sqfs and a shell pipeline — $start_date, imgctl $(git describe --tags --always --dirty 2>/dev/null || echo dev)"
  echo
  echo "- Machine: $(machine), $(mksquashfs -version 2>&1 | head -n 1 | cut -d' ' -f1-3), $(tar2sqfs --version 2>&1 | head -n 1), $(sfdisk --version), outputs on $(stat -f -c %T "$tmp") (one filesystem for all)."
  echo "- Load: $loaded — CPUs ${busy}% busy just before the runs; other processes used ${others_during}% of all CPU time during them; 1-min load average $load_before before, $load_after after (these include the benchmark); running before: ${others:-nothing else}."
  echo "- Input: the rootfs tar of the default spec (k8s $K8S) from the bench build of scripts/bench-compose.sh, $(mb "$rootfs_bytes") MB, $entries entries, sha256 ${rootfs_hex:0:16}…; $kubelet_desc. The peers' tree is that tar extracted once with \`tar -xpf --numeric-owner\` (not timed)."
  echo "- Method: $RUNS runs of each command, interleaved, page cache warm (one untimed run of each first), \`sync\` before each run, wall time of the whole process (the Go driver's startup included), CPU s = user + system of the process tree. Reproduce: \`scripts/bench-raw.sh\` as root (\`make bench\` runs it)."
  echo
  echo "### squashfs writers (128 KiB blocks, 2 compressor threads)"
  echo
  echo "MB/s = input tar MB / median s; size ± and speed ratio are against ours with the same compressor; ratio = peer's time / ours (≥ 1: ours is faster)."
  echo "Goal ≥ 1.0× mksquashfs's speed at equal or smaller size (zstd 3): $sq_verdict (median ratio ${sq_speed}×; ours smaller or equal: $sq_size_ok)."
  echo
  echo "| command | best s | median s | input MB/s | CPU s median | peak RSS MiB | image MB | size vs ours | ours ÷ peer speed (best / median) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  sq_row "imgctl squashfs.Write zstd 3 (test/bench/squashfs, tar)" sq_zstd sq_zstd
  sq_row "\`mksquashfs TREE OUT -comp zstd -Xcompression-level 3 -processors 2\`" mk_zstd sq_zstd
  sq_row "\`tar2sqfs -j 2 -c zstd -X level=3 OUT < tar\`" t2s_zstd sq_zstd
  sq_row "imgctl squashfs.Write lz4 (tar)" sq_lz4 sq_lz4
  sq_row "\`mksquashfs TREE OUT -comp lz4 -processors 2\`" mk_lz4 sq_lz4
  sq_row "\`tar2sqfs -j 2 -c lz4 OUT < tar\`" t2s_lz4 sq_lz4
  echo
  echo "mksquashfs also gets \`-noappend -quiet -no-progress\`, tar2sqfs \`-q -f\`. \`unsquashfs -lln\` of ours and of mksquashfs's zstd image: $listing_diff differing lines."
  echo
  echo "### imgctl build --target raw vs the shell pipeline"
  echo
  echo "Ratio = its time / the pipeline's (goal ≤ 1.5× for the fresh-store build: $raw_verdict, median ${raw_ratio}×; warm store ${raw_warm_ratio}×). Goal for the kubelet change ≤ 50% of the full build: $kube_verdict (median ${kube_pct}%). Goal for raw+pxe ≤ 1.1× raw alone: $rawpxe_verdict (median ${rawpxe_ratio}×)."
  echo
  echo "| command | best s | median s | CPU s median | peak RSS MiB | ÷ pipeline (best / median) | phases (median of each) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
  raw_row "imgctl build --target raw, full: layers cached, no squashfs blocks cached, fresh store" raw_fresh
  raw_row "imgctl build --target raw,pxe, full, fresh store (one compose and one compression for both targets)" rawpxe_fresh
  raw_row "imgctl build --target raw, same inputs again, warm store (compressed blocks reused)" raw_warm
  raw_row "imgctl build --target raw after a kubelet change (every kubelet block new), previous image's blocks cached, the previous image in the store" raw_kubelet
  raw_row "shell pipeline (tree pre-extracted)" pipeline
  echo
  echo "imgctl: \`SOURCE_DATE_EPOCH=$epoch bin/imgctl --cache .cache/bench/cache --store STORE build --k8s $K8S --lock LOCK --target raw --node-agent bin/imgctl-node --source 'kubelet=file://KUBELET#path=/usr/bin/kubelet&mode=0755'\`, LOCK a copy of .cache/bench/imgctl.lock for every run. The full build uses a copy of the bench cache (blobs hard-linked) without its squashfs block cache; the kubelet change is the kubelet with one byte put in front (every block differs), built with a copy of the bench cache including the block cache of the previous image, into a hard-linked copy of the warm store (the previous image's initrd is reused)."
  echo
  echo "Pipeline: \`mksquashfs TREE root.sqfs -comp zstd -Xcompression-level 3 -processors 2 -noappend -quiet && truncate -s 3G disk.raw && sfdisk disk.raw < layout && mkfs.vfat -F 32 -C esp.img 131072 && mmd + 6 × mcopy -i esp.img (BOOTX64.EFI twice, loader.conf, the entry, vmlinuz, the raw build's initrd) && dd esp.img and root.sqfs into disk.raw at 1 MiB and 129 MiB, conv=notrunc,sparse\`; layout: GPT, ESP 128 MiB, ROOT-A and ROOT-B 1 GiB, STATE the rest, with names. Not done by the pipeline but by imgctl: reading the kernel and bootloader out of the rootfs tar, generating the initrd, hashing disk.raw (3 GiB, sparse), the squashfs, vmlinuz and initrd into the store, the image manifest."
  echo
  echo "One untimed \`-vv\` fresh-store build, seconds from its start: squashfs written at ${vv_sq}, disk.raw written at ${vv_disk}, disk.raw hashed and linked into the store at ${vv_link}, image stored at ${vv_stored} (phases: ${vv_phases}; squashfs root ${raw_root_size:-?} bytes)."
  echo
} >"$section"
cat "$section"
if [ -n "$BENCHMARKS" ]; then
  [ -f "$BENCHMARKS" ] || die "$BENCHMARKS is missing: run scripts/bench-compose.sh first (it writes its header)"
  cat "$section" >>"$BENCHMARKS"
  echo "appended to $BENCHMARKS" >&2
fi

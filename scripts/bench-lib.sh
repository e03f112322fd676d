# shellcheck shell=bash
# Helpers shared by scripts/bench-*.sh; source it after setting:
#   here          the repository root
#   tmp           a scratch directory with a subdirectory m/ for measurements
#   step_timeout  seconds any single measured command may take
# and, for bench_kubelet and bench_build, K8S, TOOLS_DIR, bench (.cache/bench) and epoch.
# Those globals come from the sourcing script, and kubelet_desc and busy are set here for it:
# shellcheck disable=SC2154,SC2034

# die MESSAGE: prints "SCRIPT: MESSAGE" and exits 2.
die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# cpu_busy: percent of all CPUs busy over one second.
cpu_busy() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
    printf "%d\n", (busy + idle) ? 100 * busy / (busy + idle) : 0 }'
}
loadavg() { cut -d' ' -f1 /proc/loadavg; }
running() { # names of other running processes
  ps -eo stat=,pid=,comm= | awk -v me=$$ '$1 ~ /^R/ && $2 != me && $3 != "ps" && $3 != "awk" {print $3}' | sort | uniq -c |
    awk '{printf "%s%s%s", sep, $2, ($1 > 1 ? " x" $1 : ""); sep = ", "}'
}
# jiffies: "busy total" CPU jiffies of the whole machine so far.
jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# timed NAME CMD...: runs CMD (stdout to $tmp/m/NAME.stdout) after a sync; appends its wall time in
# nanoseconds to $tmp/m/NAME.ns, its CPU seconds (user + system) to NAME.cpu and its peak RSS in
# KiB to NAME.rss.
timed() {
  local name=$1 t0 t1 rss user sys
  shift
  sync
  t0=$(date +%s%N)
  timeout "$step_timeout" /usr/bin/time -f '%M %U %S' -o "$tmp/m/$name.time" "$@" >"$tmp/m/$name.stdout"
  t1=$(date +%s%N)
  echo $((t1 - t0)) >>"$tmp/m/$name.ns"
  read -r rss user sys <"$tmp/m/$name.time"
  echo "$rss" >>"$tmp/m/$name.rss"
  awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}' | tee -a "$tmp/m/all.cpu" >>"$tmp/m/$name.cpu"
}
# stats FILE: "best median" of the numbers in FILE.
stats() {
  sort -n "$1" | awk '{v[NR] = $1} END {printf "%s %s\n", v[1], (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
maxof() { sort -n "$1" | tail -n 1; }
json_field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$2"; }

# wait_idle SECONDS: waits up to SECONDS for the CPUs to be at most 20% busy; sets busy (percent).
wait_idle() {
  local limit=$1 waited=0
  busy=$(cpu_busy)
  while [ "$busy" -gt 20 ] && [ "$waited" -lt "$limit" ]; do
    echo "CPUs ${busy}% busy (running: $(running)); waiting for idle ($waited of ${limit}s)" >&2
    sleep 10
    waited=$((waited + 11))
    busy=$(cpu_busy)
  done
}
# others_during J0_BUSY J0_TOTAL J1_BUSY J1_TOTAL: percent of all CPU time that processes other
# than the timed commands (their CPU seconds are in $tmp/m/all.cpu) used between two jiffies.
others_during() {
  awk -v b=$(($3 - $1)) -v t=$(($4 - $2)) -v hz="$(getconf CLK_TCK)" \
    '{ours += $1} END {v = t ? 100 * (b / hz - ours) / (t / hz) : 0; printf "%d\n", v < 0 ? 0 : v}' "$tmp/m/all.cpu"
}
# machine: "N CPUs, model, RAM, kernel, go" for the report.
machine() {
  echo "$(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(go version | cut -d' ' -f3)"
}

# bench_kubelet: sets kubelet (the file the bench builds use as the kubelet layer) and
# kubelet_desc: the real one from make kubernetes if built, else a tiny generated file.
bench_kubelet() {
  kubelet=$TOOLS_DIR/kubernetes/v$K8S/kubelet
  if [ -f "$kubelet" ]; then
    kubelet_desc="real kubelet from ${kubelet#"$here"/} ($(stat -c %s "$kubelet") bytes)"
  else
    kubelet=$bench/kubelet-stub
    printf '#!/bin/sh\necho kubelet bench stub\n' >"$kubelet"
    kubelet_desc="kubelet: a tiny generated file (no $TOOLS_DIR/kubernetes/v$K8S/kubelet; make kubernetes builds one)"
  fi
}

# cache_copy DIR [blocks]: the bench cache ($bench/cache) with its blobs hard-linked (they are
# immutable), so what a run adds is dropped with $tmp. Without "blocks" the squashfs block cache
# is left out: a full build then compresses every block, as a first build does.
cache_copy() {
  rm -rf "$1"
  mkdir -p "$1/tmp" "$1/locks"
  cp -a "$bench/cache/refs" "$1/"
  cp -al "$bench/cache/blobs" "$1/"
  if [ "${2:-}" = blocks ] && [ -d "$bench/cache/squashfs-blocks" ]; then
    cp -al "$bench/cache/squashfs-blocks" "$1/"
  fi
}

# bench_build TIMEOUT: builds the default spec (targets rootfs and raw: the benchmarks read the
# rootfs tar, which a raw-only build does not store) into $bench/cache and
# $bench/store with the lock $bench/imgctl.lock (cold: network and mmdebstrap) and prints the
# image digest. Needs bench_kubelet first.
bench_build() {
  local image
  echo "building the layers of the default spec (k8s $K8S) into $bench" >&2
  image=$(SOURCE_DATE_EPOCH=$epoch timeout "$1" bin/imgctl -q --cache "$bench/cache" --store "$bench/store" \
    build --k8s "$K8S" --lock "$bench/imgctl.lock" --target rootfs,raw \
    --source "kubelet=file://$kubelet#path=/usr/bin/kubelet&mode=0755" | tail -n 1)
  case $image in sha256:*) ;; *) die "imgctl build printed no image digest" ;; esac
  echo "$image"
}

#!/usr/bin/env bash
# imgctl serve against nginx (Debian package, sendfile on) serving the same files on 127.0.0.1,
# with a plain Go net/http server as a third column (what net/http does on its own). The load
# generator is test/bench/serve. Appends a section to BENCHMARKS.md.
#
# What is measured, all in one run, servers interleaved:
#   - throughput: 1, 10 and 100 concurrent clients, each on one keep-alive connection, fetch the
#     kernel, initrd and root of a netboot image (random bytes, stored as a real image and
#     promoted to a channel) as /blobs/sha256:HEX; aggregate GB/s (goal: imgctl ≥ 1.0× nginx);
#   - small requests: per-node iPXE scripts (GET /ipxe?mac=… for the machines of an inventory)
#     from imgctl serve, nginx's rate on a static file of the same size (the same request lines:
#     nginx ignores the query), max rate over SERVE_CONNS connections (goal ≥ 0.5× nginx) and
#     latency at a fixed 2,000 req/s open-loop rate (goal: p99 ≤ 1 ms);
#   - memory: resident set of each server (nginx: master + workers) before and after 1,000 idle
#     keep-alive connections.
#
# Usage: scripts/bench-serve.sh
# Environment:
#   RUNS=3              timed runs of each measurement, interleaved across servers
#   BENCHMARKS=BENCHMARKS.md  file to append the results to (empty: print only)
#   SERVE_ROOT_MB       root size in MB (default 300; 64 when RUNS=1, e.g. in CI)
#   SERVE_SECONDS       duration of each rate and latency measurement (default 5; 2 when RUNS=1)
#   SERVE_MACHINES=1000 machines in the inventory
#   SERVE_CONNS=64      connections of the max-rate measurement
#   SERVE_IDLE=1000     idle connections of the memory measurement
#   SERVE_SERVERS="imgctl nginx go"  servers to measure (nginx is required: the ratios are to it)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
RUNS=${RUNS:-3}
BENCHMARKS=${BENCHMARKS-BENCHMARKS.md}
if [ "$RUNS" -le 1 ]; then small=1; else small=0; fi
root_mb=${SERVE_ROOT_MB:-$([ $small = 1 ] && echo 64 || echo 300)}
seconds=${SERVE_SECONDS:-$([ $small = 1 ] && echo 2 || echo 5)}
machines=${SERVE_MACHINES:-1000}
rate_conns=${SERVE_CONNS:-64}
idle_conns=${SERVE_IDLE:-1000}
servers=${SERVE_SERVERS:-imgctl nginx go}
step_timeout=600
tmp=$(mktemp -d)
pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$tmp/m" "$tmp/www" "$tmp/nginx"
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"
case " $servers " in *" nginx "*) ;; *) die "SERVE_SERVERS=\"$servers\" lacks nginx: every ratio is to nginx" ;; esac
command -v nginx >/dev/null || die "nginx is missing (scripts/install-deps.sh installs it)"
case " $servers " in
*" imgctl "*)
  [ -x bin/imgctl ] || die "bin/imgctl is missing: run make build (make bench does)"
  bin/imgctl serve --help >/dev/null 2>&1 || die "bin/imgctl has no serve command: run make build"
  ;;
esac
load=$tmp/load
go build -o "$load" ./test/bench/serve

# The image (promoted to channel nightly when imgctl serve starts) and the inventory.
store=$tmp/store
"$load" setup -store "$store" -out "$tmp" -machines "$machines" -root-mb "$root_mb" >"$tmp/setup.json"
image=$(json_field image "$tmp/setup.json")
blobs=()
for a in kernel initrd root; do blobs+=("/blobs/$(json_field "$a" "$tmp/setup.json")"); done
bytes_one=$(awk -v k="$(json_field kernel_bytes "$tmp/setup.json")" -v i="$(json_field initrd_bytes "$tmp/setup.json")" \
  -v r="$(json_field root_bytes "$tmp/setup.json")" 'BEGIN {print k + i + r}')
inventory=$tmp/inventory.yaml # written by setup: one group on channel nightly

# start_server NAME: starts it, sets addr_NAME and pid_NAME.
start_server() {
  local port
  case $1 in
  imgctl)
    bin/imgctl --store "$store" promote "$image" --to nightly >"$tmp/promote.log" 2>&1 || { cat "$tmp/promote.log" >&2; die "imgctl promote failed"; }
    port=$("$load" freeport)
    # with TLS, as a fleet would run it: node scripts carry a boot credential and the pin
    bin/imgctl --store "$store" serve --inventory "$inventory" --listen "127.0.0.1:$port" \
      --tls-cert "$tmp/tls.crt" --tls-key "$tmp/tls.key" 2>"$tmp/imgctl.log" &
    ;;
  nginx)
    port=$("$load" freeport)
    user=
    [ "$(id -u)" -ne 0 ] || user="user $(id -un) $(id -gn);"
    cat >"$tmp/nginx/nginx.conf" <<EOF
$user
daemon off;
worker_processes auto;
worker_rlimit_nofile 16384;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 120s;
  keepalive_requests 100000000;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    root $tmp/www;
    location ~ "^/blobs/sha256:([0-9a-f]{64})\$" { alias $store/blobs/sha256/\$1; }
    location = /ipxe { default_type text/plain; try_files /script.ipxe =404; }
    location = /healthz { return 200 "ok\n"; }
  }
}
EOF
    # -e: not even the startup log goes to the package's /var/log/nginx
    nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx.log" &
    ;;
  go)
    "$load" standin -store "$store" -machines "$tmp/machines.tsv" -size "$(stat -c %s "$tmp/www/script.ipxe")" >"$tmp/go.addr" &
    ;;
  esac
  pids+=($!)
  printf -v "pid_$1" %s $!
  if [ "$1" = go ]; then
    for _ in $(seq 50); do [ -s "$tmp/go.addr" ] && break; sleep 0.1; done
    port=$(cut -d: -f2 "$tmp/go.addr")
  fi
  printf -v "addr_$1" %s "127.0.0.1:$port"
  for _ in $(seq 100); do
    "$load" get -addr "127.0.0.1:$port" /healthz >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$tmp/$1.log" "$tmp/nginx/error.log" 2>/dev/null >&2 || true
  die "$1 did not answer /healthz on 127.0.0.1:$port"
}
addr() { local v="addr_$1"; echo "${!v}"; }
pid() { local v="pid_$1"; echo "${!v}"; }

# nginx's static file is one of imgctl serve's per-node scripts, and the Go server pads its
# scripts to that size, so all three send as many bytes (1 KiB without imgctl serve)
first=$(head -n 1 "$tmp/ipxe.paths")
case " $servers " in
*" imgctl "*)
  start_server imgctl
  "$load" get -addr "$(addr imgctl)" "$first" >"$tmp/www/script.ipxe"
  ;;
*) head -c 768 /dev/urandom | base64 -w 64 >"$tmp/www/script.ipxe" ;;
esac
for s in $servers; do [ "$s" = imgctl ] || start_server "$s"; done
for s in $servers; do "$load" verify -addr "$(addr "$s")" "${blobs[@]}" >/dev/null; done

# measure NAME SERVER SUBCOMMAND ARGS...: one measurement by the load generator, its JSON line
# appended to $tmp/m/NAME.SERVER
measure() {
  local name=$1 s=$2 cmd=$3
  shift 3
  timeout "$step_timeout" "$load" "$cmd" -addr "$(addr "$s")" "$@" >>"$tmp/m/$name.$s"
}
busy=
wait_idle "${WAIT_IDLE:-0}" # sets busy
load0=$(loadavg)
for i in $(seq "$RUNS"); do
  for c in 1 10 100; do
    for s in $servers; do measure "fetch$c" "$s" fetch -clients "$c" "${blobs[@]}"; done
  done
  for s in $servers; do measure fetch100s "$s" fetch -splice -clients 100 "${blobs[@]}"; done
  for s in $servers; do measure rate "$s" rate -paths "$tmp/ipxe.paths" -conns "$rate_conns" -duration "${seconds}s"; done
  for s in $servers; do measure latency "$s" latency -paths "$tmp/ipxe.paths" -rate 2000 -duration "${seconds}s"; done
  echo "run $i of $RUNS done" >&2
done
for s in $servers; do measure idle "$s" idle -path "$first" -conns "$idle_conns" -pid "$(pid "$s")"; done
load1=$(loadavg)

# col NAME SERVER FIELD: the values of FIELD in the server's measurements, one a line
col() { json_field "$3" "$tmp/m/$1.$2" >"$tmp/m/$1.$2.$3"; echo "$tmp/m/$1.$2.$3"; }
best() { sort -g "$1" | tail -n 1; }    # highest
median() { stats "$1" | cut -d' ' -f2; }
label() {
  case $1 in
  imgctl) echo "imgctl serve --tls-cert" ;;
  nginx) echo "nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), sendfile on" ;;
  go) echo "plain Go net/http (test/bench/serve standin)" ;;
  esac
}
verdict() { awk -v v="$1" -v g="$2" -v dir="$3" 'BEGIN { ok = (dir == ">=") ? v >= g : v <= g; print ok ? "met" : "**not met**" }'; }
section=$tmp/section.md
{
  echo
  echo "## imgctl serve vs nginx — $(date -u '+%Y-%m-%d %H:%M UTC'), imgctl $(git describe --always --dirty 2>/dev/null || echo dev)"
  echo
  echo "- Machine: $(machine), $(nginx -v 2>&1 | sed 's|.*: ||'). Load generator and servers share the CPUs (loopback)."
  echo "- Load: CPUs ${busy}% busy just before; 1-min load average $load0 before, $load1 after (these include the benchmark)."
  echo "- Input: a netboot image of random bytes in a store, promoted to channel nightly: kernel $(json_field kernel_bytes "$tmp/setup.json") B, initrd $(json_field initrd_bytes "$tmp/setup.json") B, root $(json_field root_bytes "$tmp/setup.json") B ($((bytes_one / 1000000)) MB per client); an inventory of $machines machines (one per MAC). nginx serves the store's blob files by digest (\`alias STORE/blobs/sha256/\$1\`) under the same URLs, and one of imgctl serve's per-node scripts ($(stat -c %s "$tmp/www/script.ipxe") B) as its static small file; the Go server pads its scripts to that size. imgctl serve runs with \`--tls-cert\` (self-signed) as a fleet's would: every node script carries a fresh boot credential and the certificate's pin; the requests are plain HTTP, as iPXE's are."
  echo "- Method: $RUNS run(s) of each measurement, servers interleaved; best and median of the runs; bodies read and discarded; every blob checked by sha256 against its digest on every server first. Reproduce: \`scripts/bench-serve.sh\` (\`make bench\` runs it; \`RUNS\`, \`SERVE_*\` variables in its header)."
  echo
  echo "### throughput: N clients each fetch kernel + initrd + root (keep-alive)"
  echo
  echo "| server | clients | GB/s best | GB/s median | ÷ nginx (best / median) |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for c in 1 10 100 100s; do
    nb=$(best "$(col "fetch$c" nginx gbps)")
    nm=$(median "$(col "fetch$c" nginx gbps)")
    for s in $servers; do
      b=$(best "$(col "fetch$c" "$s" gbps)")
      m=$(median "$(col "fetch$c" "$s" gbps)")
      awk -v l="$(label "$s")" -v c="$c" -v b="$b" -v m="$m" -v nb="$nb" -v nm="$nm" \
        'BEGIN {sub(/s$/, ", splice to /dev/null", c); printf "| %s | %s | %.2f | %.2f | %.2f× / %.2f× |\n", l, c, b, m, b/nb, m/nm}'
    done
  done
  echo
  echo "The clients read every body into a buffer and drop it (what a booting node does, and most of the CPU on loopback: the servers send with sendfile); the splice rows move the bodies from the socket to /dev/null without a copy, so that more of the CPU is the servers'."
  echo
  echo "### small requests: GET /ipxe?mac=… (imgctl serve and Go: a per-node script; nginx: the static file)"
  echo
  echo "| server | req/s over $rate_conns conns, best | median | ÷ nginx (median) | at 2,000 req/s open loop: p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  nm=$(median "$(col rate nginx rps)")
  for s in $servers; do
    b=$(best "$(col rate "$s" rps)")
    m=$(median "$(col rate "$s" rps)")
    # latency: the run with the median p99
    p99=$(median "$(col latency "$s" p99_us)")
    awk -v l="$(label "$s")" -v b="$b" -v m="$m" -v nm="$nm" -v p50="$(median "$(col latency "$s" p50_us)")" \
      -v p90="$(median "$(col latency "$s" p90_us)")" -v p99="$p99" -v p999="$(median "$(col latency "$s" p999_us)")" \
      -v mx="$(median "$(col latency "$s" max_us)")" \
      'BEGIN {printf "| %s | %.0f | %.0f | %.2f× | %.0f | %.0f | %.0f | %.0f | %.0f |\n", l, b, m, m/nm, p50, p90, p99, p999, mx}'
  done
  echo
  echo "Latency is from a request's dispatch to its last byte, median over the runs of each percentile; the schedule's own lateness (Go timers, shared CPUs) is not counted: its p99 was $(median "$(col latency nginx sched_late_p99_us)" | cut -d. -f1) µs."
  echo
  echo "### memory: resident set before and after $idle_conns idle keep-alive connections (each made one request)"
  echo
  echo "| server | RSS before MiB | RSS after MiB | KiB per connection | still open 2 s later |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for s in $servers; do
    awk -v l="$(label "$s")" -v b="$(json_field rss_before_kib "$tmp/m/idle.$s")" -v a="$(json_field rss_after_kib "$tmp/m/idle.$s")" \
      -v p="$(json_field per_conn_kib "$tmp/m/idle.$s")" -v al="$(json_field alive "$tmp/m/idle.$s")" -v n="$idle_conns" \
      'BEGIN {printf "| %s | %.1f | %.1f | %.1f | %d of %d |\n", l, b/1024, a/1024, p, al, n}'
  done
  if case " $servers " in *" imgctl "*) true ;; *) false ;; esac; then
    t100=$(awk -v a="$(median "$(col fetch100 imgctl gbps)")" -v b="$(median "$(col fetch100 nginx gbps)")" 'BEGIN {printf "%.2f", a/b}')
    small_ratio=$(awk -v a="$(median "$(col rate imgctl rps)")" -v b="$(median "$(col rate nginx rps)")" 'BEGIN {printf "%.2f", a/b}')
    p99=$(median "$(col latency imgctl p99_us)")
    echo
    echo "Goals: throughput at 100 clients ≥ 1.0× nginx: $(verdict "$t100" 1.0 '>=') (${t100}×); per-node scripts ≥ 0.5× nginx's static rate: $(verdict "$small_ratio" 0.5 '>=') (${small_ratio}×); p99 ≤ 1 ms at 2,000 req/s: $(verdict "$p99" 1000 '<=') ($(printf %.0f "$p99") µs); memory with $idle_conns idle connections: $(awk -v b="$(json_field rss_before_kib "$tmp/m/idle.imgctl")" -v a="$(json_field rss_after_kib "$tmp/m/idle.imgctl")" 'BEGIN {printf "%+.1f MiB", (a - b) / 1024}') (nginx $(awk -v b="$(json_field rss_before_kib "$tmp/m/idle.nginx")" -v a="$(json_field rss_after_kib "$tmp/m/idle.nginx")" 'BEGIN {printf "%+.1f MiB", (a - b) / 1024}'))."
    echo
    echo "imgctl serve logged $(grep -c . "$tmp/imgctl.log") lines during the run (one INFO line per node script: each is a boot), to a file."
  fi
} >"$section"
cat "$section"
if [ -n "$BENCHMARKS" ]; then
  cat "$section" >>"$BENCHMARKS"
  echo "appended to $BENCHMARKS" >&2
fi

#!/usr/bin/env bash
# Runs every Go fuzz target of the module for a time budget, one target at a time, and keeps the
# corpus: the inputs Go found interesting (in $GOCACHE/fuzz) are copied into the package's
# testdata/fuzz/NAME/, where `go test` runs them as seeds from then on. A crasher is written
# there by Go itself and fails the run; commit it with the fix as its regression test.
#
# Usage: scripts/fuzz.sh [PACKAGE...]   (default: every package with a Fuzz function)
# Environment:
#   FUZZTIME=60s          -fuzztime per target (a duration, or Nx for N executions)
#   FUZZ_PARALLEL=2       -parallel: fuzzing worker processes per target
#   FUZZ_MINIMIZE=1000x   -fuzzminimizetime (Go's 60s default stalls fuzzing on a busy machine)
#   FUZZ_TARGETS=.        only targets whose name matches this extended regexp
#   FUZZ_CORPUS_MAX=200   at most this many corpus files per target kept in testdata/fuzz ...
#   FUZZ_CORPUS_BYTES=262144  ... and at most this many bytes; smallest inputs first
#   FUZZ_LOGS=out/fuzz    where each target's go test output is kept
# Prints one line per target: package, target, execs, new interesting inputs, kept corpus
# files, fuzzing time, result. Exits 1 if any target failed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
FUZZ_PARALLEL=${FUZZ_PARALLEL:-2}
FUZZ_MINIMIZE=${FUZZ_MINIMIZE:-1000x}
FUZZ_TARGETS=${FUZZ_TARGETS:-.}
FUZZ_CORPUS_MAX=${FUZZ_CORPUS_MAX:-200}
FUZZ_CORPUS_BYTES=${FUZZ_CORPUS_BYTES:-262144}
FUZZ_LOGS=${FUZZ_LOGS:-out/fuzz}
mkdir -p "$FUZZ_LOGS"
cache=$("$GO" env GOCACHE)/fuzz
module=$("$GO" list -m)

# Packages: those given, else every directory with a Fuzz function in a test file (git ls-files
# keeps out/ and .cache/ out); go test -list then names the targets authoritatively.
if [ "$#" -gt 0 ]; then
  pkgs=("$@")
else
  mapfile -t pkgs < <(git grep -l -E '^func Fuzz[A-Z0-9_a-z]*\(' -- '*_test.go' |
    xargs -r -n1 dirname | sort -u | sed 's|^|./|')
fi
if [ "${#pkgs[@]}" -eq 0 ]; then
  echo "fuzz: no packages with Fuzz targets" >&2
  exit 1
fi

# keep_corpus DIR_FROM DIR_TO: copy inputs not yet kept, smallest first, within the caps.
keep_corpus() {
  local from=$1 to=$2 count=0 bytes=0 size file
  [ -d "$from" ] || { echo 0; return; }
  mkdir -p "$to"
  for file in "$to"/*; do
    [ -f "$file" ] || continue
    count=$((count + 1))
    bytes=$((bytes + $(stat -c %s "$file")))
  done
  while read -r size file; do
    [ -e "$to/$(basename "$file")" ] && continue
    if [ "$count" -ge "$FUZZ_CORPUS_MAX" ] || [ $((bytes + size)) -gt "$FUZZ_CORPUS_BYTES" ]; then
      break
    fi
    cp "$file" "$to/"
    count=$((count + 1))
    bytes=$((bytes + size))
  done < <(find "$from" -maxdepth 1 -type f -printf '%s %p\n' | sort -n -k1,1 -k2,2)
  rmdir "$to" 2>/dev/null || true
  echo "$count"
}

failed=0
printf '%-40s %-28s %12s %6s %6s %8s %s\n' PACKAGE TARGET EXECS NEW KEPT TIME RESULT
for pkg in "${pkgs[@]}"; do
  import=$("$GO" list "$pkg")
  dir=$("$GO" list -f '{{.Dir}}' "$pkg")
  mapfile -t targets < <("$GO" test -list '^Fuzz' "$pkg" | grep -E '^Fuzz' | grep -E -- "$FUZZ_TARGETS" || true)
  for name in "${targets[@]}"; do
    log="$FUZZ_LOGS/$(echo "${import#"$module"/}" | tr / _)_$name.log"
    start=$(date +%s)
    result=PASS
    if ! "$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZ_MINIMIZE" \
      -parallel "$FUZZ_PARALLEL" "$pkg" >"$log" 2>&1; then
      result=FAIL
      failed=1
      if crasher=$(grep -m1 -o "testdata/fuzz/$name/[0-9a-f]*" "$log"); then
        result="FAIL crasher ${pkg#./}/$crasher"
      else
        result="FAIL see $log"
      fi
    fi
    secs=$(($(date +%s) - start))
    # The last progress line: "fuzz: elapsed: 1m0s, execs: 123456 (2057/sec), new interesting: 7 (total: 19)"
    last=$(grep -E '^fuzz: elapsed: .*execs: [0-9]+' "$log" | tail -1 || true)
    execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
    new=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
    kept=$(keep_corpus "$cache/$import/$name" "$dir/testdata/fuzz/$name")
    printf '%-40s %-28s %12s %6s %6s %7ss %s\n' "${import#"$module"/}" "$name" "${execs:-0}" "${new:-0}" "$kept" "$secs" "$result"
  done
done
exit "$failed"

#!/usr/bin/env bash
# Builds the cosign CLI VERSION from the Go module proxy into OUTDIR, using the pinned tools module
# in test/tools/cosign. The registry tests verify imgctl's signatures with it (images/sign).
set -euo pipefail
version=${1:?usage: build-cosign.sh VERSION OUTDIR}
out=${2:?usage: build-cosign.sh VERSION OUTDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mod=$here/test/tools/cosign
pinned=$(grep -oE 'github.com/sigstore/cosign/v2 v[0-9.]+' "$mod/go.mod" | head -n1 | sed 's/.* v//')
if [ "$version" != "$pinned" ]; then
  echo "build-cosign.sh: test/tools/cosign pins $pinned, not $version" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd) # the build runs in the tools module
tmp=$(mktemp -d "$out/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$mod"
echo "building cosign v$version from the Go module proxy" >&2
CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=v$version -X sigs.k8s.io/release-utils/version.gitTreeState=clean" \
  -o "$tmp/cosign" github.com/sigstore/cosign/v2/cmd/cosign
"$tmp/cosign" version >&2
mv "$tmp/cosign" "$out/cosign"

#!/usr/bin/env bash
# Builds the Packer CLI VERSION from the Go module proxy into OUTDIR, using the pinned tools module
# in test/tools/packer. The plugin's acceptance test (test/packer_e2e_test.go) drives
# packer-plugin-imgctl with it; Debian's Packer 1.6.6 cannot load plugins built with
# packer-plugin-sdk v0.6.x.
set -euo pipefail
version=${1:?usage: build-packer.sh VERSION OUTDIR}
out=${2:?usage: build-packer.sh VERSION OUTDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mod=$here/test/tools/packer
pinned=$(grep -oE 'github.com/hashicorp/packer v[0-9.]+' "$mod/go.mod" | head -n1 | sed 's/.* v//')
if [ "$version" != "$pinned" ]; then
  echo "build-packer.sh: test/tools/packer pins $pinned, not $version" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd) # the build runs in the tools module
tmp=$(mktemp -d "$out/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$mod"
echo "building packer v$version from the Go module proxy" >&2
# Packer's version is a constant in github.com/hashicorp/packer/version: no -X needed.
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/packer" github.com/hashicorp/packer
got=$(CHECKPOINT_DISABLE=1 "$tmp/packer" version | head -n1)
if [ "$got" != "Packer v$version" ]; then
  echo "build-packer.sh: the built binary says \"$got\", expected \"Packer v$version\"" >&2
  exit 1
fi
echo "$got" >&2
mv "$tmp/packer" "$out/packer"

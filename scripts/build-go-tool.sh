#!/usr/bin/env bash
# Builds the Go CLI NAME at VERSION from the Go module proxy into OUTDIR/NAME, using the pinned
# tools module test/tools/NAME (its go.mod requires the CLI's module at VERSION):
#   cosign  the registry tests verify imgctl's signatures with it (images/sign)
#   packer  the plugin's acceptance test (test/packer_e2e_test.go) drives packer-plugin-imgctl
#           with it; Debian's Packer 1.6.6 cannot load plugins built with packer-plugin-sdk v0.6.x
set -euo pipefail
usage="usage: build-go-tool.sh cosign|packer VERSION OUTDIR"
name=${1:?$usage}
version=${2:?$usage}
out=${3:?$usage}
case $name in
cosign)
  pkg=cmd/cosign
  ldflags="-X sigs.k8s.io/release-utils/version.gitVersion=v$version -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
  ;;
packer)
  pkg=
  ldflags= # Packer's version is a constant in github.com/hashicorp/packer/version
  ;;
*)
  echo "build-go-tool.sh: unknown tool \"$name\", expected cosign or packer" >&2
  exit 2
  ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
mod=$here/test/tools/$name
# The tools module's first single-line require is the CLI's module: "require MODULE vVERSION".
read -r module pinned < <(sed -n 's/^require \([^ ]*\) v\([0-9.]*\)$/\1 \2/p' "$mod/go.mod" | head -n1) || true
if [ -z "${module:-}" ]; then
  echo "build-go-tool.sh: test/tools/$name/go.mod has no line \"require MODULE vVERSION\"" >&2
  exit 2
fi
if [ "$version" != "$pinned" ]; then
  echo "build-go-tool.sh: test/tools/$name pins $module $pinned, not $version" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd) # the build runs in the tools module
tmp=$(mktemp -d "$out/.build-XXXXXX")
# shellcheck source=scripts/tool-build-env.sh
. "$here/scripts/tool-build-env.sh"
trap 'tool_build_cleanup "$tmp"' EXIT
tool_build_env "$tmp"
cd "$mod"
echo "building $name v$version from the Go module proxy" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/$name" "$module${pkg:+/$pkg}"
got=$(CHECKPOINT_DISABLE=1 "$tmp/$name" version 2>&1)
case $got in
*"v$version"*) ;;
*)
  echo "build-go-tool.sh: the built $name's version output lacks v$version:" >&2
  echo "$got" >&2
  exit 1
  ;;
esac
echo "$got" >&2
mv "$tmp/$name" "$out/$name"

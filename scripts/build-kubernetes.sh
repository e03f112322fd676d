#!/usr/bin/env bash
# Builds kubelet and kubeadm VERSION from the Go module proxy into OUTDIR, using the pinned tools
# module in test/tools/kubernetes (DESIGN.md section 9). Static binaries, ~4 min cold.
set -euo pipefail
version=${1:?usage: build-kubernetes.sh VERSION OUTDIR}
out=${2:?usage: build-kubernetes.sh VERSION OUTDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mod=$here/test/tools/kubernetes
pinned=$(grep -oE 'k8s.io/kubernetes v[0-9.]+' "$mod/go.mod" | head -n1 | sed 's/.* v//')
if [ "$version" != "$pinned" ]; then
  echo "build-kubernetes.sh: test/tools/kubernetes pins $pinned, not $version" >&2
  exit 2
fi
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$mod"
for bin in kubelet kubeadm; do
  echo "building $bin v$version from the Go module proxy" >&2
  GONOSUMDB=k8s.io GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -tags providerless,dockerless \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitTreeState=clean" \
    -o "$tmp/$bin" "k8s.io/kubernetes/cmd/$bin"
done
"$tmp/kubelet" --version
mv "$tmp/kubeadm" "$out/kubeadm"
mv "$tmp/kubelet" "$out/kubelet"

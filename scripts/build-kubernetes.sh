#!/usr/bin/env bash
# Builds kubelet, kubeadm VERSION and crictl (kubeadm's preflight needs it on PATH) from the Go
# module proxy into OUTDIR, using the pinned tools modules test/tools/kubernetes and
# test/tools/cri-tools (DESIGN.md section 9). Static binaries, ~4 min cold. A binary already in
# OUTDIR is kept (OUTDIR is per version), so a cache from before crictl only gains crictl.
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
crimod=$here/test/tools/cri-tools
crictl_version=$(sed -n 's|^require sigs.k8s.io/cri-tools v\([0-9.]*\)$|\1|p' "$crimod/go.mod")
if [ -z "$crictl_version" ]; then
  echo "build-kubernetes.sh: test/tools/cri-tools/go.mod has no line \"require sigs.k8s.io/cri-tools vX.Y.Z\"" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd) # the builds run in the tools modules
tmp=$(mktemp -d "$out/.build-XXXXXX")
# shellcheck source=scripts/tool-build-env.sh
. "$here/scripts/tool-build-env.sh"
trap 'tool_build_cleanup "$tmp"' EXIT
tool_build_env "$tmp"
cd "$mod"
for bin in kubelet kubeadm; do
  if [ -x "$out/$bin" ]; then
    continue
  fi
  echo "building $bin v$version from the Go module proxy" >&2
  GONOSUMDB=k8s.io GOFLAGS="-mod=mod ${GOFLAGS:-}" CGO_ENABLED=0 go build -trimpath -tags providerless,dockerless \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitTreeState=clean" \
    -o "$tmp/$bin" "k8s.io/kubernetes/cmd/$bin"
done
if [ ! -x "$out/crictl" ]; then
  echo "building crictl v$crictl_version from the Go module proxy" >&2
  (cd "$crimod" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$crictl_version" \
    -o "$tmp/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
  got=$("$tmp/crictl" --version)
  case $got in
  *"v$crictl_version"*) ;;
  *)
    echo "build-kubernetes.sh: the built crictl's version lacks v$crictl_version: $got" >&2
    exit 1
    ;;
  esac
fi
if [ -e "$tmp/kubelet" ]; then
  "$tmp/kubelet" --version
fi
for bin in kubeadm kubelet crictl; do
  if [ -e "$tmp/$bin" ]; then
    mv "$tmp/$bin" "$out/$bin"
  fi
done

#!/usr/bin/env bash
# Builds the control-plane images kubeadm VERSION expects, without registry.k8s.io, into
# OUTDIR/layout (one OCI image layout) and writes OUTDIR/sources.txt: one spec source line per
# image, oci-layout:///OUTDIR/layout@sha256:…#image=/usr/lib/imgctl/images/COMPONENT.tar&name=NAME,
# which bakes it where configure imports it before kubeadm runs.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy  k8s.io/kubernetes VERSION
#       (test/tools/kubernetes), built like scripts/build-kubernetes.sh builds the kubelet
#   etcd     go.etcd.io/etcd/server/v3 (test/tools/etcd): v3.5.0, tagged 3.5.0-0; kubeadm 1.21
#            defaults to 3.4.13-0, which the module proxy does not serve (the node's kubeadm
#            configuration names the baked tag: etcd.local.imageTag)
#   coredns  github.com/coredns/coredns (test/tools/coredns): v1.8.0, kubeadm 1.21's default
#   pause    cmd/imgctl-pause, our own sandbox program
# kube-proxy's image also holds iptables (nf_tables backend, as on the Debian 12 host: kube-proxy
# and the kubelet must write rules through the same backend) and conntrack from Debian bookworm.
# The names come from "imgctl images control-plane-names" (layers/kubeversion holds them).
#
# Binaries and the kube-proxy root file system are kept in OUTDIR and not built again; the images
# are packed again when a binary, the root file system or this script is newer than
# OUTDIR/sources.txt (delete it to force). Cold: 6–8 min on 2 cores (measured with a fresh module cache); warm: seconds.
set -euo pipefail
usage="usage: build-control-plane-images.sh VERSION OUTDIR"
version=${1:?$usage}
out=${2:?$usage}
here=$(cd "$(dirname "$0")/.." && pwd)
tools=$here/test/tools

pinned() { # pinned MODULE_DIR MODULE: the version go.mod requires, without the v
  sed -n "s|^require $2 v\([0-9.]*\)\$|\1|p" "$tools/$1/go.mod"
}
k8s=$(grep -oE 'k8s.io/kubernetes v[0-9.]+' "$tools/kubernetes/go.mod" | head -n1 | sed 's/.* v//')
etcd=$(pinned etcd go.etcd.io/etcd/server/v3)
coredns=$(pinned coredns github.com/coredns/coredns)
if [ "$version" != "$k8s" ]; then
  echo "build-control-plane-images.sh: test/tools/kubernetes pins $k8s, not $version" >&2
  exit 2
fi
if [ -z "$etcd" ] || [ -z "$coredns" ]; then
  echo "build-control-plane-images.sh: test/tools/etcd/go.mod or test/tools/coredns/go.mod has no \"require MODULE vX.Y.Z\" line" >&2
  exit 2
fi

mkdir -p "$out/bin" "$out/rootfs"
out=$(cd "$out" && pwd) # the builds run in the tools modules
bin=$out/bin
tmp=$(mktemp -d "$out/.build-XXXXXX")
# shellcheck source=scripts/tool-build-env.sh
. "$here/scripts/tool-build-env.sh"
trap 'tool_build_cleanup "$tmp"' EXIT
tool_build_env "$tmp"
started=$SECONDS

components=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
missing=()
for c in "${components[@]}"; do
  [ -x "$bin/$c" ] || missing+=("k8s.io/kubernetes/cmd/$c")
done
if [ ${#missing[@]} -gt 0 ]; then
  # kube-apiserver needs k8s.io/kubernetes/pkg/generated/openapi's zz_generated.openapi.go, which
  # Kubernetes generates at build time ("make generated_files") and so is not in the module: generate
  # it the way that makefile does — openapi-gen (the kube-openapi the tools module pins) over every
  # package with a "+k8s:openapi-gen=" tag, here those kube-apiserver links — into a copy of the
  # module that a Go workspace puts in place of it (the module cache is read-only, and go build
  # -overlay refuses files in it). GODEBUG=gotypesalias=0: this gengo predates go/types' Alias
  # nodes and would skip aliased types.
  echo "generating kube-apiserver's OpenAPI definitions (openapi-gen)" >&2
  (
    cd "$tools/kubernetes"
    export GONOSUMDB=k8s.io GOFLAGS="-mod=mod ${GOFLAGS:-}"
    CGO_ENABLED=0 go build -o "$tmp/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen
    # go list -m names the module's directory only once it is downloaded: with a module cache
    # of the build's own (tool-build-env.sh) nothing has downloaded it yet.
    go mod download k8s.io/kubernetes
    kdir=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)
    if [ -z "$kdir" ] || [ ! -d "$kdir/hack/boilerplate" ]; then
      echo "build-control-plane-images.sh: k8s.io/kubernetes v$version is not in the module cache (go list -m gave \"$kdir\")" >&2
      exit 1
    fi
    go list -e -deps -f '{{.ImportPath}}|{{.Dir}}|{{join .GoFiles " "}}' k8s.io/kubernetes/cmd/kube-apiserver |
      while IFS='|' read -r pkg dir files; do
        [ -n "$files" ] || continue
        # shellcheck disable=SC2086 # files is a list of names without spaces
        if (cd "$dir" && grep -qE '^[[:space:]]*// *\+k8s:openapi-gen=' $files); then echo "$pkg"; fi
      done >"$tmp/openapi-packages"
    GODEBUG=gotypesalias=0 "$tmp/openapi-gen" --logtostderr -i "$(paste -sd, "$tmp/openapi-packages")" \
      -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h "$kdir/hack/boilerplate/boilerplate.generatego.txt" -o "$tmp/openapi" -r "$tmp/openapi-violations" 2>"$tmp/openapi-gen.log" ||
      { cat "$tmp/openapi-gen.log" >&2; exit 1; }
    cp -a "$kdir" "$tmp/kubernetes"
    chmod -R u+w "$tmp/kubernetes"
    cp "$tmp/openapi/k8s.io/kubernetes/pkg/generated/openapi/zz_generated.openapi.go" "$tmp/kubernetes/pkg/generated/openapi/"
    # The replacement relative to go.work: the binaries record it as written, and an absolute
    # temporary directory would make every build's binaries (and images) differ.
    printf 'go 1.26\n\nuse %s\n\nreplace k8s.io/kubernetes v%s => ./kubernetes\n' "$tools/kubernetes" "$version" >"$tmp/go.work"
  )
  echo "building ${missing[*]} v$version from the Go module proxy" >&2
  # One go build for all: the packages they share compile once. (-mod=mod is not allowed in a
  # workspace; the tools module's go.sum is complete.)
  (cd "$tools/kubernetes" && GOWORK=$tmp/go.work GONOSUMDB=k8s.io CGO_ENABLED=0 go build -trimpath -tags providerless,dockerless \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitTreeState=clean" \
    -o "$tmp/" "${missing[@]}")
  for p in "${missing[@]}"; do
    c=${p##*/}
    got=$("$tmp/$c" --version 2>&1)
    [ "$got" = "Kubernetes v$version" ] || { echo "build-control-plane-images.sh: $c --version says \"$got\", expected Kubernetes v$version" >&2; exit 1; }
    mv "$tmp/$c" "$bin/$c"
  done
fi

if [ ! -x "$bin/etcd" ]; then
  echo "building etcd v$etcd from the Go module proxy" >&2
  # -buildvcs=false: the tools module is in this repository; its commit must not reach the binary.
  (cd "$tools/etcd" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$tmp/etcd" .)
  got=$("$tmp/etcd" --version 2>&1)
  case $got in
  *"etcd Version: $etcd"*) ;;
  *) echo "build-control-plane-images.sh: etcd --version lacks $etcd:" >&2; echo "$got" >&2; exit 1 ;;
  esac
  mv "$tmp/etcd" "$bin/etcd"
fi

if [ ! -x "$bin/coredns" ]; then
  echo "building CoreDNS v$coredns from the Go module proxy" >&2
  (cd "$tools/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" github.com/coredns/coredns)
  got=$("$tmp/coredns" -version 2>&1)
  case $got in
  *"CoreDNS-$coredns"*) ;;
  *) echo "build-control-plane-images.sh: coredns -version lacks CoreDNS-$coredns:" >&2; echo "$got" >&2; exit 1 ;;
  esac
  mv "$tmp/coredns" "$bin/coredns"
fi

# Our own programs: built every time (seconds with a warm build cache), kept if unchanged.
(cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$tmp/" ./cmd/imgctl-pause ./cmd/imgctl)
cmp -s "$tmp/imgctl-pause" "$bin/pause" || mv "$tmp/imgctl-pause" "$bin/pause"
imgctl=$tmp/imgctl

# kube-proxy's root file system: iptables and conntrack from Debian bookworm, unpacked without
# maintainer scripts, so the names the alternatives system would make point at the nf_tables
# multi-call binary here; no device nodes (the runtime provides /dev), no package manager state.
rootfs=$out/rootfs/kube-proxy
if [ ! -e "$rootfs.done" ]; then
  echo "unpacking iptables and conntrack from Debian bookworm for kube-proxy" >&2
  rm -rf "$rootfs"
  mmdebstrap --quiet --variant=extract --include=iptables,conntrack,netbase bookworm "$tmp/rootfs" http://deb.debian.org/debian
  (
    cd "$tmp/rootfs"
    rm -rf dev/* etc/apt var/cache/apt var/lib/apt var/lib/dpkg var/log/apt usr/share/doc usr/share/man usr/share/info usr/share/lintian
    for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
      ln -sfn xtables-nft-multi "usr/sbin/$n"
    done
  )
  if [ "$(id -u)" = 0 ]; then
    got=$(chroot "$tmp/rootfs" /usr/sbin/iptables --version 2>&1) || true
    case $got in
    *"(nf_tables)"*) ;;
    *) echo "build-control-plane-images.sh: iptables in kube-proxy's root file system says \"$got\", expected the nf_tables backend" >&2; exit 1 ;;
    esac
  fi
  mv "$tmp/rootfs" "$rootfs"
  touch "$rootfs.done"
fi

# Every image: an empty /tmp (sticky) and a PATH that finds the binaries.
mkdir -p "$tmp/base/tmp"
chmod 1777 "$tmp/base/tmp"
path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

if [ -e "$out/sources.txt" ] && [ -z "$(find "$bin" "$rootfs.done" "$0" -newer "$out/sources.txt" -print -quit)" ]; then
  echo "images already packed in $out/layout (delete $out/sources.txt to pack again)" >&2
else
  : >"$tmp/sources.txt"
  : >"$tmp/summary.txt"
  while read -r component name; do
    case $component in
    pause) args=(--file "$bin/pause:/pause:0755" --entrypoint /pause --user 65535:65535) ;;
    coredns) args=(--file "$bin/coredns:/coredns:0755" --entrypoint /coredns) ;;
    kube-proxy) args=(--dir "$rootfs:/" --file "$bin/kube-proxy:/usr/local/bin/kube-proxy:0755" --entrypoint /usr/local/bin/kube-proxy) ;;
    *) args=(--file "$bin/$component:/usr/local/bin/$component:0755" --entrypoint "/usr/local/bin/$component") ;;
    esac
    json=$("$imgctl" -o json images pack --layout "$out/layout" --name "$name" --dir "$tmp/base:/" --env "$path" "${args[@]}")
    digest=$(sed -n 's/^  "digest": "\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$json")
    size=$(sed -n 's/^  "size": \([0-9]*\).*/\1/p' <<<"$json")
    if [ -z "$digest" ] || [ -z "$size" ]; then
      echo "build-control-plane-images.sh: imgctl images pack printed no digest or size:" >&2
      echo "$json" >&2
      exit 1
    fi
    echo "oci-layout://$out/layout@$digest#image=/usr/lib/imgctl/images/$component.tar&name=$name" >>"$tmp/sources.txt"
    printf '%-68s %s %6s\n' "$name" "${digest:7:12}" "$(numfmt --to=iec --suffix=B "$size")" >>"$tmp/summary.txt"
  done < <("$imgctl" images control-plane-names --k8s "$version" --tag "etcd=$etcd-0" --tag "coredns=v$coredns")
  [ "$(wc -l <"$tmp/sources.txt")" = 7 ] || { echo "build-control-plane-images.sh: packed $(wc -l <"$tmp/sources.txt") images, expected 7" >&2; exit 1; }
  mv "$tmp/summary.txt" "$out/summary.txt"
  mv "$tmp/sources.txt" "$out/sources.txt"
fi
echo "control-plane images for Kubernetes v$version in $out/layout ($((SECONDS - started)) s; sizes compressed):" >&2
cat "$out/summary.txt" >&2

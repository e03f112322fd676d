# shellcheck shell=bash
# Sourced by the scripts that build tools from the Go module proxy (build-go-tool.sh,
# build-kubernetes.sh, build-control-plane-images.sh) after they made their temporary directory.
#
# A tool's compiled packages and downloaded modules (several GB for kubernetes, packer and cosign
# together) are never used again: the built binaries are what .cache/tools keeps. Kept in the
# caller's caches they only took disk away from the tests (a CI run ran out of space), so a tool
# build uses a build and a module cache of its own inside its temporary directory, removed with
# it. IMGCTL_TOOLS_GOCACHE=keep builds with the caller's caches instead (faster rebuilds).

# tool_build_env DIR: build and download into DIR (the build's temporary directory).
tool_build_env() {
  if [ "${IMGCTL_TOOLS_GOCACHE:-}" = keep ]; then
    return
  fi
  export GOCACHE="$1/gocache" GOMODCACHE="$1/gomodcache"
  # Writable module files, so that the cleanup can remove them without root.
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
}

# tool_build_cleanup DIR: remove DIR, module files that Go made read-only included.
tool_build_cleanup() {
  chmod -R u+w -- "$1" 2>/dev/null || true
  rm -rf -- "$1"
}

#!/usr/bin/env bash
# Prints the directory holding the binaries of one containerd release (or of cri-tools), for putting first on
# PATH: `PATH=$(bash scripts/containerd.sh 2.3.4):$PATH cargo test ...`.
#   VERSION   1.7.34, 2.3.4, ... (a containerd-VERSION-linux-amd64.tar.gz), cri-tools-v1.36.0 (crictl, critest),
#             or `system` (Debian's containerd package, installed by scripts/setup.sh)
# Tarballs come from $WASMHTTP_CONTAINERD_DIST (default: ../shared/containerd next to this repository), in
# the layout of containerd's and cri-tools' own release tarballs; they are verified against that folder's
# SHA256SUMS and unpacked once into $WASMHTTP_DIST_CACHE (default ~/.cache/wasmhttp/dist). Nothing is ever
# downloaded: a missing tarball or digest is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: scripts/containerd.sh VERSION|cri-tools-vX.Y.Z|system}"

if [ "$version" = system ]; then
  bash scripts/setup.sh containerd >&2
  dirname "$(command -v containerd)"
  exit 0
fi

dist="${WASMHTTP_CONTAINERD_DIST:-$PWD/../shared/containerd}"
cache="${WASMHTTP_DIST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmhttp/dist}"
case "$version" in
  cri-tools-*) tarball="$version-linux-amd64.tar.gz" ;;
  *) tarball="containerd-$version-linux-amd64.tar.gz" ;;
esac
target="$cache/${tarball%.tar.gz}"
if [ -f "$target/.complete" ]; then
  case "$version" in cri-tools-*) echo "$target" ;; *) echo "$target/bin" ;; esac
  exit 0
fi

[ -f "$dist/$tarball" ] || { echo "scripts/containerd.sh: $dist/$tarball is missing (set WASMHTTP_CONTAINERD_DIST)" >&2; exit 1; }
[ -f "$dist/SHA256SUMS" ] || { echo "scripts/containerd.sh: $dist/SHA256SUMS is missing" >&2; exit 1; }
expected=$(awk -v f="$tarball" '$2 == f || $2 == "*" f {print $1}' "$dist/SHA256SUMS")
[ -n "$expected" ] || { echo "scripts/containerd.sh: $dist/SHA256SUMS has no digest for $tarball" >&2; exit 1; }
actual=$(sha256sum "$dist/$tarball" | awk '{print $1}')
if [ "$actual" != "$expected" ]; then
  echo "scripts/containerd.sh: $dist/$tarball has digest $actual, SHA256SUMS says $expected" >&2
  exit 1
fi

# Unpacked beside the target and renamed into place, so an interrupted run leaves no half-filled cache.
mkdir -p "$cache"
staging=$(mktemp -d "$cache/.unpack-XXXXXX")
trap 'rm -rf "$staging"' EXIT
tar -xzf "$dist/$tarball" -C "$staging"
touch "$staging/.complete"
rm -rf "$target"
mv "$staging" "$target"
trap - EXIT
case "$version" in cri-tools-*) echo "$target" ;; *) echo "$target/bin" ;; esac

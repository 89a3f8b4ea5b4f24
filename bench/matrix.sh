#!/usr/bin/env bash
# The shim and pod benchmarks (bench/shim.sh, bench/pods.sh) on each containerd version of the test matrix, in
# one run: each version's own binaries (scripts/containerd.sh; `system` is Debian's 1.6) come first on PATH, so
# its containerd and its own containerd-shim-runc-v2 are measured, and runc is each table's baseline.
# Usage: bench/matrix.sh [RUNS] [SERVICES] [PODS]   (defaults 10, 20 and 100; results in
#        bench-out/matrix.txt, and per version in bench-out/shim-VERSION.txt and bench-out/pods-VERSION.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
services="${2:-20}"
pods="${3:-100}"
versions=(${WASMHTTP_BENCH_CONTAINERD:-system 2.3.4})
out=bench-out; mkdir -p "$out"
for version in "${versions[@]}"; do
  bin=$(bash scripts/containerd.sh "$version")
  echo "== containerd $version ($bin)" >&2
  PATH="$bin:$PATH" bash bench/shim.sh "$runs" "$services" >/dev/null
  cp "$out/shim.txt" "$out/shim-$version.txt"
  PATH="$bin:$PATH" bash bench/pods.sh "$runs" "$pods" >/dev/null
  cp "$out/pods.txt" "$out/pods-$version.txt"
done
for version in "${versions[@]}"; do cat "$out/shim-$version.txt" "$out/pods-$version.txt"; echo; done \
  | tee "$out/matrix.txt"

#!/usr/bin/env bash
# Cold start of big guests, one run, same machine: the first 200 of examples/python-http (WASI 0.2 and 0.3)
# and examples/js-http from an empty compile cache, through a private containerd (`ctr run -d` to the first
# 200), with the wasm compiled on the node (the default) and with signed precompiled code in the image
# (`wasmhttp image build --sign`, a node trusting the key), against `wasmtime serve -C cache=n` (it compiles).
# Each figure is the median of RUNS starts; the compile cache is emptied before every start.
# Usage: bench/cold-start.sh [RUNS]   (results also land in bench-out/cold-start.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
out=bench-out/cold-start; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh curl bc containerd
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p containerd-shim-wasmhttp -p wasmhttp-bench
bin=$PWD/target/release
install_wasmtime
source bench/containerd.sh

"$bin/wasmhttp" image keygen -o "$work/signing.key" >"$work/public" 2>/dev/null
printf '[engine]\nprecompiled-signers = ["%s"]\n' "$(cat "$work/public")" >"$work/trusting.toml"

# first_200 ID IMAGE [CTR RUN ARGS…]: ms from `ctr run -d` to the first 200, from an empty compile cache.
first_200() {
  local id=$1 image=$2; shift 2
  rm -rf "$work/cache"
  "$bin/first-response" 18290 1 -- "${ctr_run[@]}" -d --runtime io.containerd.wasmhttp.v1 --net-host \
    --env PORT=18290 "$@" "$image" "$id" | sed -n 1p
  remove "$id"
}

{
  echo "first 200 from an empty compile cache, median of $runs, $(nproc) cores, $(engines)"
  printf '%-16s %14s %14s %14s %12s\n' guest "wasmtime serve" "wasmhttp" "precompiled" "vs serve"
} | tee "$out/../cold-start.txt"
for guest in python-http python-http-p3 js-http; do
  "$bin/wasmhttp" image build "examples/wasm/$guest.wasm" -t "docker.io/bench/$guest:plain" \
    -o "$work/plain.tar" 2>/dev/null
  "$bin/wasmhttp" image build "examples/wasm/$guest.wasm" -t "docker.io/bench/$guest:signed" \
    --sign "$work/signing.key" -o "$work/signed.tar" 2>/dev/null
  ctr_ image import "$work/plain.tar" >/dev/null
  ctr_ image import "$work/signed.tar" >/dev/null
  serve=() plain=() signed=()
  for i in $(seq 1 "$runs"); do
    serve+=("$("$bin/first-response" 18291 1 -- "$tools/bin/wasmtime" serve -Scli -C cache=n \
      --addr 127.0.0.1:18291 "examples/wasm/$guest.wasm" | sed -n 1p)")
    plain+=("$(first_200 "plain-$i" "docker.io/bench/$guest:plain")")
    signed+=("$(first_200 "signed-$i" "docker.io/bench/$guest:signed" --runtime-config-path "$work/trusting.toml")")
  done
  s=$(printf '%s\n' "${serve[@]}" | median)
  p=$(printf '%s\n' "${plain[@]}" | median)
  g=$(printf '%s\n' "${signed[@]}" | median)
  printf '%-16s %11s ms %11s ms %11s ms %11sx\n' "$guest" "$s" "$p" "$g" "$(echo "scale=3; $g / $s" | bc)" \
    | tee -a "$out/../cold-start.txt"
done
grep -q "loaded precompiled code" "$work/containerd.log" || { echo "the precompiled code was never used" >&2; exit 1; }

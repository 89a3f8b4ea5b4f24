#!/usr/bin/env bash
# Python and JavaScript guests, one run, same machine: examples/python-http (WASI 0.2 and 0.3, componentize-py)
# and examples/js-http (WASI 0.2, componentize-js) under wasmhttp (limits on; 0.2 with a fresh instance per
# request, its default, and with serial reuse opted in; 0.3 with its default reuse) and under `wasmtime serve`
# of the same wasmtime version (its defaults: it reuses 0.3 instances, never 0.2 ones). `wrk -t2 -c16` each.
# Prints req/s, p50, p99, the server's peak RSS and peak PSS (sampled every 200 ms), with the ratio against
# `wasmtime serve` on the same guest.
# Usage: bench/guests.sh [DURATION]   (results also land in bench-out/guests.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-8s}"
out=bench-out/guests; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli
install_wasmtime
cache="$out/cache"
limits=(--memory 1Gi --cpus 2 --max-concurrency 256 --queue-depth 1024 --request-timeout 5s)
# Compiles of these guests take several seconds: warm both compile caches first, so the runs measure serving.
ready_tries=1200

rm -f "$out/results"
for guest in python-http python-http-p3 js-http; do
  wasm="examples/wasm/$guest.wasm"
  run_wrk "wasmtime-serve/$guest" 18282 16 "$tools/bin/wasmtime" serve -Scli -C cache=y \
    --addr 127.0.0.1:18282 "$wasm"
  run_wrk "wasmhttp/$guest" 18281 16 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18281 \
    --cache-dir "$cache" "${limits[@]}"
  if [ "$guest" != python-http-p3 ]; then
    run_wrk "wasmhttp-reuse/$guest" 18281 16 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18281 \
      --cache-dir "$cache" "${limits[@]}" --max-instance-reuse 1000
  fi
done

{
  echo "wrk -t2 -c16 -d$duration --latency, $(nproc) cores (wrk shares them), wasmtime $wasmtime_version"
  print_table wasmtime-serve
} | tee "$out/../guests.txt"

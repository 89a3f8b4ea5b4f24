#!/usr/bin/env bash
# Python and JavaScript guests, one run, same machine: examples/python-http (WASI 0.2 and 0.3, componentize-py)
# and examples/js-http (WASI 0.2, componentize-js) under wasmhttp (limits on; 0.2 with a fresh instance per
# request, its default, and with serial reuse opted in, also with as many requests running at once as there
# are cores, and with 4; 0.3 with its default reuse) and under `wasmtime serve` of the same wasmtime version
# (its defaults: it reuses 0.3 instances, never 0.2 ones). `wrk -t2 -c16` each.
# Prints req/s, p50, p99, the server's peak RSS and peak PSS (sampled every 200 ms), with the ratio against
# `wasmtime serve` on the same guest; then the same guests' cold starts through containerd (bench/cold-start.sh,
# COLD_RUNS starts each, default 3; COLD_START=0 skips them).
# Usage: bench/guests.sh [DURATION]   (results also land in bench-out/guests.txt and bench-out/cold-start.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-8s}"
out=bench-out/guests; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p containerd-shim-wasmhttp -p wasmhttp-bench
bin=$PWD/target/release
install_wasmtime
cache="$out/cache"
limits=(--memory 1Gi --cpus 2 --queue-depth 1024 --request-timeout 5s)
# Compiles of these guests take seconds and hundreds of MiB: warm both compile caches first, so the runs (and
# their peak RSS) measure serving, not compiling.
ready_tries=1200
warm() { "$@" >/dev/null 2>&1 & local pid=$!; wait_for "$port" "$ready_tries"; kill "$pid"; wait "$pid" || true; }
for guest in python-http python-http-p3 js-http; do
  port=18282 warm "$tools/bin/wasmtime" serve -Scli -C cache=y --addr 127.0.0.1:18282 "examples/wasm/$guest.wasm"
  port=18281 warm ./target/release/wasmhttp run "examples/wasm/$guest.wasm" --listen 127.0.0.1:18281 \
    --cache-dir "$cache"
done

rm -f "$out/results" "$out/cpu"
for guest in python-http python-http-p3 js-http; do
  wasm="examples/wasm/$guest.wasm"
  run_wrk "wasmtime-serve/$guest" 18282 16 "$tools/bin/wasmtime" serve -Scli -C cache=y \
    --addr 127.0.0.1:18282 "$wasm"
  run_wrk "wasmhttp/$guest" 18281 16 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18281 \
    --cache-dir "$cache" "${limits[@]}" --max-concurrency 256
  if [ "$guest" != python-http-p3 ]; then
    run_wrk "wasmhttp-reuse/$guest" 18281 16 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18281 \
      --cache-dir "$cache" "${limits[@]}" --max-instance-reuse 1000 --max-concurrency 256
    # Serial reuse keeps one live instance (and its heap) per request running at once. These guests do not
    # wait on I/O, so as many running as there are cores keeps the cores busy with the fewest heaps resident
    # (docs/performance.md); 4 shows what one more pair costs.
    for running in "$(nproc)" 4; do
      run_wrk "wasmhttp-reuse-c$running/$guest" 18281 16 ./target/release/wasmhttp run "$wasm" \
        --listen 127.0.0.1:18281 --cache-dir "$cache" "${limits[@]}" --max-instance-reuse 1000 \
        --max-concurrency "$running"
    done
  fi
done

{
  echo "wrk -t2 -c16 -d$duration --latency, $(nproc) cores (wrk shares them), $(engines)"
  print_table wasmtime-serve
} | tee "$out/../guests.txt"

# The cold starts of the same guests, in the same run: their own script, since it runs a private containerd.
[ "${COLD_START:-1}" = 0 ] || bash bench/cold-start.sh "${COLD_RUNS:-3}"

#!/usr/bin/env bash
# The cost of charging host memory to services (runtime/src/host_memory.rs, and the check as each host call
# returns that only a charging build installs), same run: `wasmhttp run` with its charging allocator and a
# build without it (`--no-default-features`), on hello (WASI 0.2, a fresh instance per request), hello-p3
# (WASI 0.3, reused instances) and the Python guest (large instances).
# Each round runs the two builds and a control (the build without, a second time) in a rotating order; the
# ratios are medians of each round's own ratios, and the control's ratio is this machine's noise floor: a
# ratio of the charged build no further from 1 than the control's is not a measured cost. The same for the
# server's CPU per request over the same runs. Then what a charged hello service shows in
# `wasmhttp_host_memory_bytes`: idle, and under 50 connections.
# Usage: bench/host-memory.sh [ROUNDS]   (default 9; DURATION=3s per wrk run; results in bench-out/host-memory/)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-9}"
duration="${DURATION:-3s}"
out=bench-out/host-memory; rm -rf "$out"; mkdir -p "$out"
source bench/lib.sh
# A server left by a failed step would hold the port for the next run.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli --no-default-features
cp target/release/wasmhttp "$out/wasmhttp-uncharged"
cargo build --release --locked -q -p wasmhttp-cli

port=18441
# A limit no build reaches under this load: at 256 MiB, 50 connections of the Python guest fill it with
# instances, and requests refused as over capacity (503) would make the builds differ in what they serve.
serve() { # BINARY GUEST
  exec "$1" run "examples/wasm/$2.wasm" --listen "127.0.0.1:$port" --memory 1Gi
}
ready_tries=600
pinned=1 # a cost of a few percent is below what unpinned runs resolve (bench/lib.sh)
variants=(uncharged charged control)
binary() { if [ "$1" = charged ]; then echo target/release/wasmhttp; else echo "$out/wasmhttp-uncharged"; fi; }
for round in $(seq 1 "$rounds"); do
  for guest in hello hello-p3 python-http; do
    for i in 0 1 2; do
      variant=${variants[$(((round + i) % 3))]}
      run_wrk "$variant/$guest.$round" "$port" 50 serve "$(binary "$variant")" "$guest"
    done
  done
done

{
  echo "median req/s of $rounds rounds and median of each round's ratio to uncharged; wrk -t1 -c50" \
    "-d$duration on core 0, the server on core $(($(nproc) - 1))"
  printf '%-12s %12s %12s %12s %18s %18s\n' guest uncharged charged control charged/uncharged \
    control/uncharged
  for guest in hello hello-p3 python-http; do
    printf '%-12s %12.0f %12.0f %12.0f %17.3fx %17.3fx\n' "$guest" "$(round_median uncharged "$guest")" \
      "$(round_median charged "$guest")" "$(round_median control "$guest")" \
      "$(paired_ratio charged uncharged "$guest")" "$(paired_ratio control uncharged "$guest")"
  done
  echo
  echo "the server's CPU per request over the same runs (µs; user + system), medians and paired ratios"
  printf '%-12s %12s %12s %12s %18s %18s\n' guest uncharged charged control charged/uncharged \
    control/uncharged
  for guest in hello hello-p3 python-http; do
    printf '%-12s %12.1f %12.1f %12.1f %17.3fx %17.3fx\n' "$guest" \
      "$(round_median uncharged "$guest" "$out/cpu")" "$(round_median charged "$guest" "$out/cpu")" \
      "$(round_median control "$guest" "$out/cpu")" \
      "$(paired_ratio charged uncharged "$guest" "$out/cpu")" \
      "$(paired_ratio control uncharged "$guest" "$out/cpu")"
  done
  refused=$(cat "$out"/*/*.wrk | awk '/Non-2xx/ {n += $NF} END {print n + 0}')
  if [ "$refused" != 0 ]; then
    echo "WARNING: $refused responses other than 2xx in the measured runs: the builds did not serve alike"
  fi

  # What the gauge shows for a hello service: idle, then in the middle of a 50-connection wrk run.
  metrics=18442
  target/release/wasmhttp run examples/wasm/hello.wasm --listen "127.0.0.1:$port" \
    --metrics "127.0.0.1:$metrics" >"$out/gauge.log" 2>&1 &
  server=$!
  wait_for "$port"
  gauge() { curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^wasmhttp_host_memory_bytes/ {print $2}'; }
  idle=$(gauge)
  wrk -t2 -c50 -d3s "http://127.0.0.1:$port/" >/dev/null &
  load=$!
  sleep 1.5
  busy=$(gauge)
  wait "$load"
  sleep 0.5
  after=$(gauge)
  kill -TERM "$server"; wait "$server" 2>/dev/null || true
  echo "wasmhttp_host_memory_bytes of hello: idle $idle, under 50 connections $busy, after them $after"
} | tee "$out/summary.txt"

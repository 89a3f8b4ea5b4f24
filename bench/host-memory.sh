#!/usr/bin/env bash
# The cost of charging host memory to services (runtime/src/host_memory.rs), same run: `wasmhttp run` with
# its charging allocator and a build without it (`--no-default-features`), in turns, on hello (WASI 0.2,
# a fresh instance per request), hello-p3 (WASI 0.3, reused instances) and the Python guest (large
# instances). Then what a charged hello service shows in `wasmhttp_host_memory_bytes`: idle, and under 50
# connections.
# Usage: bench/host-memory.sh [ROUNDS]   (default 3; DURATION=4s per wrk run; results in bench-out/host-memory/)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
duration="${DURATION:-4s}"
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
serve() { # BINARY GUEST
  exec "$1" run "examples/wasm/$2.wasm" --listen "127.0.0.1:$port" --memory 256Mi
}
ready_tries=600
for round in $(seq 1 "$rounds"); do
  for guest in hello hello-p3 python-http; do
    run_wrk "charged/$guest.$round" "$port" 50 serve target/release/wasmhttp "$guest"
    run_wrk "uncharged/$guest.$round" "$port" 50 serve "$out/wasmhttp-uncharged" "$guest"
  done
done

{
  printf '%-12s %12s %12s %16s   (median req/s of %s rounds, wrk -t2 -c50 -d%s, %s cores)\n' guest uncharged \
    charged charged/uncharged "$rounds" "$duration" "$(nproc)"
  for guest in hello hello-p3 python-http; do
    off=$(round_median uncharged "$guest")
    on=$(round_median charged "$guest")
    printf '%-12s %12.0f %12.0f %15.3fx\n' "$guest" "$off" "$on" "$(echo "$on / $off" | bc -l)"
  done

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

#!/usr/bin/env bash
# HTTP benchmark, one run, same machine: hello for WASI 0.2 (examples/hello) and WASI 0.3 (examples/hello-p3)
# under wasmhttp (every limit on) and `wasmtime serve` of the same wasmtime version (its default instance
# reuse), and a native hyper server; `wrk -t2 -c50 -d10s --latency` each. Prints req/s, p50, p99, the
# server's peak RSS and PSS, with ratios against `wasmtime serve` on the same guest and against native; then
# wasmhttp's mean instantiation, the cost of the limits, and start to first 200 with a warm compile cache.
# Usage: bench/http.sh [DURATION]   (results also land in bench-out/http.txt; with pinned=1 in the
# environment each server runs on the last core and `wrk -t1` on the first, as bench/lib.sh says)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10s}"
out=bench-out; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p wasmhttp-bench
install_wasmtime
cache="$out/cache"; rm -rf "$cache"

rm -f "$out/results" "$out/cpu"
http_servers 18181
run_wrk wasmhttp-nolimits/hello 18186 50 ./target/release/wasmhttp run examples/wasm/hello.wasm \
  --listen 127.0.0.1:18186 --cache-dir "$cache"

instantiate=$(grep -o "mean instantiation [0-9.]* µs" "$out/wasmhttp/hello.log" | awk '{print $3}')
start_ms=$(./target/release/first-response 18184 10 -- ./target/release/wasmhttp run examples/wasm/hello.wasm \
  --listen 127.0.0.1:18184 --cache-dir "$cache" --memory 128Mi --cpus 2 | awk '/median/ {print $2}')
serve_start_ms=$(./target/release/first-response 18185 10 -- "$tools/bin/wasmtime" serve -Scli -C cache=y \
  --addr 127.0.0.1:18185 examples/wasm/hello.wasm | awk '/median/ {print $2}')

{
  if [ -n "${pinned:-}" ]; then
    echo "wrk -t1 -c50 -d$duration --latency on core 0, each server on core $(($(nproc) - 1)), $(engines)"
  else
    echo "wrk -t2 -c50 -d$duration --latency, $(nproc) cores (wrk shares them), $(engines)"
  fi
  printf '%-24s %10s %9s %9s %9s %9s %14s %10s\n' server "req/s" p50 p99 "peak RSS" "peak PSS" "vs wt serve" \
    "vs native"
  native=$(rps_of native-hyper)
  while read -r name rps p50 p99 rss pss; do
    guest=${name#*/}
    base=$(rps_of "wasmtime-serve/$guest")
    if [ -n "$base" ] && [ "$name" != native-hyper ]; then
      vs_base=$(echo "$rps / $base" | bc -l | xargs printf '%.2fx')
    else
      vs_base="—"
    fi
    printf '%-24s %10s %9s %9s %8sM %8sM %14s %9.2fx\n' "$name" "$rps" "$p50" "$p99" "$rss" "$pss" "$vs_base" \
      "$(echo "$rps / $native" | bc -l)"
  done <"$out/results"
  echo "cost of every limit (hello 0.2): $(echo "(1 - $(rps_of wasmhttp/hello) / $(rps_of wasmhttp-nolimits/hello)) * 100" | bc -l | xargs printf '%.1f')% of the unlimited throughput"
  echo "wasmhttp mean per-request instantiation (hello 0.2): ${instantiate} µs"
  echo "process start to first 200, warm compile cache, median of 10: wasmhttp ${start_ms} ms, wasmtime serve ${serve_start_ms} ms"
} | tee "$out/http.txt"

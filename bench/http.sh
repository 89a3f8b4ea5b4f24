#!/usr/bin/env bash
# HTTP benchmark, one run, same machine: hello for WASI 0.2 (examples/hello) and WASI 0.3 (examples/hello-p3)
# under wasmhttp (every limit on) and `wasmtime serve` of the same wasmtime version (its default instance
# reuse), and a native hyper server; `wrk -t2 -c50 -d10s --latency` each. Prints req/s, p50, p99 and the
# server's peak RSS, with ratios against `wasmtime serve` on the same guest and against native; then
# wasmhttp's mean instantiation, the cost of the limits, and start to first 200 with a warm compile cache.
# Usage: bench/http.sh [DURATION]   (results also land in bench-out/http.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10s}"
wasmtime_version=50.0.1
# With backtraces enabled, wasmtime captures one for an error it builds on every Store drop; production
# shims run without them.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p wasmhttp-bench
tools="$out/tools"
if [ ! -x "$tools/bin/wasmtime" ] || ! "$tools/bin/wasmtime" --version | grep -q "$wasmtime_version"; then
  echo "bench: installing wasmtime-cli $wasmtime_version (takes a while, once)" >&2
  cargo install -q wasmtime-cli --version "$wasmtime_version" --locked --root "$tools"
fi
cache="$out/cache"; rm -rf "$cache"
limits=(--memory 128Mi --cpus 2 --max-concurrency 256 --queue-depth 1024 --request-timeout 5s
  --fuel-per-request 100000000)

wait_for() { for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.05; done; echo "port $1 never answered" >&2; return 1; }

# run_wrk NAME PORT COMMAND...: starts the server, warms it up, measures, reads its peak RSS, stops it;
# appends "NAME rps p50 p99 peak_rss_mib".
run_wrk() {
  local name=$1 port=$2; shift 2
  mkdir -p "$(dirname "$out/$name")"
  "$@" >"$out/$name.log" 2>&1 &
  local pid=$!
  wait_for "$port"
  wrk -t2 -c50 -d2s "http://127.0.0.1:$port/" >/dev/null
  wrk -t2 -c50 -d"$duration" --latency "http://127.0.0.1:$port/" >"$out/$name.wrk"
  local rss
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$out/$name.wrk")
  p50=$(awk '$1=="50%" {print $2}' "$out/$name.wrk")
  p99=$(awk '$1=="99%" {print $2}' "$out/$name.wrk")
  echo "$name $rps $p50 $p99 $rss" >>"$out/results"
}

rm -f "$out/results"
for guest in hello hello-p3; do
  wasm="examples/wasm/$guest.wasm"
  run_wrk "wasmhttp/$guest" 18181 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18181 \
    --cache-dir "$cache" "${limits[@]}"
  run_wrk "wasmtime-serve/$guest" 18182 "$tools/bin/wasmtime" serve -Scli --addr 127.0.0.1:18182 "$wasm"
done
run_wrk wasmhttp-nolimits/hello 18186 ./target/release/wasmhttp run examples/wasm/hello.wasm \
  --listen 127.0.0.1:18186 --cache-dir "$cache"
run_wrk native-hyper 18183 ./target/release/native-hello 127.0.0.1:18183

instantiate=$(grep -o "mean instantiation [0-9.]* µs" "$out/wasmhttp/hello.log" | awk '{print $3}')
start_ms=$(./target/release/first-response 18184 10 -- ./target/release/wasmhttp run examples/wasm/hello.wasm \
  --listen 127.0.0.1:18184 --cache-dir "$cache" --memory 128Mi --cpus 2 | awk '/median/ {print $2}')
serve_start_ms=$(./target/release/first-response 18185 10 -- "$tools/bin/wasmtime" serve -Scli -C cache=y \
  --addr 127.0.0.1:18185 examples/wasm/hello.wasm | awk '/median/ {print $2}')

rps_of() { awk -v n="$1" '$1 == n {print $2}' "$out/results"; }
{
  echo "wrk -t2 -c50 -d$duration --latency, $(nproc) cores (wrk shares them), wasmtime $wasmtime_version"
  printf '%-24s %10s %9s %9s %9s %14s %10s\n' server "req/s" p50 p99 "peak RSS" "vs wt serve" "vs native"
  native=$(rps_of native-hyper)
  while read -r name rps p50 p99 rss; do
    guest=${name#*/}
    base=$(rps_of "wasmtime-serve/$guest")
    if [ -n "$base" ] && [ "$name" != native-hyper ]; then
      vs_base=$(echo "$rps / $base" | bc -l | xargs printf '%.2fx')
    else
      vs_base="—"
    fi
    printf '%-24s %10s %9s %9s %8sM %14s %9.2fx\n' "$name" "$rps" "$p50" "$p99" "$rss" "$vs_base" \
      "$(echo "$rps / $native" | bc -l)"
  done <"$out/results"
  echo "cost of every limit (hello 0.2): $(echo "(1 - $(rps_of wasmhttp/hello) / $(rps_of wasmhttp-nolimits/hello)) * 100" | bc -l | xargs printf '%.1f')% of the unlimited throughput"
  echo "wasmhttp mean per-request instantiation (hello 0.2): ${instantiate} µs"
  echo "process start to first 200, warm compile cache, median of 10: wasmhttp ${start_ms} ms, wasmtime serve ${serve_start_ms} ms"
} | tee "$out/http.txt"

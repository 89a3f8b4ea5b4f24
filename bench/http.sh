#!/usr/bin/env bash
# HTTP benchmark: examples/hello under wasmhttp (every limit on) vs `wasmtime serve -Scli` 48.0.8 on the same
# .wasm vs a native hyper server, with `wrk -t2 -c50 -d10s --latency`, same run, same machine; then start to
# first 200 with a warm compile cache; also wasmhttp with no limits, for the cost of the limits. Prints a table
# with ratios.
# Usage: bench/http.sh [DURATION]   (results also land in bench-out/http.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10s}"
# With backtraces enabled, wasmtime 48 captures one for an error it builds on every Store drop (~5% of
# wasmhttp's throughput here); production shims run without them.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p wasmhttp-bench
tools="$out/tools"
if [ ! -x "$tools/bin/wasmtime" ] || ! "$tools/bin/wasmtime" --version | grep -q "48.0.8"; then
  echo "bench: installing wasmtime-cli 48.0.8 (takes a while, once)" >&2
  cargo install -q wasmtime-cli --version 48.0.8 --locked --root "$tools"
fi
wasm=examples/wasm/hello.wasm
cache="$out/cache"; rm -rf "$cache"

wait_for() { for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.05; done; echo "port $1 never answered" >&2; return 1; }

# run_wrk NAME PORT COMMAND...: starts the server, warms it up, measures, stops it; appends "NAME rps p50 p99".
run_wrk() {
  local name=$1 port=$2; shift 2
  "$@" >"$out/$name.log" 2>&1 &
  local pid=$!
  wait_for "$port"
  wrk -t2 -c50 -d2s "http://127.0.0.1:$port/" >/dev/null
  wrk -t2 -c50 -d"$duration" --latency "http://127.0.0.1:$port/" >"$out/$name.wrk"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$out/$name.wrk")
  p50=$(awk '$1=="50%" {print $2}' "$out/$name.wrk")
  p99=$(awk '$1=="99%" {print $2}' "$out/$name.wrk")
  echo "$name $rps $p50 $p99" >>"$out/results"
}

rm -f "$out/results"
run_wrk wasmhttp 18181 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18181 --cache-dir "$cache" \
  --memory 128Mi --cpus 2 --max-concurrency 256 --queue-depth 1024 --request-timeout 5s --fuel-per-request 100000000
run_wrk wasmhttp-nolimits 18186 ./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18186 --cache-dir "$cache"
run_wrk wasmtime-serve 18182 "$tools/bin/wasmtime" serve -Scli --addr 127.0.0.1:18182 "$wasm"
run_wrk native-hyper 18183 ./target/release/native-hello 127.0.0.1:18183

instantiate=$(grep -o "mean instantiation [0-9.]* µs" "$out/wasmhttp.log" | awk '{print $3}')
start_ms=$(./target/release/first-response 18184 10 -- ./target/release/wasmhttp run "$wasm" \
  --listen 127.0.0.1:18184 --cache-dir "$cache" --memory 128Mi --cpus 2 | awk '/median/ {print $2}')
serve_start_ms=$(./target/release/first-response 18185 10 -- "$tools/bin/wasmtime" serve -Scli -C cache=y \
  --addr 127.0.0.1:18185 "$wasm" | awk '/median/ {print $2}')

{
  echo "wrk -t2 -c50 -d$duration --latency, examples/hello, $(nproc) cores (wrk shares them)"
  printf '%-16s %12s %10s %10s %16s %16s\n' server "req/s" p50 p99 "vs wasmtime" "vs native"
  read -r _ base_rps _ _ < <(grep '^wasmtime-serve ' "$out/results")
  read -r _ native_rps _ _ < <(grep '^native-hyper ' "$out/results")
  while read -r name rps p50 p99; do
    printf '%-16s %12s %10s %10s %15.2fx %15.2fx\n' "$name" "$rps" "$p50" "$p99" \
      "$(echo "$rps / $base_rps" | bc -l)" "$(echo "$rps / $native_rps" | bc -l)"
  done <"$out/results"
  read -r _ on_rps _ _ < <(grep '^wasmhttp ' "$out/results")
  read -r _ off_rps _ _ < <(grep '^wasmhttp-nolimits ' "$out/results")
  echo "cost of every limit: $(echo "(1 - $on_rps / $off_rps) * 100" | bc -l | xargs printf '%.1f')% of the unlimited throughput"
  echo "wasmhttp mean per-request instantiation: ${instantiate} µs"
  echo "process start to first 200, warm compile cache, median of 10: wasmhttp ${start_ms} ms, wasmtime serve ${serve_start_ms} ms"
} | tee "$out/http.txt"

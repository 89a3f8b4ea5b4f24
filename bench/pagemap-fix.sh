#!/usr/bin/env bash
# What wasmtime 50's pooled-memory reset costs the WASI 0.2 hello on this kernel, same run: wasmhttp on stock
# wasmtime 50.0.1, wasmhttp on the same wasmtime with bench/patches/wasmtime-50-pagemap-present.patch (its
# PAGEMAP_SCAN asks for written pages that are also present or swapped out, as wasmtime 48 did for present
# ones), and `wasmtime serve`; `wrk -t2 -c50` each, ROUNDS rounds in turn. First prints what the kernel
# answers (bench/src/bin/pagemap-holes.rs), then the page faults and madvise calls per request of both builds.
# The patched build is a second release tree under target/pagemap-fix (~15 min the first time); nothing
# patched is shipped.
# Usage: bench/pagemap-fix.sh [DURATION] [ROUNDS]   (results also land in bench-out/pagemap-fix.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-8s}"
rounds="${2:-2}"
out=bench-out; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh wrk curl bc patch linux-perf apache2-utils
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p wasmhttp-bench
install_wasmtime

fix=target/pagemap-fix
cargo fetch --locked -q
registry_copy=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wasmtime-$wasmtime_version" | head -1)
rm -rf "$fix/wasmtime" "$fix/src" && mkdir -p "$fix/src"
cp -r "$registry_copy" "$fix/wasmtime"
patch -s -d "$fix/wasmtime" -p1 <bench/patches/wasmtime-50-pagemap-present.patch
git ls-files -z | xargs -0 cp --parents -t "$fix/src"
(cd "$fix/src" && CARGO_TARGET_DIR=../target cargo build --release -q -p wasmhttp-cli \
  --config "patch.crates-io.wasmtime.path=\"$PWD/../wasmtime\"")
patched="$fix/target/release/wasmhttp"

cache="$out/cache"; rm -rf "$cache" "$cache-patched"
# Both builds keep 64 KiB of written pages: unset, a slot keeps none on a kernel with the holes, which would
# hide what the patch changes.
limits=(--memory 128Mi --cpus 2 --max-concurrency 256 --queue-depth 1024 --request-timeout 5s
  --fuel-per-request 100000000 --slot-keep-resident 64Ki)
hello=examples/wasm/hello.wasm

# per_request BIN CACHE PORT: page faults and madvise calls per request over 5,000 requests (ab -c4).
per_request() {
  "$1" run "$hello" --listen "127.0.0.1:$3" --cache-dir "$2" "${limits[@]}" >/dev/null 2>&1 &
  local pid=$!
  wait_for "$3"
  ab -q -n 1000 -c 4 "http://127.0.0.1:$3/" >/dev/null
  # The window outlasts the 5,000 requests (about a second here), and nothing else calls the server.
  perf stat -x, -e page-faults,syscalls:sys_enter_madvise -p "$pid" -o "$out/pagemap-perf.csv" -- sleep 8 &
  local perf=$!
  sleep 0.5
  ab -q -n 5000 -c 4 "http://127.0.0.1:$3/" >/dev/null
  wait "$perf"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk -F, '/page-faults/ {f=$1} /madvise/ {m=$1} END {printf "%.2f faults, %.2f madvise", f / 5000, m / 5000}' \
    "$out/pagemap-perf.csv"
}

rm -f "$out/results" "$out/cpu"
for round in $(seq "$rounds"); do
  run_wrk "stock/$round" 18181 50 ./target/release/wasmhttp run "$hello" --listen 127.0.0.1:18181 \
    --cache-dir "$cache" "${limits[@]}"
  run_wrk "patched/$round" 18182 50 "$patched" run "$hello" --listen 127.0.0.1:18182 \
    --cache-dir "$cache-patched" "${limits[@]}"
  run_wrk "serve/$round" 18183 50 "$tools/bin/wasmtime" serve -Scli --addr 127.0.0.1:18183 "$hello"
done

{
  ./target/release/pagemap-holes
  echo "per request (ab -n 5000 -c 4): stock $(per_request ./target/release/wasmhttp "$cache" 18184);" \
    "patched $(per_request "$patched" "$cache-patched" 18185)"
  echo "hello 0.2, wrk -t2 -c50 -d$duration, $(nproc) cores (wrk shares them), wasmtime $wasmtime_version"
  printf '%-12s %10s %9s %9s %12s\n' server "req/s" p99 "peak RSS" "vs wt serve"
  while read -r name rps _ p99 rss _; do
    base=$(rps_of "serve/${name#*/}")
    printf '%-12s %10s %9s %8sM %11.2fx\n' "$name" "$rps" "$p99" "$rss" "$(echo "$rps / $base" | bc -l)"
  done <"$out/results"
} | tee "$out/pagemap-fix.txt"

#!/usr/bin/env bash
# The main job: installs what is missing, builds, serves examples/hello under limits, curls it and prints
# the answer, then stops the service.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh curl
bash examples/build.sh >/dev/null
cargo build --release --locked -p wasmhttp-cli

port="${PORT:-8080}"
log="$(mktemp)"
./target/release/wasmhttp run examples/wasm/hello.wasm --listen "127.0.0.1:$port" \
  --memory 64Mi --cpus 0.5 --max-concurrency 16 --timeout 5s 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  grep -q "serving" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done
cat "$log"
echo "\$ curl http://127.0.0.1:$port/"
curl -sS --fail "http://127.0.0.1:$port/"
kill -TERM "$pid"
wait "$pid"
cat "$log" | tail -n +2

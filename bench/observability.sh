#!/usr/bin/env bash
# Observability cost: hello (WASI 0.2) under `wasmhttp run` with nothing exported, with Prometheus metrics
# served and scraped every second, and with OpenTelemetry traces exported over OTLP/HTTP to a local sink at
# 100% and at 1% sampling; `wrk -t2 -c50` each. ROUNDS rounds, each running the four in a rotated order, so
# drift of this shared VM falls on all of them; prints each variant's median req/s and its ratio to "off".
# Usage: bench/observability.sh [DURATION] [ROUNDS]   (results also land in bench-out/observability.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10s}"
rounds="${2:-3}"
out=bench-out/observability; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh wrk curl bc python3-venv
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli
bash scripts/test-venv.sh
cache="$out/cache"; rm -rf "$cache"
wasm=examples/wasm/hello.wasm
serve=(./target/release/wasmhttp run "$wasm" --listen 127.0.0.1:18191 --cache-dir "$cache")

# The collector: the tests' OTLP receiver, decoding every span (as a collector would) into a file.
target/test-venv/bin/python tests/otlp_receiver.py "$out/spans.jsonl" 18193 &
receiver=$!
scraper=""
trap 'kill $receiver $scraper 2>/dev/null || true' EXIT
sleep 1

variant() {
  case "$1" in
    off) run_wrk "$1/$2" 18191 50 "${serve[@]}" ;;
    metrics)
      (while sleep 1; do curl -s -o /dev/null http://127.0.0.1:18192/metrics || true; done) &
      scraper=$!
      run_wrk "$1/$2" 18191 50 "${serve[@]}" --metrics 127.0.0.1:18192
      kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; scraper="" ;;
    trace-100) run_wrk "$1/$2" 18191 50 env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18193 \
      OTEL_TRACES_SAMPLER_ARG=1 "${serve[@]}" ;;
    trace-1) run_wrk "$1/$2" 18191 50 env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18193 \
      OTEL_TRACES_SAMPLER_ARG=0.01 "${serve[@]}" ;;
  esac
}

rm -f "$out/results" "$out/cpu" "$out/spans.jsonl"
variants=(off metrics trace-100 trace-1)
for round in $(seq 1 "$rounds"); do
  for i in 0 1 2 3; do
    variant "${variants[$(( (i + round) % 4 ))]}" "$round"
  done
done

variant_median() { awk -v v="$1" '$1 ~ "^"v"/" {print $2}' "$out/results" | median_of; }
base=$(variant_median off)
{
  echo "hello (WASI 0.2), wasmhttp run, wrk -t2 -c50 -d$duration, $rounds rounds (median), $(nproc) cores shared with wrk and the collector"
  printf '%-10s %12s %14s %s\n' variant "median req/s" "vs off" "every round"
  for v in "${variants[@]}"; do
    rps=$(variant_median "$v")
    printf '%-10s %12s %14s %s\n' "$v" "$rps" "$(echo "$rps / $base" | bc -l | xargs printf '%.3fx')" \
      "$(awk -v v="$v" '$1 ~ "^"v"/" {printf "%s ", $2}' "$out/results")"
  done
  echo "spans received: $(wc -l < "$out/spans.jsonl" 2>/dev/null || echo 0)"
} | tee bench-out/observability.txt

#!/usr/bin/env bash
# A change's effect on hello 0.2 and 0.3, same run: the working tree's release build against a baseline,
# each server pinned to the last core and `wrk -t1 -c50` to the first (bench/lib.sh), the two builds taking
# turns for ROUNDS rounds. Prints, per guest, the median over rounds of the paired ratios (this build over
# the baseline, same round) of req/s and of the server's CPU time per request, with the quartiles of those
# ratios. The baseline is a wasmhttp binary, or a git revision (bench/lib.sh's baseline_cli builds it). With
# ARGS set, this build runs with those extra `wasmhttp run` flags and the baseline without them, and with ENV
# set, with those extra environment variables (NAME=VALUE, separated by spaces):
# `ARGS="--max-instance-concurrency 64" bench/ab.sh 8 target/release/wasmhttp` compares a knob's value with
# its default on one binary.
# Usage: [ARGS=...] [ENV=...] bench/ab.sh [ROUNDS] [BASELINE] [DURATION]   (default 7, HEAD, 3s; results in
# bench-out/ab.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-7}"
baseline="${2:-HEAD}"
duration="${3:-3s}"
read -r -a extra <<<"${ARGS:-}"
read -r -a extra_env <<<"${ENV:-}"
out=bench-out/ab; mkdir -p "$out"
source bench/lib.sh
pinned=1

bash scripts/setup.sh wrk curl bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli

base_bin=$(baseline_cli "$baseline")

rm -f "$out/results" "$out/cpu"
for round in $(seq 1 "$rounds"); do
  for guest in hello hello-p3; do
    # Each side goes first in every other round: the second run of a pair can find the core warmer.
    sides=(base this); [ $((round % 2)) = 0 ] && sides=(this base)
    for side in "${sides[@]}"; do
      bin=./target/release/wasmhttp args=("${extra[@]}") vars=("${extra_env[@]}")
      [ "$side" = base ] && bin=$base_bin args=() vars=()
      rm -rf "$out/cache-$side"
      # `env` executes the server in its place, so the pid run_wrk measures is still the server's.
      run_wrk "$side/$guest.$round" 18195 50 env "${vars[@]}" "$bin" run "examples/wasm/$guest.wasm" \
        --listen 127.0.0.1:18195 --cache-dir "$out/cache-$side" "${http_limits[@]}" "${args[@]}"
    done
  done
done

{
  echo "${ARGS:+ARGS=\"$ARGS\" }${ENV:+ENV=\"$ENV\" }bench/ab.sh $rounds $baseline $duration: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)${ARGS:+ with $ARGS}${ENV:+ with $ENV} vs $base_bin"
  echo "wrk -t1 -c50 -d$duration on core 0, each server on core $(($(nproc) - 1)); paired ratios, this / baseline"
  printf '%-10s %12s %12s %12s %14s %14s %14s %14s\n' guest "req/s base" "req/s this" "req/s ratio" "(Q1-Q3)" \
    "CPU/req ratio" "(Q1-Q3)" "CPU/req this"
  for guest in hello hello-p3; do
    printf '%-10s %12.0f %12.0f %11.3fx %14s %13.3fx %14s %12.2fµs\n' "$guest" \
      "$(round_median base "$guest")" "$(round_median this "$guest")" \
      "$(paired_ratio this base "$guest")" "$(paired_spread this base "$guest")" \
      "$(paired_ratio this base "$guest" "$out/cpu")" "$(paired_spread this base "$guest" "$out/cpu")" \
      "$(round_median this "$guest" "$out/cpu")"
  done
  echo "(Q1-Q3): the middle half of the single rounds' ratios, the spread a median's distance from 1 is read against"
} | tee bench-out/ab.txt

#!/usr/bin/env bash
# Limits benchmark: runs the containerd limits proofs (tests/limits.rs and tests/limits/: memory, CPU quota
# accuracy, CPU shares, pids and live Update) against a private containerd and prints each figure beside its target.
# Usage: bench/limits.sh   (results also land in bench-out/limits.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh curl containerd protobuf-compiler
bash examples/build.sh >/dev/null
cargo build --locked -q --workspace
# One test at a time: CPU figures mean nothing when two tests share the cores.
cargo test --locked -q -p wasmhttp-tests --test limits -- --nocapture --test-threads 1 2>&1 \
  | tee "$out/limits.log" | grep -o 'FIGURE .*' | sed 's/^FIGURE //' >"$out/limits.figures"

{
  echo "| measured (through containerd 1.6, one run) | target |"
  echo "|---|---|"
  while IFS= read -r line; do
    case "$line" in
      "cpu quota"*) target="0.25 ± 10% (0.225–0.275)" ;;
      "cpu shares"*) target="2:1 ± 20%" ;;
      "update quota"*) target="0.25 ± 10% within 2 s" ;;
      "pids.limit"*) target="≤ 4 running; 6 × 200, 2 × 503" ;;
      "memory: 100"*) target="≤ 70 MiB, 500" ;;
      "memory: 20"*) target="≤ 64 MiB held; excess 503" ;;
      *) target="" ;;
    esac
    echo "| $line | $target |"
  done <"$out/limits.figures"
} | tee "$out/limits.txt"
grep -q "test result: ok" "$out/limits.log" || { echo "limits tests failed: see $out/limits.log" >&2; exit 1; }

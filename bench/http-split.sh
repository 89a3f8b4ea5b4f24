#!/usr/bin/env bash
# Where a request's CPU goes, for the servers of bench/http.sh (wasmhttp with every limit on and `wasmtime
# serve` on hello 0.2 and hello 0.3, and native hyper), pinned as `pinned=1` pins them (bench/lib.sh). Each
# server runs twice: once for its CPU per request, once under `perf record` for where its samples fall —
# the kernel, the C library (with the vDSO), the guest's compiled code, and the server's own binary (the
# engine, the HTTP stack, the runtime), and the binary's samples by crate (bench/perf-split.awk). Then, for
# each of the benchmark's ratio targets, the CPU per request it allows a server saturating one core, against
# what the same run measured and what would be left were the server's own crates free.
# Usage: bench/http-split.sh [DURATION]   (default 6s per run; results also land in bench-out/http-split.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-6s}"
out=bench-out/split; mkdir -p "$out"
source bench/lib.sh
pinned=1

bash scripts/setup.sh wrk curl bc linux-perf
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli -p wasmhttp-bench
install_wasmtime
cache="$out/cache"; rm -rf "$cache"

rm -f "$out/results" "$out/cpu" "$out"/*/*.perf "$out"/*.perf
http_servers 18201
mv "$out/cpu" "$out/cpu.plain"
profile=1 http_servers 18201

# cpu NAME: its CPU per request (µs) in the run without perf.
cpu() { awk -v n="$1" '$1 == n {print $2}' "$out/cpu.plain"; }
# The percentages of each server's samples under perf, "kernel libc guest binary" and the binary's by crate
# (bench/perf-split.awk).
declare -A split
while read -r name _; do
  split[$name]=$(perf report -i "$out/$name.perf" --sort dso,sym --stdio -q 2>/dev/null |
    awk -f bench/perf-split.awk)
done <"$out/cpu.plain"
# part NAME INDEX: µs per request of one part of the split: 1 kernel, 2 C library, 3 guest code, 4 binary;
# then the binary's crates: 5 wasmtime, 6 tokio, 7 hyper, 8 the server's own, 9 std, 10 other.
part() { echo "$(cpu "$1") * $(echo "${split[$1]}" | cut -d' ' -f"$2") / 100" | bc -l; }

{
  echo "pinned: each server on core $(($(nproc) - 1)), wrk -t1 -c50 -d$duration on core 0; $(engines)"
  echo "CPU per request from a run without perf; its split from the samples of a second run (perf record -F 1999)"
  printf '%-24s %10s %9s %9s %9s %9s\n' server "CPU µs/req" kernel "C lib" guest binary
  while read -r name _; do
    printf '%-24s %10.2f' "$name" "$(cpu "$name")"
    for i in 1 2 3 4; do printf ' %9.2f' "$(part "$name" "$i")"; done
    echo
  done <"$out/cpu.plain"
  echo
  echo "the binary's share by the crate a symbol is named for, µs per request:"
  printf '%-24s %9s %9s %9s %9s %9s %9s\n' server wasmtime tokio hyper "own" std other
  while read -r name _; do
    printf '%-24s' "$name"
    for i in 5 6 7 8 9 10; do printf ' %9.2f' "$(part "$name" "$i")"; done
    echo
  done <"$out/cpu.plain"
  echo
  echo "what each target allows (µs of CPU per request on one core) against what this run measured:"
  budget() { # LABEL SERVER BASE FACTOR
    printf '  %-31s ≤ %6.2f   %s: %6.2f  (its kernel and guest code alone: %.2f; without its own crates: %.2f)\n' \
      "$1" "$(echo "$(cpu "$3") / $4" | bc -l)" "$2" "$(cpu "$2")" \
      "$(echo "$(part "$2" 1) + $(part "$2" 3)" | bc -l)" "$(echo "$(cpu "$2") - $(part "$2" 8)" | bc -l)"
  }
  budget "hello 0.3 ≥ 2× wasmtime serve" wasmhttp/hello-p3 wasmtime-serve/hello-p3 2
  budget "hello 0.3 ≥ 0.6× native hyper" wasmhttp/hello-p3 native-hyper 0.6
  budget "hello 0.2 ≥ 4× wasmtime serve" wasmhttp/hello wasmtime-serve/hello 4
  printf '  native hyper'"'"'s own kernel share: %.2f µs a request\n' "$(part native-hyper 1)"
} | tee bench-out/http-split.txt

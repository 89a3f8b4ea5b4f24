#!/usr/bin/env bash
# Where a `ctr run -d` start's time goes: RUNS warm starts of the hello service on a private containerd (the one
# on PATH; `PATH=$(bash scripts/containerd.sh 2.3.4):$PATH` for another version), each timed to its first 200 by
# bench/src/bin/first-response, then TRACED more under `perf record` of the exec/fork/exit scheduler tracepoints,
# printing for each when containerd executed the shim and when the first 200 came (first-response's exec = 0).
# With BASELINE=/path/to/containerd-shim-wasmhttp-v1 (another build's shim), the RUNS starts alternate between
# this build's shim and the baseline's, each named by its path, and the script prints both medians and the
# median of the paired ratios (this build over the baseline, same round).
# Usage: [BASELINE=SHIM] bench/start-trace.sh [RUNS] [TRACED]   (defaults 12 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-12}"
traced="${2:-3}"
bash scripts/setup.sh containerd linux-perf
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli -p wasmhttp-bench
bin=$PWD/target/release
source bench/containerd.sh # $work, ctr_, a private containerd with the shim on its PATH, cleanup on exit

"$bin/wasmhttp" image build examples/wasm/hello.wasm -t docker.io/bench/hello:1 -o "$work/hello.tar" 2>/dev/null
ctr_ image import "$work/hello.tar" >/dev/null
runtime=io.containerd.wasmhttp.v1
start() { # ID PORT [perf record args…]: prints the milliseconds to the first 200
  local id=$1 port=$2; shift 2
  "$@" "$bin/first-response" "$port" 1 -- "${ctr_run[@]}" -d --runtime "$runtime" --net-host \
    --env "PORT=$port" docker.io/bench/hello:1 "$id" 2>/dev/null | sed -n 1p
  remove "$id"
}
start warm 19500 >/dev/null # compiles hello into the cache: the runs below start warm
if [ -n "${BASELINE:-}" ]; then
  this_shim=$bin/containerd-shim-wasmhttp-v1
  base_shim=$(realpath "$BASELINE")
  paired() { # FN ROUND: "this baseline" milliseconds of `FN SHIM ROUND` for each shim, which goes first
    # alternating by round so that neither always starts right after the other's teardown
    local this base
    if [ $(($2 % 2)) = 0 ]; then
      this=$("$1" "$this_shim" "$2"); base=$("$1" "$base_shim" "$2")
    else
      base=$("$1" "$base_shim" "$2"); this=$("$1" "$this_shim" "$2")
    fi
    echo "$this $base"
  }
  summary() { # FILE: both medians and the median of the paired ratios
    echo "this build: median $(awk '{print $1}' "$1" | median) ms; baseline: median $(awk '{print $2}' "$1" | median) ms;" \
      "paired ratio $(awk '{print $1 / $2}' "$1" | median_of | xargs printf '%.3f')"
  }
  first() { # SHIM ROUND: the milliseconds to a new container's first 200
    local port=$((19700 + $2)); [ "$1" = "$this_shim" ] || port=$((19800 + $2))
    runtime=$1
    start "c$port" "$port"
  }
  # A pod's second container: the shim of its first already serves the pod (the same sandbox-id annotation).
  second() { # SHIM ROUND: the milliseconds to the second container's first 200
    local pod="g$2-$RANDOM"
    runtime=$1
    "${ctr_run[@]}" -d --runtime "$runtime" --net-host --annotation "io.kubernetes.cri.sandbox-id=$pod" \
      --env "PORT=$((19900 + $2))" docker.io/bench/hello:1 "$pod" >/dev/null 2>&1
    "$bin/first-response" $((20000 + $2)) 1 -- "${ctr_run[@]}" -d --runtime "$runtime" --net-host \
      --annotation "io.kubernetes.cri.sandbox-id=$pod" --env "PORT=$((20000 + $2))" docker.io/bench/hello:1 \
      "$pod-2" 2>/dev/null | sed -n 1p
    remove "$pod-2"
    remove "$pod"
  }
  echo "containerd $(containerd --version | awk '{print $3}'): first 200 after ctr run -d, $runs warm runs each, alternating (ms):"
  for i in $(seq 1 "$runs"); do paired first "$i"; done | tee "$work/pairs"
  summary "$work/pairs"
  echo "a pod's second container, first 200 after ctr run -d, $runs runs each, alternating (ms):"
  for i in $(seq 1 "$runs"); do paired second "$i"; done >"$work/second"
  summary "$work/second"
  exit 0
fi
echo "containerd $(containerd --version | awk '{print $3}'): first 200 after ctr run -d, $runs warm runs (ms):"
for i in $(seq 1 "$runs"); do start "r$i" $((19500 + i)); done | tr '\n' ' ' | tee "$work/runs"
echo
echo "median $(tr ' ' '\n' <"$work/runs" | grep . | median) ms"
for i in $(seq 1 "$traced"); do
  start "t$i" $((19600 + i)) perf record -q -a -o "$work/perf.data" \
    -e sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork -- >/dev/null
  perf script -i "$work/perf.data" 2>/dev/null | awk '
    { t = $4; sub(":", "", t) }
    /exec: filename=.*first-response/ && !t0 { t0 = t }
    /exec: filename=.*containerd-shim-wasmhttp-v1/ && !shim { shim = t }
    /exit: comm=first-response/ { done = t }
    END { printf "traced run: shim executed at %.1f ms, first 200 at %.1f ms (the shim'"'"'s part %.1f ms)\n",
          (shim - t0) * 1000, (done - t0) * 1000, (done - shim) * 1000 }'
done

#!/usr/bin/env bash
# The cost of tenant isolation (SECURITY.md) on the shim, through a private containerd, same run:
#   1. `ctr run -d` of hello to its first 200 (warm compile cache)
#   2. hello req/s through the shim (`wrk -t2 -c50`, the service on the host network)
# for three shims:
#   before  — the shim as built from $BASELINE (default aebc203, the last commit before the isolation work)
#   enforce — this tree's shim as shipped: capabilities dropped, seccomp filter on
#   off     — this tree's shim with `[security] seccomp = "off"` (capabilities are still dropped)
# The kinds take turns, so that a slow spell of the machine falls on all of them alike; medians of RUNS.
# Usage: bench/isolation.sh [RUNS]   (default 10; DURATION=5s per wrk run; results in bench-out/isolation.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
duration="${DURATION:-5s}"
baseline="${BASELINE:-aebc203}"
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh containerd wrk bc git
bash examples/build.sh >/dev/null
bin=$PWD/target/release

# The baseline's shim, from a worktree that shares this target directory (dependencies are built once), is
# built first, so that target/release ends up holding this tree's binaries. containerd finds it as
# runtime io.containerd.wasmhttpbefore.v1.
before_dir=$(mktemp -d /tmp/wasmhttp-before-XXXXXX)
git worktree add -q --detach "$before_dir/src" "$baseline"
(cd "$before_dir/src" && CARGO_TARGET_DIR="$bin/.." cargo build --release --locked -q -p containerd-shim-wasmhttp)
cp "$bin/containerd-shim-wasmhttp-v1" "$before_dir/containerd-shim-wasmhttpbefore-v1"
git worktree remove --force "$before_dir/src"
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli -p wasmhttp-bench

extra_path=$before_dir
source bench/containerd.sh # $work, ctr_, a private containerd with the shims on its PATH, cleanup on exit
trap 'cleanup; rm -rf "$before_dir"' EXIT

"$bin/wasmhttp" image build examples/wasm/hello.wasm -t docker.io/bench/hello:1 -o "$work/hello.tar" 2>/dev/null
ctr_ image import "$work/hello.tar" >/dev/null
kinds=(before enforce off)
declare -A runtime=([before]=io.containerd.wasmhttpbefore.v1 [enforce]=io.containerd.wasmhttp.v1
  [off]=io.containerd.wasmhttp.v1)
# Each shim its own compile cache: the baseline's entries are in an older format.
printf '[engine]\ncache-dir = "%s"\n' "$work/cache-before" >"$work/before.toml"
for mode in enforce off; do
  printf '[engine]\ncache-dir = "%s"\n[security]\nseccomp = "%s"\n' "$work/cache-now" "$mode" >"$work/$mode.toml"
done
service() { # KIND ID PORT: sets $args to the `ctr run -d` arguments of hello under that shim
  args=(--runtime "${runtime[$1]}" --runtime-config-path "$work/$1.toml" --net-host --env "PORT=$3"
    docker.io/bench/hello:1 "$2")
}

# 1: ctr run -d to the first 200, timed by bench/src/bin/first-response.rs.
first_200() { # KIND ID PORT
  service "$@"
  "$bin/first-response" "$3" 1 -- "${ctr_cmd[@]}" run -d "${args[@]}" | sed -n 1p
  remove "$2"
}
port=19400 # a port of its own for every run: a closed one may still have connections in TIME_WAIT
for kind in "${kinds[@]}"; do port=$((port + 1)); first_200 "$kind" "warm-$kind" "$port" >/dev/null; done
for i in $(seq 1 "$runs"); do
  for kind in "${kinds[@]}"; do
    port=$((port + 1))
    first_200 "$kind" "d-$kind-$i" "$port" >>"$work/start-$kind"
  done
done

# 2: req/s, the three services running side by side and measured in turns.
declare -A service_port=([before]=19301 [enforce]=19302 [off]=19303)
for kind in "${kinds[@]}"; do
  service "$kind" "rps-$kind" "${service_port[$kind]}"
  ctr_ run -d "${args[@]}" >/dev/null
  for _ in $(seq 1 400); do http_200 "${service_port[$kind]}" && break; sleep 0.05; done
  wrk -t2 -c50 -d1s "http://127.0.0.1:${service_port[$kind]}/" >/dev/null
done
rounds=$(( (runs + 2) / 3 ))
for _ in $(seq 1 "$rounds"); do
  for kind in "${kinds[@]}"; do
    wrk -t2 -c50 -d"$duration" "http://127.0.0.1:${service_port[$kind]}/" |
      awk '/Requests\/sec/ {print $2}' >>"$work/rps-$kind"
  done
done
for kind in "${kinds[@]}"; do remove "rps-$kind"; done

declare -A start_ms rps
for kind in "${kinds[@]}"; do
  start_ms[$kind]=$(median <"$work/start-$kind")
  rps[$kind]=$(median <"$work/rps-$kind")
done
{
  echo "containerd $(containerd --version | awk '{print $3}'), $(nproc) cores (wrk shares them);" \
    "before = $baseline; medians of $runs starts and $rounds wrk runs of $duration"
  printf '%-36s %10s %10s %10s %14s %14s\n' measure before enforce off "enforce/before" "enforce/off"
  for measure in start rps; do
    if [ "$measure" = start ]; then
      label="ctr run -d to first 200, warm (ms)"; b=${start_ms[before]}; e=${start_ms[enforce]}; o=${start_ms[off]}
    else
      label="hello req/s through the shim"; b=${rps[before]}; e=${rps[enforce]}; o=${rps[off]}
    fi
    printf '%-36s %10.1f %10.1f %10.1f %13.3fx %13.3fx\n' "$label" "$b" "$e" "$o" \
      "$(echo "$e / $b" | bc -l)" "$(echo "$e / $o" | bc -l)"
  done
} | tee "$out/isolation.txt"
for f in "$work"/start-* "$work"/rps-*; do echo "$(basename "$f"): $(tr '\n' ' ' <"$f")"; done \
  >"$out/isolation-runs.txt"

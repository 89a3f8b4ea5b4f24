#!/usr/bin/env bash
# Shim benchmark, through a private containerd (Debian's 1.6), same run, side by side with runc:
#   1. `ctr run --rm` of a command to its exit: wasmhttp hello-cli vs runc + busybox (static) `echo`
#   2. `ctr run -d` of an HTTP service to its first 200: wasmhttp hello (warm and cold compile cache)
#      vs runc + the native hyper hello (bench/src/bin/native-hello.rs)
#   3. sequential `ctr run --rm` per second, both runtimes
#   4. memory per running HTTP service (RSS and PSS summed over the shims), 1 vs N services, grouped in one
#      shim (one pod) and as separate shims
# Usage: bench/shim.sh [RUNS] [SERVICES]   (defaults 10 and 20; results also land in bench-out/shim.txt)
# runc runs from a plain rootfs directory (`ctr run --rootfs`), which spares it the snapshot work our
# images go through: the comparison favours runc.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
services="${2:-20}"
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh containerd runc busybox-static bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli -p wasmhttp-bench
bin=$PWD/target/release

source bench/containerd.sh # $work, ctr_, a private containerd with the shim on its PATH, cleanup on exit

# Images: wasmhttp images built by our own builder; runc rootfs directories with static/native binaries.
for app in hello hello-cli; do
  "$bin/wasmhttp" image build "examples/wasm/$app.wasm" -t "docker.io/bench/$app:1" -o "$work/$app.tar" 2>/dev/null
  ctr_ image import "$work/$app.tar" >/dev/null
done
mkdir -p "$work/rootfs-echo" "$work/rootfs-hyper"
cp "$(command -v busybox)" "$work/rootfs-echo/busybox"
cp "$bin/native-hello" "$work/rootfs-hyper/native-hello"
for lib in $(ldd "$bin/native-hello" | grep -o '/[^ ]*'); do cp --parents "$lib" "$work/rootfs-hyper/"; done


# 1 + 3: ctr run --rm of a command, time to exit; sequential runs per second.
run_command() { # RUNTIME-KIND ID
  if [ "$1" = wasmhttp ]; then
    ctr_ run --rm --runtime io.containerd.wasmhttp.v1 docker.io/bench/hello-cli:1 "$2" /app.wasm 0 >/dev/null 2>&1
  else
    ctr_ run --rm --runtime io.containerd.runc.v2 --rootfs "$work/rootfs-echo" "$2" /busybox echo hello >/dev/null 2>&1
  fi
}
declare -A cmd_ms per_s
run_command wasmhttp warm-0 # the compile cache is warm from here on
for kind in wasmhttp runc; do
  for i in $(seq 1 "$runs"); do
    t0=$(now_ms); run_command "$kind" "c-$kind-$i"; echo $(($(now_ms) - t0))
  done >"$work/cmd-$kind"
  cmd_ms[$kind]=$(median <"$work/cmd-$kind")
  t0=$(now_ms)
  for i in $(seq 1 "$runs"); do run_command "$kind" "s-$kind-$i"; done
  per_s[$kind]=$(echo "$runs * 1000 / ($(now_ms) - $t0)" | bc -l)
done

# 2: ctr run -d of an HTTP service to its first 200 on the host network.
first_200() { # KIND ID PORT
  local t0; t0=$(now_ms)
  if [ "$1" = runc ]; then
    ctr_ run -d --runtime io.containerd.runc.v2 --net-host --rootfs "$work/rootfs-hyper" "$2" /native-hello "127.0.0.1:$3" >/dev/null 2>&1
  else
    ctr_ run -d --runtime io.containerd.wasmhttp.v1 --net-host --env "PORT=$3" docker.io/bench/hello:1 "$2" >/dev/null
  fi
  for _ in $(seq 1 4000); do
    http_200 "$3" && break
    sleep 0.001
  done
  echo $(($(now_ms) - t0))
  remove "$2"
}
declare -A start_ms
for kind in wasmhttp-warm wasmhttp-cold runc; do
  for i in $(seq 1 "$runs"); do
    [ "$kind" = wasmhttp-cold ] && rm -rf "$work/cache"
    first_200 "${kind%%-*}" "d-$kind-$i" $((19100 + i))
  done >"$work/start-$kind"
  start_ms[$kind]=$(median <"$work/start-$kind")
done

# 4: memory per running service. Sums RSS and PSS (kB) over every shim process of this containerd.
shim_memory() {
  local rss=0 pss=0
  for pid in $(pgrep -f "containerd-shim-wasmhttp-v1.*$work"); do
    read -r r p < <(awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} END {print r, p}' "/proc/$pid/smaps_rollup")
    rss=$((rss + r)); pss=$((pss + p))
  done
  echo "$rss $pss"
}
measure_services() { # grouped|separate COUNT → "rss pss" with COUNT services running
  local mode=$1 count=$2 i
  for i in $(seq 1 "$count"); do
    local extra=()
    [ "$mode" = grouped ] && extra=(--annotation io.kubernetes.cri.sandbox-id=bench-pod)
    ctr_ run -d --runtime io.containerd.wasmhttp.v1 --net-host --env "PORT=$((19300 + i))" "${extra[@]}" \
      docker.io/bench/hello:1 "m-$mode-$i" >/dev/null
    for _ in $(seq 1 1000); do http_200 $((19300 + i)) && break; sleep 0.005; done
  done
  sleep 1
  shim_memory
  for i in $(seq 1 "$count"); do remove "m-$mode-$i"; done
  sleep 0.5
}
declare -A mem_one mem_many
for mode in grouped separate; do
  mem_one[$mode]=$(measure_services "$mode" 1)
  mem_many[$mode]=$(measure_services "$mode" "$services")
done
per_extra() { # MODE FIELD(1=rss,2=pss) → MiB per additional service
  local one many
  one=$(echo "${mem_one[$1]}" | cut -d' ' -f"$2"); many=$(echo "${mem_many[$1]}" | cut -d' ' -f"$2")
  echo "($many - $one) / ($services - 1) / 1024" | bc -l
}

{
  echo "containerd $(containerd --version | awk '{print $3}'), $(nproc) cores; medians of $runs runs"
  printf '%-52s %12s %12s %10s\n' measure wasmhttp "runc" ratio
  printf '%-52s %9.1f ms %9.1f ms %9.2fx\n' "ctr run --rm, command to exit" "${cmd_ms[wasmhttp]}" "${cmd_ms[runc]}" \
    "$(echo "${cmd_ms[wasmhttp]} / ${cmd_ms[runc]}" | bc -l)"
  printf '%-52s %9.1f /s %9.1f /s %9.2fx\n' "sequential ctr run --rm per second" "${per_s[wasmhttp]}" "${per_s[runc]}" \
    "$(echo "${per_s[wasmhttp]} / ${per_s[runc]}" | bc -l)"
  printf '%-52s %9.1f ms %9.1f ms %9.2fx\n' "ctr run -d to first 200, warm compile cache" "${start_ms[wasmhttp-warm]}" \
    "${start_ms[runc]}" "$(echo "${start_ms[wasmhttp-warm]} / ${start_ms[runc]}" | bc -l)"
  printf '%-52s %9.1f ms %9.1f ms %9.2fx\n' "ctr run -d to first 200, cold compile cache" "${start_ms[wasmhttp-cold]}" \
    "${start_ms[runc]}" "$(echo "${start_ms[wasmhttp-cold]} / ${start_ms[runc]}" | bc -l)"
  for mode in grouped separate; do
    printf '%-52s %6.2f MiB RSS  %6.2f MiB PSS\n' "memory per additional service ($mode, 1 → $services)" \
      "$(per_extra "$mode" 1)" "$(per_extra "$mode" 2)"
  done
  echo "raw kB (rss pss): grouped 1: ${mem_one[grouped]}; grouped $services: ${mem_many[grouped]};" \
    "separate 1: ${mem_one[separate]}; separate $services: ${mem_many[separate]}"
} | tee "$out/shim.txt"

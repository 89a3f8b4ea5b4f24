#!/usr/bin/env bash
# Shim benchmark, through a private containerd (the one on PATH: Debian's 1.6, or see bench/matrix.sh), same run,
# side by side with runc:
#   1. `ctr run --rm` of a command to its exit: wasmhttp hello-cli vs runc + busybox (static) `echo`
#   2. `ctr run -d` of an HTTP service to its first 200: wasmhttp hello (warm and cold compile cache)
#      vs runc + the native hyper hello (bench/src/bin/native-hello.rs)
#   3. sequential `ctr run --rm` per second, both runtimes
#   runc runs its native programs twice: from a minimal image (bench/oci_image.py; the issue's baseline, and the
#   ratio's, since our wasm images go through the same snapshot work) and from a plain rootfs directory
#   (`ctr run --rootfs`, no snapshot: a harder reference, shown beside it).
#   4. memory per running HTTP service (RSS and PSS summed over the shims), 1 vs N services, grouped in one
#      shim (one pod) and as separate shims
# Usage: bench/shim.sh [RUNS] [SERVICES]   (defaults 10 and 20; results also land in bench-out/shim.txt, each run's
#        figure in bench-out/shim-runs.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
services="${2:-20}"
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh containerd runc busybox-static bc python3
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
hyper_files=("$bin/native-hello=/native-hello")
for lib in $(ldd "$bin/native-hello" | grep -o '/[^ ]*'); do
  cp --parents "$lib" "$work/rootfs-hyper/"
  hyper_files+=("$lib=$lib")
done
python3 bench/oci_image.py "$work/echo.tar" docker.io/bench/echo:1 --entrypoint /busybox --entrypoint echo \
  --entrypoint hello "$(command -v busybox)=/busybox"
python3 bench/oci_image.py "$work/hyper.tar" docker.io/bench/hyper:1 --entrypoint /native-hello "${hyper_files[@]}"
ctr_ image import "$work/echo.tar" >/dev/null
ctr_ image import "$work/hyper.tar" >/dev/null


# 1 + 3: ctr run --rm of a command, time to exit; sequential runs per second.
run_command() { # KIND ID
  case "$1" in
    wasmhttp) ctr_ run --rm --runtime io.containerd.wasmhttp.v1 docker.io/bench/hello-cli:1 "$2" /app.wasm 0 ;;
    runc) ctr_ run --rm --runtime io.containerd.runc.v2 docker.io/bench/echo:1 "$2" ;;
    runc-dir) ctr_ run --rm --runtime io.containerd.runc.v2 --rootfs "$work/rootfs-echo" "$2" /busybox echo hello ;;
  esac >/dev/null 2>&1
}
declare -A cmd_ms per_s
run_command wasmhttp warm-0 # the compile cache is warm from here on
run_command runc warm-1     # and the image's snapshot is unpacked
# The runtimes take turns, so that a slow spell of the machine falls on all of them alike.
for i in $(seq 1 "$runs"); do
  for kind in wasmhttp runc runc-dir; do
    t0=${EPOCHREALTIME/./}; run_command "$kind" "c-$kind-$i"; ms_since "$t0" >>"$work/cmd-$kind"
  done
done
for kind in wasmhttp runc runc-dir; do
  cmd_ms[$kind]=$(median <"$work/cmd-$kind")
  t0=${EPOCHREALTIME/./}
  for i in $(seq 1 "$runs"); do run_command "$kind" "s-$kind-$i"; done
  per_s[$kind]=$(echo "$runs * 1000000 / (${EPOCHREALTIME/./} - $t0)" | bc -l)
done

# 2: ctr run -d of an HTTP service to its first 200 on the host network.
# Timed by bench/src/bin/first-response.rs, which starts `ctr run -d` and polls the port while it runs.
first_200() { # KIND ID PORT
  local -a run
  case "$1" in
    wasmhttp) run=(--runtime io.containerd.wasmhttp.v1 --net-host --env "PORT=$3" docker.io/bench/hello:1 "$2") ;;
    runc) run=(--runtime io.containerd.runc.v2 --net-host docker.io/bench/hyper:1 "$2" /native-hello "127.0.0.1:$3") ;;
    runc-dir) run=(--runtime io.containerd.runc.v2 --net-host --rootfs "$work/rootfs-hyper" "$2" /native-hello
      "127.0.0.1:$3") ;;
  esac
  "$bin/first-response" "$3" 1 -- "${ctr_run[@]}" -d "${run[@]}" | sed -n 1p
  remove "$2"
}
declare -A start_ms
first_200 runc d-warm 19098 >/dev/null          # unpacks the hyper image's snapshot
first_200 wasmhttp d-warm-wasm 19099 >/dev/null # compiles hello into the cache: "warm" runs start warm
port=19100 # a port of its own for every run: a closed one may still have connections in TIME_WAIT
for i in $(seq 1 "$runs"); do
  for kind in wasmhttp-warm runc runc-dir wasmhttp-cold; do
    [ "$kind" = wasmhttp-cold ] && rm -rf "$work/cache"
    port=$((port + 1))
    first_200 "${kind/#wasmhttp-*/wasmhttp}" "d-$kind-$i" "$port" >>"$work/start-$kind"
  done
done
for kind in wasmhttp-warm wasmhttp-cold runc runc-dir; do start_ms[$kind]=$(median <"$work/start-$kind"); done

# 4: memory per running service. Sums RSS and PSS (kB) over every shim process of this containerd, brokers
# included.
shim_memory() {
  local rss=0 pss=0
  for pid in $(pgrep -f "(containerd-shim-wasmhttp-v1|wasmhttp-broker).*$work"); do
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
    ctr_ run -d --runtime io.containerd.wasmhttp.v1 --net-host --env "PORT=$((19700 + i))" "${extra[@]}" \
      docker.io/bench/hello:1 "m-$mode-$i" >/dev/null
    for _ in $(seq 1 1000); do http_200 $((19700 + i)) && break; sleep 0.005; done
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

row() { # LABEL UNIT WASMHTTP RUNC_IMAGE RUNC_DIR
  printf '%-44s %7.1f %-2s %7.1f %-2s %6.2fx %7.1f %-2s %6.2fx\n' "$1" "$3" "$2" "$4" "$2" \
    "$(echo "$3 / $4" | bc -l)" "$5" "$2" "$(echo "$3 / $5" | bc -l)"
}
{
  echo "containerd $(containerd --version | awk '{print $3}'), $(nproc) cores; medians of $runs runs"
  printf '%-44s %10s %10s %7s %10s %7s\n' measure wasmhttp "runc image" ratio "runc dir" ratio
  row "ctr run --rm, command to exit" ms "${cmd_ms[wasmhttp]}" "${cmd_ms[runc]}" "${cmd_ms[runc-dir]}"
  row "sequential ctr run --rm per second" /s "${per_s[wasmhttp]}" "${per_s[runc]}" "${per_s[runc-dir]}"
  row "ctr run -d to first 200, warm compile cache" ms "${start_ms[wasmhttp-warm]}" "${start_ms[runc]}" \
    "${start_ms[runc-dir]}"
  row "ctr run -d to first 200, cold compile cache" ms "${start_ms[wasmhttp-cold]}" "${start_ms[runc]}" \
    "${start_ms[runc-dir]}"
  for mode in grouped separate; do
    printf '%-52s %6.2f MiB RSS  %6.2f MiB PSS\n' "memory per additional service ($mode, 1 → $services)" \
      "$(per_extra "$mode" 1)" "$(per_extra "$mode" 2)"
  done
  echo "raw kB (rss pss): grouped 1: ${mem_one[grouped]}; grouped $services: ${mem_many[grouped]};" \
    "separate 1: ${mem_one[separate]}; separate $services: ${mem_many[separate]}"
} | tee "$out/shim.txt"
for f in "$work"/cmd-* "$work"/start-*; do echo "$(basename "$f"): $(tr '\n' ' ' <"$f")"; done >"$out/shim-runs.txt"

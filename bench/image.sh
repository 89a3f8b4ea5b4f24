#!/usr/bin/env bash
# Image benchmark, same run, side by side:
#   1. push and pull of a 10 MiB component (hello padded with a custom section) to a loopback docker-registry:
#      `wasmhttp image push/pull` vs `skopeo copy` of the same OCI archive, wall time and peak RSS (GNU time)
#   2. `ctr run -d` → first 200 of the first container of a pulled image (compiles) vs the second (compile
#      cache hit), through a private containerd
# With BASELINE set (a wasmhttp binary or a git revision, built by bench/lib.sh's baseline_cli), that CLI's push
# and pull are timed in the same runs too, and a second table gives this tree's against it.
# Usage: [BASELINE=...] bench/image.sh [RUNS]   (default 5; results also land in bench-out/image.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh containerd docker-registry skopeo curl bc python3 time
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli -p wasmhttp-bench
bin=$PWD/target/release
source bench/lib.sh # baseline_cli
declare -A exe=([wasmhttp]=$bin/wasmhttp)
clis=(wasmhttp)
if [ -n "${BASELINE:-}" ]; then
  before=$(baseline_cli "$BASELINE")
  exe[before]=$(realpath "$before")
  clis=(wasmhttp before)
fi

source bench/containerd.sh # $work, ctr_, a private containerd with the shim on its PATH, cleanup on exit

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
registry=127.0.0.1:$port
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: %s\n' "$work" "$registry" >"$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 100); do curl -sf "http://$registry/v2/" >/dev/null && break; sleep 0.1; done

# 10 MiB components: hello plus a custom section (id 0) of padding, still valid and runnable. Each run pushes a
# component of its own (padding byte = run number): skopeo remembers where it pushed a blob and would mount it
# from there instead of uploading it again.
big_component() { # FILL-BYTE OUTPUT
python3 - "examples/wasm/hello.wasm" "$2" "$1" <<'PY'
import sys
wasm = open(sys.argv[1], "rb").read()
name = b"wasmhttp-bench-padding"
payload = bytes([len(name)]) + name + bytes([int(sys.argv[3])]) * (10 * 1024 * 1024 - len(wasm))
size, leb = len(payload), bytearray()
while True:
    byte, size = size & 0x7F, size >> 7
    leb.append(byte | (0x80 if size else 0))
    if not size: break
open(sys.argv[2], "wb").write(wasm + b"\x00" + bytes(leb) + payload)
PY
}

# timed NAME CMD...: runs CMD (its output shown only if it fails) under GNU time; its milliseconds go to
# $work/NAME, its peak RSS in MiB to $work/NAME.rss.
timed() {
  local name=$1; shift
  local t0=${EPOCHREALTIME/./}
  if ! /usr/bin/time -f %M -o "$work/rss-kib" "$@" >"$work/output" 2>&1; then
    cat "$work/output" >&2
    return 1
  fi
  ms_since "$t0" >>"$work/$name"
  echo "$(cat "$work/rss-kib") / 1024" | bc -l >>"$work/$name.rss"
}
declare -A ms rss
for i in $(seq 1 "$runs"); do
  big_component "$i" "$work/big.wasm"
  "$bin/wasmhttp" image build "$work/big.wasm" -t "$registry/big:1" -o "$work/big.tar" 2>/dev/null
  # The two CLIs take turns going first.
  order=("${clis[@]}"); [ $((i % 2)) = 0 ] && order=("${clis[@]:1}" "${clis[0]}")
  for cli in "${order[@]}"; do
    timed "push-$cli" "${exe[$cli]}" image push "$work/big.tar" "$registry/$cli-$i:1" --plain-http
  done
  timed push-skopeo skopeo copy -q --dest-tls-verify=false "oci-archive:$work/big.tar" "docker://$registry/skopeo-$i:1"
  for cli in "${order[@]}"; do
    timed "pull-$cli" "${exe[$cli]}" image pull "$registry/$cli-$i:1" -o "$work/pulled-$i.tar" --plain-http
    rm -f "$work/pulled-$i.tar"
  done
  timed pull-skopeo skopeo copy -q --src-tls-verify=false "docker://$registry/skopeo-$i:1" "oci-archive:$work/skopeo-$i.tar"
  rm -f "$work/skopeo-$i.tar"
done
size_mib=$(echo "$(stat -c %s "$work/big.wasm") / 1048576" | bc -l)
for op in push pull; do
  for f in "${clis[@]}" skopeo; do
    ms[$op-$f]=$(median <"$work/$op-$f"); rss[$op-$f]=$(median <"$work/$op-$f.rss")
  done
done

# First container of an image (compiles) vs the second (cache hit); the cache is emptied before each pair.
"$bin/wasmhttp" image build examples/wasm/hello.wasm -t "$registry/hello:1" -o "$work/hello.tar" 2>/dev/null
"$bin/wasmhttp" image push "$work/hello.tar" "$registry/hello:1" --plain-http 2>/dev/null
ctr_ image pull --plain-http "$registry/hello:1" >/dev/null
first_200() { # ID PORT: `ctr run -d` to the first 200, timed by bench/src/bin/first-response.rs
  "$bin/first-response" "$2" 1 -- "${ctr_run[@]}" -d --runtime io.containerd.wasmhttp.v1 --net-host \
    --env "PORT=$2" "$registry/hello:1" "$1" | sed -n 1p
}
for i in $(seq 1 "$runs"); do
  rm -rf "$work/cache"
  first_200 "first-$i" $((19300 + i)) >>"$work/start-first"
  first_200 "second-$i" $((19400 + i)) >>"$work/start-second"
  remove "first-$i"; remove "second-$i"
done
first=$(median <"$work/start-first"); second=$(median <"$work/start-second")

# side_by_side A B: push and pull, A's time and peak RSS beside B's, with A/B.
side_by_side() {
  printf '%-48s %12s %12s %8s\n' "measure ($(printf %.1f "$size_mib") MiB component)" "$1" "$2" ratio
  for op in push pull; do
    printf '%-48s %9.1f ms %9.1f ms %7.2fx\n' "$op (loopback registry)" "${ms[$op-$1]}" "${ms[$op-$2]}" \
      "$(echo "${ms[$op-$1]} / ${ms[$op-$2]}" | bc -l)"
    printf '%-48s %8.1f MiB %8.1f MiB %7.2fx\n' "$op, peak RSS" "${rss[$op-$1]}" "${rss[$op-$2]}" \
      "$(echo "${rss[$op-$1]} / ${rss[$op-$2]}" | bc -l)"
  done
}
{
  echo "wasmhttp image benchmark, medians of $runs ($(nproc) cores, docker-registry on loopback, containerd $(containerd --version | awk '{print $3}'))"
  side_by_side wasmhttp skopeo
  printf '%-48s %12s %12s %8s\n' "ctr run -d to first 200 (hello)" "second" "first" ratio
  printf '%-48s %9.1f ms %9.1f ms %7.2fx\n' "second container (cache hit) vs first (compiles)" "$second" "$first" \
    "$(echo "$second / $first" | bc -l)"
  if [ -n "${BASELINE:-}" ]; then
    echo "this tree's wasmhttp (wasmhttp) against BASELINE=$BASELINE (before), same runs"
    side_by_side wasmhttp before
  fi
} | tee "$out/image.txt"

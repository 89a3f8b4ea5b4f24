# Shared by the HTTP benchmarks (sourced, not run): the wasmtime-cli baseline, the servers and limits they
# compare, a baseline wasmhttp CLI or shim built from a git revision, a readiness wait, one measured wrk run
# with the server's peak RSS and PSS, and the medians of rounds. Expects $out (output directory) to be set.

# The baseline `wasmtime serve`: the newest wasmtime-cli published (wasmhttp may run a later patch release of
# the engine, which `engines` names).
wasmtime_version=50.0.1
engines() {
  local ours
  ours=$(awk '$0 == "name = \"wasmtime\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
  echo "wasmhttp on wasmtime $ours, wasmtime serve $wasmtime_version"
}
# With backtraces enabled, wasmtime captures one for an error it builds on every Store drop; production
# shims run without them.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# install_wasmtime: puts `wasmtime` $wasmtime_version at bench-out/tools/bin/wasmtime (built once, ~9 min).
install_wasmtime() {
  tools=bench-out/tools
  if [ ! -x "$tools/bin/wasmtime" ] || ! "$tools/bin/wasmtime" --version | grep -q "$wasmtime_version"; then
    echo "bench: installing wasmtime-cli $wasmtime_version (takes a while, once)" >&2
    cargo install -q wasmtime-cli --version "$wasmtime_version" --locked --root "$tools"
  fi
}

# Every limit on, as the HTTP benchmarks run wasmhttp (http.sh, http-split.sh, ab.sh).
http_limits=(--memory 128Mi --cpus 2 --max-concurrency 256 --queue-depth 1024 --request-timeout 5s
  --fuel-per-request 100000000)

# http_servers PORT: the servers the HTTP benchmarks compare, each measured by run_wrk: hello 0.2 and hello
# 0.3 under wasmhttp (every limit on, compile cache $cache) on PORT and `wasmtime serve` on PORT+1, then
# native hyper on PORT+2. Needs install_wasmtime first.
http_servers() {
  local guest wasm
  for guest in hello hello-p3; do
    wasm="examples/wasm/$guest.wasm"
    run_wrk "wasmhttp/$guest" "$1" 50 ./target/release/wasmhttp run "$wasm" --listen "127.0.0.1:$1" \
      --cache-dir "$cache" "${http_limits[@]}"
    run_wrk "wasmtime-serve/$guest" $(($1 + 1)) 50 "$tools/bin/wasmtime" serve -Scli \
      --addr "127.0.0.1:$(($1 + 1))" "$wasm"
  done
  run_wrk native-hyper $(($1 + 2)) 50 ./target/release/native-hello "127.0.0.1:$(($1 + 2))"
}

# baseline_cli BASELINE: the path of a `wasmhttp` CLI to compare this tree's with. BASELINE is a wasmhttp
# binary, or a git revision (baseline_build builds it).
baseline_cli() {
  if [ -x "$1" ]; then
    echo "$1"
    return
  fi
  baseline_build "$1" wasmhttp-cli wasmhttp
}

# baseline_build REVISION PACKAGE BINARY: the path of BINARY of PACKAGE as built from a git revision, built
# once into target/ab/<commit>/bin (a clean release build the first time; every revision shares
# target/ab/target).
baseline_build() {
  # Called in $(...), which `set -e` does not reach: every step stops the function on failure itself.
  local commit tree
  commit=$(git rev-parse --verify "$1^{commit}") || return
  tree="target/ab/$commit"
  if [ ! -x "$tree/bin/$3" ]; then
    { rm -rf "$tree/src" && mkdir -p "$tree/src" && git archive "$commit" | tar -x -C "$tree/src" &&
      (cd "$tree/src" && CARGO_TARGET_DIR=../../target cargo build --release --locked -q -p "$2") >&2 &&
      mkdir -p "$tree/bin" && cp "target/ab/target/release/$3" "$tree/bin/$3"; } || return
  fi
  echo "$tree/bin/$3"
}

# wait_for PORT [TRIES]: until GET / answers (any status), 50 ms apart.
wait_for() {
  for _ in $(seq 1 "${2:-200}"); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  echo "port $1 never answered" >&2
  return 1
}

# cpu_ticks PID: the user and system CPU the process has used, in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# run_wrk NAME PORT CONNECTIONS COMMAND...: starts the server, warms it up, measures with wrk while sampling
# the server's PSS, reads its peak RSS, stops it; appends "NAME rps p50 p99 peak_rss_mib peak_pss_mib" to
# $out/results, and "NAME cpu_us_per_request" (the server's CPU over the measured run) to $out/cpu. The
# readiness wait allows $ready_tries × 50 ms (compiles of big guests take seconds); wrk asks for
# $target_path (default /). With $profile set, `perf record` samples the server over the measured run into
# $out/NAME.perf, and the run's figures include the sampling's cost. With $pinned set, the server runs on
# the last core and `wrk -t1` on the first: sharing both, their threads trade cores and one binary's runs
# spread too far to compare a few percent.
# A pinned server starts on its core, so that it sizes its thread pools for the one core it gets: pinned
# after its start, two HTTP workers (or tokio's two runtime threads) took turns on one core, and every
# figure timed inside a request (wasmhttp's instantiation) counted the other thread's turns.
run_wrk() {
  local name=$1 port=$2 conns=$3 url="http://127.0.0.1:$2${target_path:-/}"; shift 3
  local wrk=(wrk -t2) core=""
  if [ -n "${pinned:-}" ]; then
    core=$(($(nproc) - 1))
    wrk=(taskset -c 0 wrk -t1)
  fi
  mkdir -p "$(dirname "$out/$name")"
  # The background shell pins itself, then becomes the server: a command is executed in its place, and a
  # function (the scripts' `serve`) runs there and ends in `exec`. Either way $! is the server's PID.
  (
    if [ -n "$core" ]; then taskset -cp "$core" "$BASHPID" >/dev/null; fi
    if declare -F "$1" >/dev/null; then "$@"; else exec "$@"; fi
  ) >"$out/$name.log" 2>&1 &
  local pid=$!
  wait_for "$port" "${ready_tries:-200}"
  "${wrk[@]}" -c"$conns" -d2s "$url" >/dev/null
  (
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
      pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
      [ "${pss:-0}" -gt "$peak" ] && peak=$pss && echo "$peak" >"$out/$name.pss"
      sleep 0.2
    done
  ) &
  local sampler=$! ticks profiler=""
  if [ -n "${profile:-}" ]; then
    perf record -q -F 1999 -o "$out/$name.perf" -p "$pid" >"$out/$name.perf.log" 2>&1 &
    profiler=$!
    sleep 0.2 # perf attaches to every thread before the measured run starts
  fi
  ticks=$(cpu_ticks "$pid")
  "${wrk[@]}" -c"$conns" -d"$duration" --latency "$url" >"$out/$name.wrk"
  ticks=$(($(cpu_ticks "$pid") - ticks))
  if [ -n "$profiler" ]; then
    kill -INT "$profiler" 2>/dev/null || true
    wait "$profiler" || true
    if [ ! -s "$out/$name.perf" ]; then
      echo "perf record wrote no samples of $name: $(cat "$out/$name.perf.log")" >&2
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      return 1
    fi
  fi
  awk -v n="$name" -v t="$ticks" -v hz="$(getconf CLK_TCK)" '/requests in/ && $1 > 0 {
    printf "%s %.2f\n", n, t * 1e6 / hz / $1 }' "$out/$name.wrk" >>"$out/cpu"
  local rss pss
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  pss=$(awk '{printf "%.1f", $1 / 1024}' "$out/$name.pss" 2>/dev/null || echo "?")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$out/$name.wrk")
  p50=$(awk '$1=="50%" {print $2}' "$out/$name.wrk")
  p99=$(awk '$1=="99%" {print $2}' "$out/$name.wrk")
  echo "$name $rps $p50 $p99 $rss $pss" >>"$out/results"
}

source "$(dirname "${BASH_SOURCE[0]}")/median.sh"

# round_median KIND GUEST [FILE]: the median req/s (or FILE's figure, default $out/results) of the rounds
# recorded as "KIND/GUEST.N" (N = 1, 2, …).
round_median() { awk -v p="$1/$2." 'index($1, p) == 1 {print $2}' "${3:-$out/results}" | median_of; }

# paired_ratios KIND BASE GUEST [FILE]: each round's KIND req/s (or FILE's figure) divided by BASE's in the
# same round, one per line. Two runs next to each other share this VM's drift over minutes, which the
# medians of each side taken apart do not cancel.
paired_ratios() {
  awk -v a="$1/$3." -v b="$2/$3." '
    index($1, a) == 1 { x[substr($1, length(a) + 1)] = $2 }
    index($1, b) == 1 { y[substr($1, length(b) + 1)] = $2 }
    END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "${4:-$out/results}"
}

# paired_ratio KIND BASE GUEST [FILE]: the median of paired_ratios.
paired_ratio() { paired_ratios "$@" | median_of; }

# paired_spread KIND BASE GUEST [FILE]: the quartiles of paired_ratios ("Q1-Q3"): how far single rounds
# differ, against which a median's distance from 1 is read.
paired_spread() {
  paired_ratios "$@" | sort -n | awk '{v[NR]=$1} END {
    if (NR == 0) { print "-"; exit }
    q1 = v[int((NR - 1) / 4) + 1]; q3 = v[NR - int((NR - 1) / 4)]
    printf "%.3f-%.3f\n", q1, q3 }'
}

# rps_of NAME: the req/s recorded for NAME.
rps_of() { awk -v n="$1" '$1 == n {print $2}' "$out/results"; }

# print_table BASELINE_PREFIX: the results with each row's ratio against "$BASELINE_PREFIX/<its guest>".
print_table() {
  printf '%-30s %10s %9s %9s %9s %9s %12s\n' server "req/s" p50 p99 "peak RSS" "peak PSS" "vs $1"
  while read -r name rps p50 p99 rss pss; do
    local guest=${name#*/} base vs
    base=$(rps_of "$1/$guest")
    if [ -n "$base" ] && [ "$name" != "$1/$guest" ]; then
      vs=$(echo "$rps / $base" | bc -l | xargs printf '%.2fx')
    else
      vs="—"
    fi
    printf '%-30s %10s %9s %9s %8sM %8sM %12s\n' "$name" "$rps" "$p50" "$p99" "$rss" "$pss" "$vs"
  done <"$out/results"
}

#!/usr/bin/env bash
# The cost of tenant isolation (SECURITY.md) on the shim, through a private containerd, same run:
#   1. `ctr run -d` of hello to its first 200 (warm compile cache)
#   2. hello req/s through the shim (`wrk -t1 -c50`, the service on the host network, a fresh one every
#      round), and the shim's CPU per request (its utime + stime over the requests wrk counted). The shim's
#      threads are pinned to the last core and wrk to the first: unpinned, the two sharing both cores made
#      one binary's runs differ by up to a third, more than any effect measured here
# for the shims:
#   enforce — this tree's shim as shipped: capabilities dropped, seccomp filter and Landlock file rules on
#   off     — this tree's shim with `[security] seccomp = "off"` and `landlock = "off"` (capabilities are still
#             dropped)
#   off2    — the same as off, a second time: off2/off is this machine's noise in the same run, the yardstick
#             for enforce/off
#   bare    — as off, and built without the charging allocator (`--no-default-features`, so its services
#             are charged nothing): every per-request defence that can be switched off is off, so enforce/bare
#             is the cost of them all together (the client pause, body pace and connection cap stay on)
#   before  — with BASELINE=<commit> (aebc203 is the last commit before the isolation work): the shim built
#             from that commit (bench/lib.sh's baseline_build: a clean release build the first time)
# and, the filter alone:
#   3. each system call a served request makes, timed in a process confined as the shim is
#      (bench/src/bin/seccomp-cost.rs), with and without the filter, in turns;
#   4. the system calls per request of the enforce shim (strace -c), so that calls × cost per call is the
#      filter's cost per request, beside the shim's CPU per request.
#   5. how long the shims took to confine themselves, as each logs it ("shim confined … ms=" in containerd's
#      log; before's starts count with enforce's: their lines read alike).
# The kinds take turns, in an order rotated every round, so that a slow spell of the machine falls on all of
# them alike; medians. Usage: bench/isolation.sh [RUNS]   (default 10; DURATION=4s per wrk run; results in
# bench-out/isolation.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
duration="${DURATION:-4s}"
baseline="${BASELINE:-}"
out=bench-out; mkdir -p "$out"
source bench/lib.sh # baseline_build, cpu_ticks

bash scripts/setup.sh containerd wrk bc git strace
bash examples/build.sh >/dev/null
bin=$PWD/target/release

kinds=(enforce bare off off2)
before_dir=$(mktemp -d /tmp/wasmhttp-before-XXXXXX)
# Built first, so that target/release ends up holding the shipped binaries. containerd finds it as runtime
# io.containerd.wasmhttpbare.v1.
cargo build --release --locked -q -p containerd-shim-wasmhttp --no-default-features
cp "$bin/containerd-shim-wasmhttp-v1" "$before_dir/containerd-shim-wasmhttpbare-v1"
if [ -n "$baseline" ]; then
  # containerd finds it as runtime io.containerd.wasmhttpbefore.v1.
  before=$(baseline_build "$baseline" containerd-shim-wasmhttp containerd-shim-wasmhttp-v1)
  cp "$before" "$before_dir/containerd-shim-wasmhttpbefore-v1"
  kinds=(before enforce bare off off2)
fi
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli -p wasmhttp-bench

extra_path=$before_dir
source bench/containerd.sh # $work, ctr_, a private containerd with the shims on its PATH, cleanup on exit
trap 'cleanup; rm -rf "$before_dir"' EXIT

"$bin/wasmhttp" image build examples/wasm/hello.wasm -t docker.io/bench/hello:1 -o "$work/hello.tar" 2>/dev/null
ctr_ image import "$work/hello.tar" >/dev/null
declare -A runtime=([before]=io.containerd.wasmhttpbefore.v1 [enforce]=io.containerd.wasmhttp.v1
  [bare]=io.containerd.wasmhttpbare.v1 [off]=io.containerd.wasmhttp.v1 [off2]=io.containerd.wasmhttp.v1)
# Each shim its own compile cache: the baseline's entries are in an older format.
printf '[engine]\ncache-dir = "%s"\n' "$work/cache-before" >"$work/before.toml"
for mode in enforce off; do
  printf '[engine]\ncache-dir = "%s"\n[security]\nseccomp = "%s"\nlandlock = "%s"\n' "$work/cache-now" "$mode" \
    "$mode" >"$work/$mode.toml"
done
cp "$work/off.toml" "$work/off2.toml"
cp "$work/off.toml" "$work/bare.toml"
service() { # KIND ID PORT: sets $args to the `ctr run -d` arguments of hello under that shim
  args=(--runtime "${runtime[$1]}" --runtime-config-path "$work/$1.toml" --net-host --env "PORT=$3"
    docker.io/bench/hello:1 "$2")
}

# rotated N: the kinds, starting from the Nth.
rotated() { local n=$(($1 % ${#kinds[@]})); echo "${kinds[@]:n}" "${kinds[@]:0:n}"; }

# 1: ctr run -d to the first 200, timed by bench/src/bin/first-response.rs.
first_200() { # KIND ID PORT
  service "$@"
  "$bin/first-response" "$3" 1 -- "${ctr_run[@]}" -d "${args[@]}" | sed -n 1p
  remove "$2"
}
port=19400 # a port of its own for every run: a closed one may still have connections in TIME_WAIT
for kind in "${kinds[@]}"; do port=$((port + 1)); first_200 "$kind" "warm-$kind" "$port" >/dev/null; done
for i in $(seq 1 "$runs"); do
  for kind in $(rotated "$i"); do
    port=$((port + 1))
    first_200 "$kind" "d-$kind-$i" "$port" >>"$work/start-$kind"
  done
done

# 2: req/s and CPU per request. Every round starts each kind's service anew and removes it after its run: a
# shim process kept for all rounds carries its own lasting bias (where its memory and threads landed), which
# showed as two identical shims (off2/off) several percent apart; fresh shims spread that over the rounds.
shim_core=$(($(nproc) - 1))
wrk=(taskset -c 0 wrk -t1 -c50)
start_pinned() { # KIND ID PORT: runs the service, pins its shim, warms it; sets $shim
  service "$@"
  ctr_ run -d "${args[@]}" >/dev/null
  for _ in $(seq 1 400); do http_200 "$3" && break; sleep 0.05; done
  shim=$(pgrep -f "containerd-shim-wasmhttp.*-id $2 " | head -1)
  taskset -a -cp "$shim_core" "$shim" >/dev/null
  "${wrk[@]}" -d1s "http://127.0.0.1:$3/" >/dev/null
}
ticks_per_s=$(getconf CLK_TCK)
for i in $(seq 1 "$runs"); do
  for kind in $(rotated "$i"); do
    port=$((port + 1))
    start_pinned "$kind" "rps-$kind-$i" "$port"
    t0=$(cpu_ticks "$shim")
    report=$("${wrk[@]}" -d"$duration" "http://127.0.0.1:$port/")
    t1=$(cpu_ticks "$shim")
    remove "rps-$kind-$i"
    echo "$report" | awk '/Requests\/sec/ {print $2}' >>"$work/rps-$kind"
    requests=$(echo "$report" | awk '/requests in/ {print $1}')
    echo "($t1 - $t0) * 1000000 / $ticks_per_s / $requests" | bc -l >>"$work/cpu-$kind"
  done
done
# 4: system calls per request of the enforce shim, counted by strace over one bounded wrk run.
port=$((port + 1))
start_pinned enforce syscalls "$port"
timeout 30 strace -f -c -p "$shim" -o "$work/strace" 2>/dev/null &
strace_pid=$!
sleep 1
syscall_requests=$("${wrk[@]}" -d2s "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
sleep 0.5
kill -INT "$strace_pid" 2>/dev/null || true
wait "$strace_pid" 2>/dev/null || true
syscalls=$(awk '$NF == "total" {print $4}' "$work/strace")
remove syscalls

# 3: each call's cost with and without the filter, in turns.
for i in $(seq 1 "$runs"); do
  for mode in enforce off; do "$bin/seccomp-cost" "$mode" >>"$work/calls-$mode"; done
done

declare -A start_ms rps cpu_us
for kind in "${kinds[@]}"; do
  start_ms[$kind]=$(median <"$work/start-$kind")
  rps[$kind]=$(median <"$work/rps-$kind")
  cpu_us[$kind]=$(median <"$work/cpu-$kind")
done
{
  echo "containerd $(containerd --version | awk '{print $3}'), $(nproc) cores (the shim pinned to core $shim_core, wrk to core 0);" \
    "${baseline:+before = $baseline; }medians of $runs starts and $runs wrk runs of $duration"
  printf '%-40s' measure; for kind in "${kinds[@]}"; do printf ' %10s' "$kind"; done
  printf ' %12s %12s %10s\n' "enforce/off" "enforce/bare" "off2/off"
  for measure in start rps cpu; do
    case $measure in
      start) label="ctr run -d to first 200, warm (ms)"; declare -n values=start_ms ;;
      rps) label="hello req/s through the shim"; declare -n values=rps ;;
      cpu) label="shim CPU per request (us)"; declare -n values=cpu_us ;;
    esac
    printf '%-40s' "$label"; for kind in "${kinds[@]}"; do printf ' %10.1f' "${values[$kind]}"; done
    printf ' %11.3fx %11.3fx %9.3fx\n' "$(echo "${values[enforce]} / ${values[off]}" | bc -l)" \
      "$(echo "${values[enforce]} / ${values[bare]}" | bc -l)" "$(echo "${values[off2]} / ${values[off]}" | bc -l)"
    unset -n values
  done
  echo
  # A round's kinds ran within seconds of each other, sharing the machine's drift, which the medians of each
  # side taken apart do not cancel.
  ratios() { paste "$work/$1-$2" "$work/$1-$3" | awk '{print $1 / $2}'; } # MEASURE A B: each round's A/B
  paired() { ratios "$@" | median_of; }
  # The 95% confidence interval of that median, from the order statistics of the rounds' ratios (no
  # assumption about their distribution): a target is met only when the whole interval is inside it.
  paired_ci() {
    ratios "$@" | sort -g | awk '{v[NR]=$1} END {
      half = 0.98 * sqrt(NR); lo = int(NR / 2 - half); hi = int(NR / 2 + 1 + half + 0.999)
      if (lo < 1) lo = 1; if (hi > NR) hi = NR
      printf "%.3f-%.3f\n", v[lo], v[hi] }'
  }
  echo "the median of each round's own ratio [its 95% confidence interval]:"
  printf '%-10s %24s %24s %24s %24s\n' measure enforce/off enforce/bare off/bare off2/off
  for measure in start rps cpu; do
    printf '%-10s' "$measure"
    for pair in "enforce off" "enforce bare" "off bare" "off2 off"; do
      # shellcheck disable=SC2086 # the pair is two words on purpose
      printf ' %9.3fx [%11s]' "$(paired "$measure" $pair)" "$(paired_ci "$measure" $pair)"
    done
    echo
  done
  echo
  echo "the filter alone: medians of $runs runs of bench/src/bin/seccomp-cost (ns per call)"
  printf '%-40s %10s %10s %10s\n' call enforce off filter
  worst=0
  for call in $(awk '{print $1}' "$work/calls-off" | sort -u); do
    on=$(awk -v c="$call" '$1 == c {print $2}' "$work/calls-enforce" | median)
    off=$(awk -v c="$call" '$1 == c {print $2}' "$work/calls-off" | median)
    delta=$(echo "$on - $off" | bc -l)
    printf '%-40s %10.1f %10.1f %10.1f\n' "$call" "$on" "$off" "$delta"
    worst=$(echo "if ($delta > $worst) $delta else $worst" | bc -l)
  done
  per_request=$(echo "$syscalls / $syscall_requests" | bc -l)
  printf 'system calls per request (enforce shim, strace -c -f): %.2f\n' "$per_request"
  printf 'filter cost per request at the dearest call'"'"'s cost: %.2f us = %.2f%% of the shim'"'"'s CPU per request\n' \
    "$(echo "$per_request * $worst / 1000" | bc -l)" \
    "$(echo "100 * $per_request * $worst / 1000 / ${cpu_us[enforce]}" | bc -l)"
  # 5: every start of the run (1 and 2, and the warm-ups) logged one line.
  confine_ms() { grep "shim confined: seccomp $1" "$work/containerd.log" | sed -n 's/.*ms=\([0-9.]*\).*/\1/p'; }
  for mode in enforce off; do
    printf 'confining the shim, seccomp %s: median %.3f ms of %d starts\n' "$mode" \
      "$(confine_ms "$mode" | median_of)" "$(confine_ms "$mode" | wc -l)"
  done
} | tee "$out/isolation.txt"
for f in "$work"/start-* "$work"/rps-* "$work"/cpu-* "$work"/calls-*; do echo "$(basename "$f"): $(tr '\n' ' ' <"$f")"; done \
  >"$out/isolation-runs.txt"

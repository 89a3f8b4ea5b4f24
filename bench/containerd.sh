# Sourced by the benchmarks: a private containerd (own root, state, socket and compile cache under $work) with
# the release shim ($bin, and $extra_path when set) on its PATH, `ctr_` to talk to it, timing helpers, and a
# cleanup trap that leaves nothing behind. Needs $bin set.
source "$(dirname "${BASH_SOURCE[0]}")/leftovers.sh"
work=$(mktemp -d /tmp/wasmhttp-bench-XXXXXX)
containerd_pid=""
cleanup() {
  if [ -n "$containerd_pid" ]; then
    for id in $(ctr_ task ls -q 2>/dev/null); do ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 0.3
    for id in $(ctr_ task ls -q 2>/dev/null); do ctr_ task delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_ container ls -q 2>/dev/null); do ctr_ container rm "$id" >/dev/null 2>&1 || true; done
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
  fi
  kill_leftovers "$work"
  rm -rf "$work"
}
trap cleanup EXIT
ctr_cmd=(ctr --address "$work/containerd.sock" --namespace bench)
# `ctr run`, its fifos in containerd's state (where the confined shim may open them): in /run/containerd/fifo,
# ctr's default, those of a detached run are never removed.
ctr_run=("${ctr_cmd[@]}" run --fifo-dir "$work/state/fifo")
ctr_() { if [ "$1" = run ]; then "${ctr_run[@]}" "${@:2}"; else "${ctr_cmd[@]}" "$@"; fi; }

cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
EOF
PATH="$bin:${extra_path:+$extra_path:}$PATH" WASMHTTP_CACHE_DIR="$work/cache" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 1 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done

source "$(dirname "${BASH_SOURCE[0]}")/median.sh" # median_of, median
# Times come from bash's own clock, `t0=${EPOCHREALTIME/./}` (microseconds): `$(date …)` forks and execs on
# every reading (~1–2 ms here), which would be counted in every figure. `ms_since T0` prints the milliseconds since.
ms_since() { local d=$((${EPOCHREALTIME/./} - $1)); printf '%d.%d\n' $((d / 1000)) $((d % 1000 / 100)); }
remove() { ctr_ task kill -s SIGKILL "$1" >/dev/null 2>&1 || true; ctr_ task delete -f "$1" >/dev/null 2>&1 || true; ctr_ container rm "$1" >/dev/null 2>&1 || true; }
# Whether GET / on 127.0.0.1:PORT answers 200, through bash's /dev/tcp: starting curl costs ~16 ms here,
# which would be counted in every start-up figure.
http_200() {
  local line=""
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  IFS= read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  [[ "$line" == "HTTP/1."?" 200"* ]]
}

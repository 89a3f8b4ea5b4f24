#!/usr/bin/env bash
# What happens to a killed shim's socket: ROUNDS times, start hello with `ctr run -d` on a private containerd,
# SIGKILL its shim server (with LOAD busy loops running, default one per core), and watch its socket: how
# long the dead server's listener keeps accepting connections after the kill, how often containerd's
# `delete` action found it still held by the exiting process (its "removed the shim socket …, still held"
# warning in containerd's log), and whether the socket is gone once containerd reports the task exited.
# Usage: bench/killed-shim.sh [ROUNDS] [LOAD]   (defaults 20 and the number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
load="${2:-$(nproc)}"
bash scripts/setup.sh containerd python3
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli
bin=$PWD/target/release
source bench/containerd.sh # $work, ctr_, a private containerd with the shim on its PATH, cleanup on exit

busy=()
stop_busy() { for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap 'stop_busy; cleanup' EXIT
"$bin/wasmhttp" image build examples/wasm/hello.wasm -t docker.io/bench/hello:1 -o "$work/hello.tar" 2>/dev/null
ctr_ image import "$work/hello.tar" >/dev/null
for _ in $(seq 1 "$load"); do (while :; do :; done) & busy+=($!); done

# watch PID SOCKET: kills PID and prints the milliseconds until SOCKET refused connections (or vanished) and
# until the process was gone, polling every 0.2 ms for at most 10 s.
watch() {
  python3 - "$1" "$2" <<'EOF'
import os, socket, sys, time
pid, path = int(sys.argv[1]), sys.argv[2]
start = time.monotonic()
os.kill(pid, 9)
closed = gone = None
accepted, why = 0, ""
while time.monotonic() - start < 10 and (closed is None or gone is None):
    now = (time.monotonic() - start) * 1000
    if closed is None:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            accepted += 1
        except OSError as e:
            closed, why = now, e.strerror
        finally:
            s.close()
    if gone is None and not os.path.exists(f"/proc/{pid}"):
        gone = now
    time.sleep(0.0002)
print(f"{closed if closed is not None else -1:.1f} {gone if gone is not None else -1:.1f} {accepted} {why}")
EOF
}

left=0
: >"$work/times"
for i in $(seq 1 "$rounds"); do
  id="k$i" port=$((19600 + i))
  ctr_ run -d --runtime io.containerd.wasmhttp.v1 --net-host --env "PORT=$port" docker.io/bench/hello:1 "$id" >/dev/null
  for _ in $(seq 1 200); do http_200 "$port" && break; sleep 0.02; done
  pid=$(pgrep -f "containerd-shim-wasmhttp-v1.*$work.*-id $id" | head -1 || true)
  [ -z "$pid" ] && pid=$(pgrep -nf "containerd-shim-wasmhttp-v1.*$work")
  socket=$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n '/^-socket$/{n;p}' | sed 's|^unix://||')
  watch "$pid" "$socket" | tee -a "$work/times" | tr '\n' ' '
  for _ in $(seq 1 100); do ctr_ task ls 2>/dev/null | grep -q "^$id .*STOPPED" && break; sleep 0.1; done
  ctr_ task delete "$id" >/dev/null 2>&1 || true
  ctr_ container rm "$id" >/dev/null 2>&1 || true
  if [ -e "$socket" ]; then left=$((left + 1)); echo "(socket left)"; else echo; fi
  rm -f "$socket"
done
held=$(grep -c "still held by its exiting process" "$work/containerd.log" || true)
echo "rounds $rounds, $load busy loops: listener closed after median $(awk '{print $1}' "$work/times" | median) ms" \
  "(max $(awk '{print $1}' "$work/times" | sort -n | tail -1)), process gone after median" \
  "$(awk '{print $2}' "$work/times" | median) ms (max $(awk '{print $2}' "$work/times" | sort -n | tail -1));" \
  "delete found the exiting process still listening: $held; sockets left: $left"

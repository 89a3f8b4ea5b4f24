# Sourced by the benchmarks' clean-up traps. kill_leftovers WORK: kills the shims (and brokers) still serving
# the private containerd under WORK, which a run left behind (a CRI pod, a failed run), and what they would
# leave once containerd is gone and no `delete` action runs: their sockets under /run/containerd/s/ (named in
# their bundles' `address` files) and the mounts inside WORK (a sandbox's /dev/shm, snapshots).
kill_leftovers() {
  local work=$1 pid alive left=()
  for pid in $(pgrep -f "(containerd-shim|wasmhttp-broker).*$work" || true); do
    left+=("$pid")
    kill -9 "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${left[@]}"; do
      if [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)" != Z ]; then alive=1; fi
    done
    if [ "$alive" = 0 ]; then break; fi
    sleep 0.1
  done
  if [ "${#left[@]}" -gt 0 ]; then
    find "$work/state" -name address -type f -exec sed 's#^unix://##' {} + 2>/dev/null | xargs -r rm -f
  fi
  awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}

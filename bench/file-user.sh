#!/usr/bin/env bash
# The cost of giving a guest its container user's file rights (SECURITY.md, runtime/src/identity.rs), same
# run: `wasmhttp run` with a directory granted, with and without `--user 65534:65534`, in turns, for
#   hello — requests that touch no file: only the switch of rights on every poll of the guest
#   read  — the probe guest reading a 1 KiB file from the directory on every request
# Usage: bench/file-user.sh [ROUNDS]   (default 3; DURATION=4s per wrk run; results in bench-out/file-user/)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
duration="${DURATION:-4s}"
out=bench-out/file-user; rm -rf "$out"; mkdir -p "$out"
source bench/lib.sh

bash scripts/setup.sh wrk bc
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p wasmhttp-cli
data=$(mktemp -d /tmp/wasmhttp-file-user-XXXXXX)
trap 'rm -rf "$data"' EXIT
head -c 1024 /dev/zero | tr '\0' x >"$data/file"
chmod 755 "$data"; chmod 644 "$data/file"

port=18431
serve() { # GUEST KIND
  local user=(); [ "$2" = user ] && user=(--user 65534:65534)
  exec target/release/wasmhttp run "examples/wasm/$1.wasm" --listen "127.0.0.1:$port" --dir "$data:/data:ro" "${user[@]}"
}
for round in $(seq 1 "$rounds"); do
  for kind in root user; do
    run_wrk "$kind/hello.$round" "$port" 50 serve hello "$kind"
    target_path="/?read=/data/file" run_wrk "$kind/read.$round" "$port" 50 serve probe "$kind"
  done
done

printf '%-8s %14s %14s %10s   (median req/s of %s rounds, wrk -t2 -c50 -d%s)\n' guest "root" "--user" "user/root" "$rounds" "$duration"
for guest in hello read; do
  root=$(round_median root "$guest")
  user=$(round_median user "$guest")
  printf '%-8s %14.0f %14.0f %9.2fx\n' "$guest" "$root" "$user" "$(echo "$user / $root" | bc -l)"
done

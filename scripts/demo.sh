#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts a private containerd, imports the hello image,
# runs it with `ctr run -d --runtime io.containerd.wasmhttp.v1 --net-host` under limits, curls it, shows
# `ctr task ls` and `ctr task metrics`, then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh curl containerd
bash examples/build.sh >/dev/null
# Only what a user installs: the shim and the CLI build with Rust alone. PROTOC names nothing, so a dependency
# that starts needing a protobuf compiler fails this build even where one is installed.
PROTOC=/nonexistent/protoc cargo build --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli
bin="$PWD/target/debug"

port="${PORT:-8080}"
work="$(mktemp -d /tmp/wasmhttp-demo.XXXXXX)"
sock="$work/containerd.sock"
ctr() { command ctr --address "$sock" --namespace wasmhttp-demo "$@"; }
cleanup() {
  ctr task kill -s SIGKILL hello >/dev/null 2>&1 || true
  sleep 0.2
  ctr task delete hello >/dev/null 2>&1 || true
  ctr container rm hello >/dev/null 2>&1 || true
  [ -n "${containerd_pid:-}" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
TOML
PATH="$bin:$PATH" WASMHTTP_CACHE_DIR="$work/cache" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done

"$bin/wasmhttp" image build examples/wasm/hello.wasm -t docker.io/library/wasmhttp-hello:latest -o "$work/hello.tar"
ctr image import "$work/hello.tar" >/dev/null
echo "\$ ctr run -d --runtime io.containerd.wasmhttp.v1 --net-host --memory-limit 67108864 --env PORT=$port ... hello"
ctr run -d --runtime io.containerd.wasmhttp.v1 --net-host --fifo-dir "$work/state/fifo" \
  --memory-limit 67108864 --env "PORT=$port" docker.io/library/wasmhttp-hello:latest hello
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
echo "\$ curl http://127.0.0.1:$port/"
curl -sS --fail "http://127.0.0.1:$port/"
echo "\$ ctr task ls"
ctr task ls
echo "\$ ctr task metrics hello"
ctr task metrics hello

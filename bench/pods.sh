#!/usr/bin/env bash
# Pod benchmark through containerd's CRI (bench/pods.py): pod start latency for runtime handler wasmhttp vs runc,
# same run, and memory per pod with many pods. Uses a private containerd with the CRI plugin, its own CNI bridge
# (whbench0, 10.213.98.0/23), and a Python gRPC client generated from the CRI proto the k8s-cri crate ships.
# Usage: bench/pods.sh [RUNS] [PODS]   (defaults 10 and 100; results also land in bench-out/pods.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
pods="${2:-100}"
out=bench-out; mkdir -p "$out"

bash scripts/setup.sh containerd runc containernetworking-plugins busybox-static python3-venv
bash examples/build.sh >/dev/null
cargo build --release --locked -q -p containerd-shim-wasmhttp -p wasmhttp-cli
cargo fetch --locked -q
proto=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*k8s-cri-0.11*/proto/v1.proto' | head -1)
[ -n "$proto" ] || { echo "bench: the k8s-cri proto was not found in the cargo registry" >&2; exit 1; }

venv=target/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools
fi
gen=target/bench-cri
mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc -I "$(dirname "$proto")" --python_out="$gen" --grpc_python_out="$gen" \
  "$(dirname "$proto")/v1.proto"

work=$(mktemp -d /tmp/wasmhttp-pods-XXXXXX)
netns_before=$(ls /var/run/netns 2>/dev/null || true)
source bench/leftovers.sh
cleanup() {
  kill_leftovers "$work"
  # Pods CRI did not get to remove (the run failed): their namespaces are the ones that appeared since we started.
  for ns in $(ls /var/run/netns 2>/dev/null || true); do
    grep -qx "$ns" <<<"$netns_before" || ip netns del "$ns" 2>/dev/null || true
  done
  ip link del whbench0 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
PYTHONPATH="$gen" "$venv/bin/python" bench/pods.py "$work" "$PWD/target/release" /usr/lib/cni "$runs" "$pods" \
  | tee "$out/pods.txt"

#!/usr/bin/env bash
# Dependency checks: what users build (the shim, the CLI, the benchmarks) must not need protoc, and
# `cargo deny` must pass (advisories from its local database when the network has no advisory source,
# licenses, bans). cargo-deny is installed from crates.io into target/tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

# prost-build and tonic's builders run protoc; ttrpc-codegen (containerd-shim's protos) parses in pure Rust.
needs_protoc=$(cargo tree --locked -e build,normal -p containerd-shim-wasmhttp -p wasmhttp-cli -p wasmhttp-bench \
  | grep -Eo '(prost-build|tonic-build|tonic-prost-build|protoc-bin-[a-z0-9-]+) v[0-9.]+' | sort -u || true)
if [ -n "$needs_protoc" ]; then
  echo "check-deps: the shim, CLI or benchmarks now build-depend on a protobuf compiler: $needs_protoc" >&2
  exit 1
fi
echo "check-deps: the shim, the CLI and the benchmarks build without protoc"

tools="$PWD/target/tools"
if [ ! -x "$tools/bin/cargo-deny" ]; then
  echo "check-deps: installing cargo-deny into $tools" >&2
  cargo install -q --locked cargo-deny --version 0.20.2 --root "$tools"
fi
"$tools/bin/cargo-deny" --all-features check bans licenses sources

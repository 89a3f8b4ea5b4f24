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

# third_party/ holds published crates with one requirement relaxed: nothing else in them may change.
check_vendored() { # DIR TREE-HASH LINE-NUMBER
  local copy
  copy=$(mktemp -d)
  cp -a "third_party/$1/." "$copy"
  sed -i "$3s/^version = \"50.0.1\"$/version = \"=50.0.1\"/" "$copy/Cargo.toml"
  local hash
  hash=$(cd "$copy" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
  rm -rf "$copy"
  if [ "$hash" != "$2" ]; then
    echo "check-deps: third_party/$1 differs from the published crate beyond its one relaxed line (third_party/README.md)" >&2
    exit 1
  fi
}
check_vendored wiggle-50.0.1 f403811695babe3f52cc4e311906ef1f1d61519ed206246dc6d66d5704d813d7 78
check_vendored wiggle-generate-50.0.1 41cefcb8bdc01d59828aed8b5b2b67c0bf17eb2a40c73e1384c741a2aa9f8398 62
echo "check-deps: third_party/ is the published wiggle crates with one requirement relaxed"

tools="$PWD/target/tools"
if [ ! -x "$tools/bin/cargo-deny" ]; then
  echo "check-deps: installing cargo-deny into $tools" >&2
  cargo install -q --locked cargo-deny --version 0.20.2 --root "$tools"
fi
"$tools/bin/cargo-deny" --all-features check bans licenses sources

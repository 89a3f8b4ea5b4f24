#!/usr/bin/env bash
# Installs what building and testing wasmhttp needs on a fresh Debian machine with rustup: the Debian
# packages named as arguments, and the Rust toolchain pinned in rust-toolchain.toml (with its wasm target).
# Idempotent, quiet when everything is already there. Called by the other scripts; safe to run alone.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# rustup does not install a pinned toolchain by itself where RUSTUP_AUTO_INSTALL=0: do it explicitly.
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --print target-list >/dev/null 2>&1 \
  || ! rustup +"$toolchain" target list --installed | grep -qx wasm32-wasip2 \
  || ! rustup +"$toolchain" component list --installed | grep -q '^clippy'; then
  echo "setup: installing Rust $toolchain (minimal, clippy, rustfmt, wasm32-wasip2)" >&2
  rustup toolchain install "$toolchain" --profile minimal -c clippy -c rustfmt -t wasm32-wasip2 >/dev/null
fi

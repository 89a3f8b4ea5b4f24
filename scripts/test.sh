#!/usr/bin/env bash
# Runs every test: installs prerequisites, builds the example guests and the workspace, checks format and
# lints, then runs the unit, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh curl containerd iproute2 protobuf-compiler containernetworking-plugins docker-registry skopeo umoci apache2-utils python3-venv
# A one-off build gains nothing from incremental state but its disk use.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
echo "disk free before the build: $(df -h --output=avail . | tail -1)"
bash examples/build.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked --no-fail-fast

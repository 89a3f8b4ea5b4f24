#!/usr/bin/env bash
# Runs every test: installs prerequisites, builds the example guests and the workspace, checks format, lints,
# dependencies and that what users install builds without protoc, then runs the unit, integration and
# end-to-end tests. The fast lane, `cargo test -p wasmhttp-runtime`, needs none of the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# protobuf-compiler is for the test crate's CRI and containerd clients only (see the check below).
bash scripts/setup.sh curl containerd iproute2 protobuf-compiler containernetworking-plugins docker-registry skopeo umoci apache2-utils python3-venv prometheus
bash scripts/test-venv.sh
# A one-off build gains nothing from incremental state but its disk use.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
echo "disk free before the build: $(df -h --output=avail . | tail -1)"
bash examples/build.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
bash scripts/check-deps.sh
words=$(wc -w < README.md)
if [ "$words" -gt 1500 ]; then echo "README.md has $words words; keep it at 1,500 or fewer (details go to docs/)" >&2; exit 1; fi
# Built in two selections, not `--workspace`: cargo unifies features across what one command selects, and the
# end-to-end test crate's gRPC clients switch on features of crates wasmtime depends on, so a workspace-wide
# build would compile wasmtime a second time next to the copy `scripts/demo.sh` built for the shim and the CLI.
# The end-to-end tests run the binaries this first build leaves in target/debug.
cargo build --locked --workspace --exclude wasmhttp-tests
status=0
# What the suites leave on the machine, which must be nothing: shim sockets, fifos and network namespaces in
# /run, the tests' temp dirs and mounts, live shims and brokers. Compared in CI only: on a node whose own
# containerd runs, its pods come and go meanwhile.
leftovers() {
  local d
  for d in /run/containerd/s /run/containerd/fifo /var/run/netns; do
    if [ -d "$d" ]; then find "$d" -mindepth 1 -maxdepth 1 -printf "$d/%f\n"; fi
  done
  find /tmp -maxdepth 1 -name 'wasmhttp-*' -printf '/tmp/%f\n'
  awk '$2 ~ /wasmhttp-/ {print "mounted " $2}' /proc/self/mounts
  ps -eo stat=,pid=,args= | awk '$1 !~ /^Z/ && ($3 ~ /containerd-shim-wasmhttp-v1$/ || $3 == "wasmhttp-broker") {print "running " $0}'
}
leftovers | sort >target/leftovers-before.txt
cargo test --locked --no-fail-fast --workspace --exclude wasmhttp-tests || status=1
cargo test --locked --no-fail-fast -p wasmhttp-tests || status=1

# The containerd matrix: the suites above ran on Debian's containerd 1.6; these run again on the other
# supported versions, each from its release tarball (scripts/containerd.sh: verified, unpacked once, never
# downloaded; a missing tarball fails here). tests/platforms.rs covers all three itself.
matrix=(
  "2.3.4:containerd exec limits image cri crictl sandbox_api critest isolation confinement observability"
  "1.7.34:containerd exec cri crictl image confinement"
)
for entry in "${matrix[@]}"; do
  version=${entry%%:*}
  suites=()
  for suite in ${entry#*:}; do suites+=(--test "$suite"); done
  bin=$(bash scripts/containerd.sh "$version")
  echo "containerd $version ($bin): ${entry#*:}"
  PATH="$bin:$PATH" WASMHTTP_CONTAINERD_VERSION="$version" \
    cargo test -p wasmhttp-tests --locked --no-fail-fast "${suites[@]}" || status=1
done
if [ "${CI:-}" = true ]; then
  left=$(leftovers | sort | comm -13 target/leftovers-before.txt -)
  if [ -n "$left" ]; then
    echo "the tests left these behind:" >&2
    echo "$left" >&2
    status=1
  fi
fi
exit "$status"

#!/usr/bin/env bash
# Builds every example guest for wasm32-wasip2 and copies the .wasm files to examples/wasm/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../scripts/setup.sh"
mkdir -p "$here/wasm"
for name in hello echo cpu-burn mem-hog trap logger hello-cli probe hello-p3 echo-p3 counter-p3 hello-cli-p3; do
  (cd "$here/$name" && cargo build --quiet --release --target wasm32-wasip2 --target-dir "$here/target")
  # cdylib outputs use the crate's underscore name; binaries keep the package name.
  out="$here/target/wasm32-wasip2/release"
  if [ -f "$out/$name.wasm" ]; then cp "$out/$name.wasm" "$here/wasm/"; else cp "$out/${name//-/_}.wasm" "$here/wasm/$name.wasm"; fi
done
echo "examples built into $here/wasm"

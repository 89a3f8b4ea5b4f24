#!/usr/bin/env bash
# Builds every example guest and copies the .wasm files to examples/wasm/: the Rust ones for wasm32-wasip2, the
# Python one with componentize-py (WASI 0.2 and 0.3) and the JavaScript one with componentize-js (WASI 0.2).
# (componentize-js 0.23.0, the newest release, embeds an engine that speaks wasi:http 0.2.10 only.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../scripts/setup.sh"
mkdir -p "$here/wasm"
for name in hello echo cpu-burn mem-hog trap logger hello-cli probe hello-p3 echo-p3 counter-p3 hello-cli-p3 applets; do
  (cd "$here/$name" && cargo build --quiet --release --target wasm32-wasip2 --target-dir "$here/target")
  # cdylib outputs use the crate's underscore name; binaries keep the package name.
  out="$here/target/wasm32-wasip2/release"
  if [ -f "$out/$name.wasm" ]; then cp "$out/$name.wasm" "$here/wasm/"; else cp "$out/${name//-/_}.wasm" "$here/wasm/$name.wasm"; fi
done

bash "$here/tools/install.sh"
tools="$here/target/tools"
# The WASI worlds come from the wasmtime-wasi-http crate this workspace links, so guests and host agree.
wasi_http="$(cargo metadata --format-version 1 --locked --manifest-path "$here/../Cargo.toml" \
  | python3 -c 'import json, sys, os
print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"] == "wasmtime-wasi-http"))')"

# fresh OUT INPUT…: OUT exists and is newer than every input (the guest builders take 10–60 s each).
fresh() { local out=$1; shift; [ -f "$out" ] && [ -z "$(find "$@" -newer "$out" -not -path "*/__pycache__/*" -print -quit)" ]; }

py="$here/python-http"
if ! fresh "$here/wasm/python-http.wasm" "$py" "$tools/.installed"; then
  "$tools/venv/bin/componentize-py" -q -d "$wasi_http/wit" -w wasi:http/proxy@0.2.12 \
    componentize -p "$py" app_p2 -o "$here/wasm/python-http.wasm"
fi
if ! fresh "$here/wasm/python-http-p3.wasm" "$py" "$tools/.installed"; then
  "$tools/venv/bin/componentize-py" -q -d "$wasi_http/src/p3/wit" -w wasi:http/service@0.3.0 \
    componentize -p "$py" app_p3 -o "$here/wasm/python-http-p3.wasm"
fi

js="$here/js-http"
if ! fresh "$here/wasm/js-http.wasm" "$js" "$tools/.installed"; then
  # componentize-js 0.23's engine exports wasi:http/incoming-handler@0.2.10, and the world must name that
  # version exactly: build against a copy of the linked 0.2.x WIT relabelled 0.2.10. Every 0.2.x is a superset
  # of 0.2.10, and the component imports only what the engine uses, so the host links it as any 0.2 guest.
  wit="$here/target/wit-0.2.10"
  rm -rf "$wit" && cp -r "$wasi_http/wit" "$wit" && chmod -R u+w "$wit"
  sed -i -E 's/0\.2\.1[1-9]/0.2.10/g' "$wit"/*.wit "$wit"/deps/*.wit
  PATH="$tools/venv/bin:$PATH" node "$tools/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
    "$js/app.js" -w "$wit" -n wasi:http/proxy@0.2.10 -o "$here/wasm/js-http.wasm" >/dev/null
fi
echo "examples built into $here/wasm"

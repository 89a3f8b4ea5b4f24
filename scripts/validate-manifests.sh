#!/usr/bin/env bash
# Validates Kubernetes manifests offline with `kubernetes-validate --strict` (PyPI), installed once into a
# virtualenv under target/. Usage: scripts/validate-manifests.sh FILE...   (default: examples/kubernetes/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/kubernetes-validate
mkdir -p target
exec 9>target/.kubernetes-validate.lock
flock 9 # tests call this in parallel: one installs, the others wait
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv" 2>/dev/null || { bash scripts/setup.sh python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate
fi
flock -u 9
if [ $# -eq 0 ]; then set -- examples/kubernetes/*.yaml; fi
exec "$venv/bin/kubernetes-validate" --strict "$@"

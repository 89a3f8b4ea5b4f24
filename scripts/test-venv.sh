#!/usr/bin/env bash
# Installs the tests' own Python packages (the OTLP receiver's protobuf decoder), pinned in
# tests/requirements.txt, into target/test-venv; again only when a pin changes. Used by scripts/test.sh and
# bench/observability.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh python3-venv
if [ ! -f target/test-venv/.installed ] || [ tests/requirements.txt -nt target/test-venv/.installed ]; then
  rm -rf target/test-venv
  python3 -m venv target/test-venv
  target/test-venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
  touch target/test-venv/.installed
fi

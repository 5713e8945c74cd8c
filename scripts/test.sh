#!/usr/bin/env bash
# Sets everything up on a fresh Debian/Ubuntu machine with python3, then runs the test suite:
# a virtual environment in .venv with requirements-dev.txt, and pytest over tests/ on all cores.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k inception_v3`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian ships venv/ensurepip separately from python3.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  as_root apt-get update -q && as_root apt-get install -y -q python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

workers=$(nproc 2>/dev/null || echo 2)
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadgroup --durations=15 tests "$@"

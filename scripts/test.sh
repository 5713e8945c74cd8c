#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs pytest over tests/ on all cores.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k inception_v3`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workers=$(nproc 2>/dev/null || echo 2)
exec .venv/bin/python -m pytest -q -n "$workers" --durations=15 tests "$@"

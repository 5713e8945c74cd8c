#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs pytest over tests/ on all cores.
# Tests go to the workers as they free up (worksteal: a few long ones no longer leave a worker idle at
# the end). `--quick` first: the quick tier, which leaves out the tests marked `slow` (every module keeps
# some).
# Further arguments go to pytest (e.g. `bash scripts/test.sh -k inception_v3`).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [ "${1:-}" = --quick ]; then
  shift
  tier=(-m 'not slow')
fi
bash scripts/setup.sh
workers=$(nproc 2>/dev/null || echo 2)
exec .venv/bin/python -m pytest -q -n "$workers" --dist worksteal --durations=15 "${tier[@]}" tests "$@"

#!/usr/bin/env bash
# Run the CPU test suite, every tier (GPU tests are marked `gpu` and skipped without CUDA).
# The fast loop while working: scripts/test.sh -m "not slow" (skips the tests on the real teacher).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh   # the virtualenv setup.sh installed into, if it made one
python3 -m pytest -q tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"

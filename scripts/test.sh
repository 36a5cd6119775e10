#!/usr/bin/env bash
# README command 2: set up, then the test suite (README "Two commands" has the measured time).
#   bash scripts/test.sh            the default suite (everything not marked slow)
#   bash scripts/test.sh --slow     only the slow checks (listed in docs/testing.md)
#   bash scripts/test.sh --all      both
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export TRITON_INTERPRET=1   # the Triton kernels run in the interpreter on CPU (set before import)
marker=("-m" "not slow")
case "${1:-}" in
  --slow) marker=("-m" "slow"); shift ;;
  --all) marker=("-m" "slow or not slow"); shift ;;
esac
# Two workers (pytest-xdist), each taking one test file at a time: a file's module fixtures (shared
# training runs) are built once, and while one worker waits on a launch the other computes.
# TEST_WORKERS=0 runs in this process. pytest exits 5 when no test ran; set -e makes that a failure.
python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "${marker[@]}" "$@"

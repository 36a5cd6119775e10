#!/usr/bin/env bash
# Create ./.venv with the pinned dependency set (requirements.txt) and the package in editable mode.
# Idempotent: a stamp holding the requirements' hash skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)'; then
  echo "vitpose-scale needs Python >= 3.10 (found $("$PY" --version))" >&2; exit 1
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  echo "== setting up .venv with $("$PY" --version) (torch CUDA build, runs on CPU too; ~6 GB, a few minutes)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
# DeepSpeed's CPU ops, compiled once into the project's cache (scripts/build_ops.py says why)
(source scripts/env.sh && python scripts/build_ops.py)

#!/usr/bin/env bash
# The first thing to run on a GPU machine (docs/full_scale.md, "First run on a GPU"): set up, then
# bench/gpu_check.py: environment, the Triton attention kernel at every shipped shape and dtype
# against float64 (every tile configuration once), two G blocks Triton vs SDPA, DeepSpeed ZeRO-3
# bf16 training on 1 GPU and on 2 when present. About 10 minutes; exit code non-zero on any failure.
#   bash scripts/gpu_check.sh                     the check, table on stdout
#   bash scripts/gpu_check.sh --out runs/gpu_check.json    also as JSON and markdown
#   bash scripts/gpu_check.sh --dry-run           the same code paths on the CPU (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python bench/gpu_check.py "$@"

#!/usr/bin/env bash
# Mutation testing (mutmut 3) of one module group against its fast tests. Not part of .ci/run: minutes per module.
#   bash scripts/mutation.sh optim          one target (list: bash scripts/mutation.sh --list)
#   bash scripts/mutation.sh optim --fresh  forget the cached verdicts of that target first
# Each target gets its own work dir .mutation/<target>/ (gitignored) holding a generated setup.cfg [mutmut]
# section, so targets never share a cache. Results: the summary printed at the end, details with
#   cd .mutation/<target> && mutmut results / mutmut show <mutant name>
# Scores measured and the surviving mutants judged harmless: docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# target -> "<files to mutate, space separated>|<test files, space separated>[,<extra pytest argument>]..."
declare -A TARGETS=(
  [optim]="vitpose_scale/engine/optim.py|tests/test_engine.py,-k,lr or layer or schedule or decay or optim"
  [vit]="vitpose_scale/models/vit.py|tests/test_model.py tests/test_interop.py"
  [interop]="vitpose_scale/models/interop.py|tests/test_interop.py tests/test_model.py tests/test_export.py"
  [transforms]="vitpose_scale/data/transforms.py|tests/test_transforms.py tests/test_data.py tests/test_pipeline_equivalence.py tests/test_jpeg_window.py"
  [coco]="vitpose_scale/data/coco.py|tests/test_coco_loading.py tests/test_transforms.py tests/test_data.py tests/test_pipeline_equivalence.py tests/test_multi_dataset.py tests/test_recipe_configs.py tests/test_evaluate_cli.py tests/test_testdev.py tests/test_hardening.py tests/test_jpeg_window.py tests/test_image_grouping.py"
  [decode]="vitpose_scale/eval/decode.py|tests/test_decode.py tests/test_coco_eval.py"
  [oks]="vitpose_scale/eval/oks.py|tests/test_coco_eval.py tests/test_decode.py"
  [postprocess]="vitpose_scale/eval/postprocess.py|tests/test_coco_eval.py tests/test_decode.py"
  [coco_eval]="vitpose_scale/eval/coco_eval.py|tests/test_coco_eval.py"
  [eval]="vitpose_scale/eval/*.py|tests/test_coco_eval.py tests/test_decode.py tests/test_ensemble.py tests/test_testdev.py tests/test_evaluate_cli.py tests/test_infer.py"
  # eval/ in two halves that together mutate every file once: the evaluator and decoding against their
  # fast tests, and the modules that drive a model against the model-level tests (seconds each), so a
  # surviving evaluator mutant does not also run every model evaluation.
  [eval_core]="vitpose_scale/eval/coco_eval.py vitpose_scale/eval/oks.py vitpose_scale/eval/decode.py vitpose_scale/eval/synthetic_eval.py|tests/test_coco_eval.py tests/test_decode.py tests/test_synthetic_eval.py"
  [eval_model]="vitpose_scale/eval/runner.py vitpose_scale/eval/ensemble.py vitpose_scale/eval/testdev.py vitpose_scale/eval/postprocess.py|tests/test_coco_eval.py tests/test_decode.py tests/test_ensemble.py tests/test_testdev.py tests/test_evaluate_cli.py tests/test_infer.py"
)

if [[ "${1:-}" == "--list" || -z "${1:-}" ]]; then
  for t in "${!TARGETS[@]}"; do echo "$t: ${TARGETS[$t]%%|*}  <-  ${TARGETS[$t]#*|}"; done | sort
  exit 0
fi
target=$1
[[ -n "${TARGETS[$target]:-}" ]] || { echo "unknown target '$target' (expected one of: ${!TARGETS[*]})" >&2; exit 2; }
files=${TARGETS[$target]%%|*}
tests=${TARGETS[$target]#*|}

source scripts/env.sh
export TRITON_INTERPRET=1
work=$ROOT/.mutation/$target
[[ "${2:-}" == "--fresh" ]] && rm -rf "$work"
mkdir -p "$work"
# The work dir sees the project through symlinks; mutmut copies them (followed) into $work/mutants/.
for p in vitpose_scale tests data configs bench launch pytest.ini; do ln -sfn "$ROOT/$p" "$work/$p"; done

{
  echo "[mutmut]"
  echo "source_paths = vitpose_scale"
  echo "only_mutate ="
  for f in $files; do echo "    $f"; done
  echo "also_copy ="
  printf '    %s\n' data configs bench launch pytest.ini  # what the tests read next to the package
  # Fast tests only: slow and multi-process tests never run under mutation.
  printf '%s\n' "pytest_add_cli_args =" "    -p" "    no:cacheprovider" "    -m" "    not slow and not distributed" "    -x" "    -q"
  echo "pytest_add_cli_args_test_selection ="
  # One argument a line (setup.cfg lists); test files space separated, then ,-separated extra arguments.
  IFS=',' read -r -a extra <<< "$tests"
  for a in ${extra[0]}; do echo "    $a"; done
  for a in "${extra[@]:1}"; do echo "    $a"; done
  echo "process_isolation = forkserver"
  echo "use_git_change_detection = false"
} > "$work/setup.cfg"

cd "$work"
# mutmut regenerates changed .py files only: refresh the C sources the package compiles on first use.
if [[ -d mutants/vitpose_scale ]]; then
  (cd "$ROOT" && find vitpose_scale -name '*.c' -exec cp {} "$work/mutants/{}" \;)
fi
# The progress spinner goes to run.log (it rewrites one line with \r); the final counts are printed below.
nice -n 19 mutmut run --max-children "${MUTATION_JOBS:-2}" > run.log 2>&1 || { tail -c 3000 run.log; exit 1; }
tr '\r' '\n' < run.log | grep -E 'done in|mutations/second' || true
nice -n 19 mutmut export-cicd-stats >/dev/null 2>&1 || true
python - <<'EOF'
import json, pathlib
s = json.loads(pathlib.Path("mutants/mutmut-cicd-stats.json").read_text())
killed = s.get("killed", 0) + s.get("caught_by_type_check", 0)
considered = killed + s.get("survived", 0) + s.get("timeout", 0) + s.get("suspicious", 0) + s.get("no_tests", 0)
print(json.dumps(s))
timeout_killed = killed + s.get("timeout", 0)
print(f"score (killed / (killed + survived + no_tests + timeout + suspicious)) = {killed}/{considered}"
      f" = {100 * killed / max(1, considered):.1f} %; counting timeouts as killed: {100 * timeout_killed / max(1, considered):.1f} %")
EOF

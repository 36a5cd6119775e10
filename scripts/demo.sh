#!/usr/bin/env bash
# README command 1: set up, then a 2-rank DeepSpeed ZeRO-3 training run on CPU (tiny preset, synthetic
# people + the bundled COCO sample), then 2-rank distributed evaluation printing AP, a picture of
# predicted skeletons and a loss/AP plot.  Extra arguments go to the trainer as overrides (k=v).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
CONFIG=${CONFIG:-configs/demo.yaml}  # configs/demo_aic.yaml: the same on a second skeleton (AIC's 14 joints)
OUT=${OUT:-runs/$(basename "$CONFIG" .yaml)}
sets=(--set "train.output_dir=$OUT")
for kv in "$@"; do sets+=(--set "$kv"); done
rm -rf "$OUT"

echo "== untrained model: distributed evaluation (2 ranks)"
python - "$OUT" "$CONFIG" <<'PY'
import sys
from vitpose_scale.config import load_config
from vitpose_scale.models.interop import export_official
from vitpose_scale.models.pose import build_pose_model
import torch
cfg = load_config(sys.argv[2])
torch.manual_seed(cfg.train.seed)
export_official(build_pose_model(cfg.model), f"{sys.argv[1]}/untrained.pth")
PY
python -c "import sys; from vitpose_scale.config import load_config, task_configs; from vitpose_scale.data.coco import build_datasets; [build_datasets(c) for _, c in task_configs(load_config(sys.argv[1]))]" "$CONFIG"
torchrun --nproc_per_node 2 --master_port 29511 launch/evaluate.py --config "$CONFIG" \
  --checkpoint "$OUT/untrained.pth" --out "$OUT/eval_untrained" "${sets[@]}" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*\*"

echo "== training: deepspeed --num_gpus 2, ZeRO-3, activation checkpointing"
# The launcher warns "Unable to find hostfile" whenever no hostfile lists machines: on one machine
# that is expected (with a hostfile it would first require passwordless ssh to the listed host), so
# the warning is replaced by this line.
echo "(no DeepSpeed hostfile: one machine, local ranks only, as intended)"
# One thread per rank: two ranks on two cores (torch would start one thread per core in each).
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} deepspeed --num_gpus 2 --master_port 29512 launch/train.py --config "$CONFIG" "${sets[@]}" 2>&1 \
  | grep -v "\[INFO\]\|^W1\|FutureWarning\|return func\|UserWarning\|warnings.warn\|Unable to find hostfile"

# A multi-task config (data.tasks: configs/demo_multitask.yaml) is evaluated once per dataset, with
# that dataset's head, experts, validation set and metric, then split into one plain ViTPose per
# dataset (what the official tools/model_split.py writes), which is evaluated again.
DATASETS=$(python -c "import sys; from vitpose_scale.config import load_config, task_names; print(' '.join(task_names(load_config(sys.argv[1]))))" "$CONFIG")
evaluate() {  # evaluate CHECKPOINT OUTDIR [--dataset NAME]
  torchrun --nproc_per_node 2 --master_port 29513 launch/evaluate.py --config "$CONFIG" \
    --checkpoint "$1" --out "$2" "${@:3}" "${sets[@]}" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*\*"
}
if [ -z "$DATASETS" ]; then
  echo "== trained model: distributed evaluation (2 ranks)"
  evaluate "$OUT/best.pth" "$OUT/eval"
else
  for name in $DATASETS; do
    echo "== trained model, dataset $name: distributed evaluation (2 ranks)"
    evaluate "$OUT/best.pth" "$OUT/eval_$name" --dataset "$name"
    echo "== split: the plain ViTPose of dataset $name, evaluated again"
    python -m vitpose_scale.cli split --checkpoint "$OUT/best.pth" --config "$CONFIG" --dataset "$name" \
      --out "$OUT/split_$name.pth"
    evaluate "$OUT/split_$name.pth" "$OUT/eval_split_$name" --dataset "$name"
  done
fi

python -m vitpose_scale.cli plot "$OUT"  # loss, lr and every dataset's AP: $OUT/training_curves.png
python - "$OUT" "$CONFIG" $DATASETS <<'PY'
import json, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[3:]
stats = lambda d: json.loads((out / d / "stats.json").read_text())
before = stats("eval_untrained")
if not names:
    after = stats("eval")
    print(f"\nAP on held-out synthetic people: untrained {before['AP']:.3f} -> trained {after['AP']:.3f} "
          f"(AP50 {before['AP50']:.3f} -> {after['AP50']:.3f})")
    print(f"skeletons: {out}/eval/predictions.png   curves: {out}/training_curves.png")
else:
    print(f"\nuntrained, first dataset: AP {before['AP']:.3f}")
    for name in names:
        after, split = stats(f"eval_{name}"), stats(f"eval_split_{name}")
        print(f"{name}: trained AP {after['AP']:.3f} (AP50 {after['AP50']:.3f}); split into a plain ViTPose: "
              f"AP {split['AP']:.3f}   skeletons: {out}/eval_{name}/predictions.png")
    import cv2  # both skeletons in one picture: each head's predictions on its own validation people
    panels = [cv2.imread(str(out / f"eval_{name}" / "predictions.png")) for name in names]
    height = min(p.shape[0] for p in panels)
    panels = [cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height)) for p in panels]
    cv2.imwrite(str(out / "skeletons.png"), cv2.hconcat(panels))
    print(f"every head's skeleton side by side: {out}/skeletons.png   curves: {out}/training_curves.png")
PY

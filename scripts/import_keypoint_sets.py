"""Write vitpose_scale/keypoints/sets/*.json from the official mmpose 0.x dataset-info files.

    python scripts/import_keypoint_sets.py --src tests/data/mmpose_dataset_info

``--src`` is a folder holding ``configs/_base_/datasets/{coco,aic,mpii,crowdpose,ochuman,
coco_wholebody,ap10k}.py`` of github.com/ViTAE-Transformer/ViTPose (a copy of them, with the commit
they come from, is kept in tests/data/mmpose_dataset_info). The files are parsed, never run.
What the dataset-info files do not hold (parts, how each set is scored) is written here from the
official dataset classes (mmpose/datasets/datasets/...), named beside each value.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vitpose_scale.keypoints import SETS_DIR
from vitpose_scale.keypoints.mmpose_info import read_dataset_info, spec_fields

# "reference": the implementation whose numbers the set's official results were computed with:
# mmpose 0.x scores every OKS set with xtcocotools; COCO is scored as pycocotools (the COCO
# server's), which gives the same numbers up to the last bit of four sigmas.
OKS = {"metric": "oks", "use_area": True, "mode": "keypoints", "reference": "xtcocotools"}
# set name -> (dataset-info file, parts, evaluation), from the official dataset classes:
SETS = {
    "coco": ("coco", {}, {**OKS, "reference": "pycocotools"}),  # TopDownCocoDataset: COCOeval(..., 'keypoints', sigmas)
    "ochuman": ("ochuman", {}, OKS),  # TopDownOCHumanDataset inherits the COCO evaluation
    # TopDownAicDataset: COCOeval(..., 'keypoints', sigmas, use_area=False)
    "aic": ("aic", {}, {**OKS, "use_area": False}),
    # TopDownCrowdPoseDataset: COCOeval(..., 'keypoints_crowd', sigmas, use_area=False)
    "crowdpose": ("crowdpose", {}, {**OKS, "use_area": False, "mode": "keypoints_crowd"}),
    # TopDownCocoWholeBodyDataset: body_num 17, foot_num 6, face_num 68, left/right_hand_num 21
    "coco_wholebody": ("coco_wholebody",
                       {"body": [0, 17], "foot": [17, 23], "face": [23, 91], "lefthand": [91, 112],
                        "righthand": [112, 133]},
                       {**OKS, "mode": "wholebody"}),
    # AnimalAP10KDataset: COCOeval(..., 'keypoints', sigmas), one category per species
    "ap10k": ("ap10k", {}, OKS),
    "apt36k": ("ap10k", {}, OKS),  # the official APT-36K configs use ap10k.py and AnimalAP10KDataset
    # TopDownMpiiDataset.evaluate: PCKh from mpii_gt_val.mat
    "mpii": ("mpii", {}, {"metric": "pckh"}),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="folder of the official dataset-info .py files")
    ap.add_argument("--out", default=str(SETS_DIR))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (info_file, parts, evaluation) in SETS.items():
        fields = spec_fields(read_dataset_info(Path(args.src) / f"{info_file}.py"))
        fields.pop("dataset_name")
        if name == "coco":
            # COCO is scored as pycocotools builds its sigmas (np.array([.26, ...]) / 10), which
            # differs from the literal 0.026 in the last bit for four joints: keep pycocotools' floats.
            fields["sigmas"] = (np.array([round(s * 10, 10) for s in fields["sigmas"]]) / 10.0).tolist()
        spec = {"name": name, **fields, "parts": parts, "evaluation": evaluation,
                "source": f"mmpose 0.x configs/_base_/datasets/{info_file}.py (official ViTPose repository)"}
        (out / f"{name}.json").write_text(json.dumps(spec, indent=1) + "\n")
        print(f"{name}: {len(fields['names'])} joints -> {out / f'{name}.json'}")


if __name__ == "__main__":
    main()

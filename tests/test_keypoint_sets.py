"""Keypoint sets: every shipped spec equals the official mmpose 0.x dataset-info file it comes from,
the files are read without running them, and a set is chosen by config and used everywhere."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch_env import launcher_env
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.jsonl import read_jsonl
from vitpose_scale.keypoints import KeypointSetError, KeypointSpec, available, get_spec
from vitpose_scale.keypoints.mmpose_info import DatasetInfoError, read_dataset_info

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "data" / "mmpose_dataset_info"
# set -> the official file it is transcribed from (APT-36K's configs use ap10k.py)
SOURCES = {"coco": "coco", "aic": "aic", "mpii": "mpii", "crowdpose": "crowdpose", "ochuman": "ochuman",
           "coco_wholebody": "coco_wholebody", "ap10k": "ap10k", "apt36k": "ap10k"}


def test_the_eight_sets_of_the_vitpose_family_are_shipped():
    assert set(SOURCES) <= set(available())


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_spec_equals_the_official_dataset_info_file(name):
    """Field by field against the official file, read independently of the import script: names in
    id order, flip pairs from 'swap', upper/lower body from 'type', links by joint name, colours,
    joint weights and sigmas."""
    info = read_dataset_info(OFFICIAL / f"{SOURCES[name]}.py")
    spec = get_spec(name)
    kp = info["keypoint_info"]
    assert sorted(kp) == list(range(len(kp))) and all(kp[i]["id"] == i for i in kp)
    assert spec.names == tuple(kp[i]["name"] for i in range(len(kp)))
    for i in kp:
        swap = kp[i]["swap"]
        partner = spec.names.index(swap) if swap else i
        assert spec.flip_index[i] == partner, (name, kp[i]["name"])
        assert (i in spec.upper_body_ids) == (kp[i]["type"] == "upper")
        assert (i in spec.lower_body_ids) == (kp[i]["type"] == "lower")
        assert spec.keypoint_colors[i] == tuple(kp[i]["color"])
    links = info["skeleton_info"]
    assert len(spec.skeleton) == len(links)
    for i, link in enumerate(links[j] for j in sorted(links)):
        a, b = spec.skeleton[i]
        assert (spec.names[a], spec.names[b]) == tuple(link["link"]) and spec.link_colors[i] == tuple(link["color"])
    assert spec.joint_weights == tuple(float(w) for w in info["joint_weights"])
    if name == "coco":  # pycocotools' floats (np.array([.26, ...]) / 10): equal to the literals to 1 ulp
        np.testing.assert_allclose(spec.sigmas, info["sigmas"], rtol=1e-15, atol=0)
        from vitpose_scale.eval.oks import COCO_SIGMAS
        assert np.array_equal(spec.sigma_array, COCO_SIGMAS)
    else:
        assert spec.sigmas == tuple(float(s) for s in info["sigmas"])


def test_parts_and_how_each_set_is_scored_follow_the_official_dataset_classes():
    wb = get_spec("coco_wholebody")
    # TopDownCocoWholeBodyDataset: body 17, foot 6, face 68, left hand 21, right hand 21
    assert wb.parts == {"body": (0, 17), "foot": (17, 23), "face": (23, 91), "lefthand": (91, 112),
                        "righthand": (112, 133)}
    assert wb.names[17] == "left_big_toe" and wb.names[91] == "left_hand_root" and wb.names[112] == "right_hand_root"
    assert [get_spec(n).evaluation.get("use_area") for n in ("aic", "crowdpose")] == [False, False]
    assert get_spec("crowdpose").evaluation["mode"] == "keypoints_crowd"
    assert all(get_spec(n).evaluation == {"metric": "oks", "use_area": True, "mode": "keypoints",
                                          "reference": "xtcocotools"} for n in ("ochuman", "ap10k", "apt36k"))
    assert get_spec("coco").evaluation["reference"] == "pycocotools"
    assert get_spec("mpii").evaluation == {"metric": "pckh"}


def test_a_dataset_info_file_is_parsed_never_run(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.py"
    bad.write_text(f"dataset_info = dict(name=__import__('os').system('touch {marker}'))\n")
    with pytest.raises(DatasetInfoError, match=r"evil\.py:1: Call is not a literal"):
        read_dataset_info(bad)
    assert not marker.exists()
    ok = tmp_path / "ok.py"
    ok.write_text("dataset_info = dict(a=[1.] * 3, b=(-1, 'x'), c={0: dict(d=[])})\n")
    assert read_dataset_info(ok) == {"a": [1.0] * 3, "b": (-1, "x"), "c": {0: {"d": []}}}


def test_an_unknown_set_names_the_choices_and_a_contradictory_spec_is_refused():
    with pytest.raises(KeypointSetError, match=r"keypoint set 'cocoo' does not exist; expected one of \['aic', "):
        get_spec("cocoo")
    with pytest.raises(KeypointSetError, match=r"does not exist"):
        get_spec("../coco")  # not a path either
    with pytest.raises(KeypointSetError, match=r"'bad' \(2 joints\): a flip pair is out of range; 1 sigmas"):
        KeypointSpec(name="bad", names=("a", "b"), flip_pairs=((0, 2),), upper_body_ids=(), lower_body_ids=(),
                     joint_weights=(1.0, 1.0), sigmas=(0.1,), skeleton=(), keypoint_colors=((0, 0, 0),) * 2,
                     link_colors=())


def test_the_config_chooses_the_set_and_the_head_follows_it():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["data.keypoint_set=aic"])
    assert cfg.model.num_keypoints == 14
    with pytest.raises(ConfigError, match=r"data\.keypoint_set: keypoint set 'nope' does not exist; expected one of"):
        load_config(ROOT / "configs" / "demo.yaml", ["data.keypoint_set=nope"])
    with pytest.raises(ConfigError, match=r"model\.num_keypoints: got 17, but data\.keypoint_set 'mpii' has 16 joints"):
        load_config(ROOT / "configs" / "demo.yaml", ["data.keypoint_set=mpii", "model.num_keypoints=17"])


def test_a_bad_set_name_is_one_line_and_exit_2(capsys):
    from vitpose_scale.cli import main

    assert main(["plan", "--config", str(ROOT / "configs" / "demo.yaml"), "--gpus", "1",
                 "--set", "data.keypoint_set=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keypoint set 'nope' does not exist" in err[0]


# ---------------------------------------------------------------- a second skeleton, end to end --
@pytest.fixture(scope="module")
def aic_root(tmp_path_factory):
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    return generate_synthetic_coco(tmp_path_factory.mktemp("aic"), 6, 2, seed=3, progress=False, keypoints="aic")


def test_the_synthetic_figure_is_annotated_with_the_chosen_sets_joints(aic_root, tmp_path):
    """Same pictures, other joints: AIC's shoulders, hips ... are COCO's; head top above the eyes and
    neck between the shoulders."""
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    coco_root = generate_synthetic_coco(tmp_path / "coco", 6, 2, seed=3, progress=False)
    aic = json.loads((aic_root / "annotations" / "person_keypoints_train.json").read_text())
    coco = json.loads((coco_root / "annotations" / "person_keypoints_train.json").read_text())
    assert aic["categories"][0]["keypoints"] == list(get_spec("aic").names)
    assert [a["bbox"] for a in aic["annotations"]] == [a["bbox"] for a in coco["annotations"]]
    a_names, c_names = get_spec("aic").names, get_spec("coco").names
    for a, c in zip(aic["annotations"], coco["annotations"]):
        ka, kc = np.reshape(a["keypoints"], (-1, 3)), np.reshape(c["keypoints"], (-1, 3))
        for j, name in enumerate(a_names[:12]):
            assert np.array_equal(ka[j], kc[c_names.index(name)])
        top, neck = ka[12], ka[13]
        shoulders = kc[[5, 6]]
        if top[2] and kc[1][2]:
            assert top[1] < kc[1][1]  # above the left eye
        if neck[2] and shoulders[:, 2].all():
            np.testing.assert_allclose(neck[:2], shoulders[:, :2].mean(0), atol=0.02 * a["bbox"][3] + 1)


def test_training_samples_flip_with_the_sets_pairs(aic_root):
    import dataclasses

    from vitpose_scale.config import DataConfig
    from vitpose_scale.data.coco import TopDownCocoDataset

    cfg = dataclasses.replace(DataConfig(), flip_prob=1.0, half_body_prob=0.0, rot_factor=0.0, scale_factor=0.0)
    ds = TopDownCocoDataset(aic_root, "annotations/person_keypoints_train.json", "train", cfg, (128, 96), "aic")
    rec = ds.records[0]
    plan = ds.transform.plan(rec["size"], rec["joints"], rec["center"], rec["scale"], ds.augmentation_rng(0))
    w = rec["size"][1]
    j = rec["joints"]
    # right_shoulder (0) of the mirrored image is the left_shoulder (3) mirrored; head top stays itself
    for a, b in ((0, 3), (3, 0), (12, 12), (13, 13)):
        assert plan["joints"][a, 0] == w - 1 - j[b, 0] and plan["joints"][a, 2] == j[b, 2]


def test_drawing_uses_the_sets_skeleton_and_colours():
    from vitpose_scale.visualize import draw_skeletons

    spec = get_spec("aic")
    person = np.zeros((14, 3))
    person[12] = (30, 10, 1.0)  # head top
    person[13] = (30, 70, 1.0)  # neck: AIC links them; COCO has no such joints
    out = draw_skeletons(np.zeros((100, 60, 3), np.uint8), [person], "aic", thickness=5)
    link = spec.skeleton.index((12, 13))
    assert tuple(out[40, 30]) == tuple(spec.link_colors[link][::-1])  # BGR of the set's RGB colour
    with pytest.raises(ValueError, match=r"a person with 14 keypoints; the keypoint set 'coco' has 17"):
        draw_skeletons(np.zeros((10, 10, 3), np.uint8), [person], "coco")


def _train_aic(out: Path, data: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """configs/demo_aic.yaml in one process (no DeepSpeed launch: the set is what is under test)."""
    sets = [f"train.output_dir={out}", f"data.root={data}", "parallel.backend=none",
            "model.activation_checkpointing=false", "train.save_every=100000", *extra]
    args = [sys.executable, "launch/train.py", "--config", "configs/demo_aic.yaml"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_second_skeleton_trains_and_evaluates_end_to_end(tmp_path):
    """AIC's 14 joints on synthetic people, through the real trainer: the evaluation scores with the
    set's metric (flip test on, with AIC's pairs), the figure draws AIC's skeleton, infer reads it."""
    out = tmp_path / "run"
    _train_aic(out, tmp_path / "data", "data.synthetic_train=8", "data.synthetic_val=2", "train.max_steps=4",
               "train.eval_every=1000", "train.batch_size=4", "eval.flip_test=true", "model.image_size=[128,96]")
    record = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"][-1]
    assert {"AP", "AP50", "AR"} <= set(record) and 0.0 <= record["AP"] <= 1.0
    results = json.loads(next((out / "eval").glob("results_step*.json")).read_text())
    assert results and all(len(r["keypoints"]) == 3 * 14 for r in results)
    assert (out / "eval").glob("predictions_step*.png")
    import torch

    head = torch.load(out / "best.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert head["keypoint_head.final_layer.weight"].shape[0] == 14


@pytest.mark.slow
def test_a_second_skeleton_learns_ap_rises_from_zero_on_held_out_people(tmp_path):
    """500 steps of configs/demo_aic.yaml (one process, about 75 s on 2 cores): AP on held-out
    synthetic people rises from the untrained 0 (AIC's sigmas are 2-7x tighter than COCO's, so its AP
    stays far below the COCO demo's; measured 0.0027 AP / 0.020 AP50 / 0.015 AR at step 500)."""
    out = tmp_path / "run"
    _train_aic(out, tmp_path / "data", "data.synthetic_train=400", "data.synthetic_val=30", "train.max_steps=500",
               "train.eval_every=250", "eval.flip_test=false")
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"]
    assert evals[-1]["step"] == 500
    assert evals[-1]["AP50"] > 0.005 and evals[-1]["AR"] > 0.005
    assert evals[-1]["AP50"] > evals[0]["AP50"]

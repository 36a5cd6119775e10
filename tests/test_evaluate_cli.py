"""`vitpose-scale eval` end to end: a briefly trained model, exported to the official format and
evaluated again through the checkpoint path, gives the trainer's own evaluation to the last digit;
distributed evaluation over uneven shards equals one rank exactly. The runner (eval/runner.py) on its own:
every rank forwards as often as the longest shard, and the configured rescoring and OKS-NMS thresholds."""
import datetime
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from launch_env import free_port, launcher_env  # noqa: E402
from vitpose_scale.config import Config, DataConfig, from_dict
from vitpose_scale.data.loader import ShardSampler
from vitpose_scale.jsonl import read_jsonl
from vitpose_scale.eval.coco_eval import STAT_NAMES, format_stats
from vitpose_scale.eval.postprocess import postprocess_people
from vitpose_scale.eval.runner import evaluate_model, predict_people
from vitpose_scale.evaluate import build_eval_set

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 4


def _sample_config(coco_sample, out) -> dict:
    """The tiny preset with the classic head (BatchNorm buffers travel through the export too),
    trained and evaluated on the bundled sample, one process, no DeepSpeed."""
    return {
        "model": {"preset": "tiny", "image_size": [64, 48], "head": "classic", "head_channels": 32},
        "data": {"kind": "coco", "root": str(coco_sample), "train_ann": "test_coco.json", "train_images": ".",
                 "val_ann": "test_coco.json", "val_images": ".", "num_workers": 0},
        "optim": {"lr": 2e-3, "warmup_iters": 1},
        "parallel": {"backend": "none", "precision": "fp32"},
        "train": {"max_steps": STEPS, "batch_size": 4, "log_every": 1, "eval_every": 1000, "save_every": 1000,
                  "output_dir": str(out)},
        "eval": {"batch_size": 6},
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, coco_sample):
    """A few training steps on the bundled sample; the trainer evaluates once at the end, then
    writes final.pth in the official layout."""
    out = tmp_path_factory.mktemp("run")
    config = out / "train.yaml"
    config.write_text(json.dumps(_sample_config(coco_sample, out)))
    proc = subprocess.run([sys.executable, "launch/train.py", "--config", str(config)], cwd=ROOT,
                          env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def test_eval_command_reproduces_the_trainers_evaluation_from_the_exported_checkpoint(trained_run):
    evals = [r for r in read_jsonl(trained_run / "metrics.jsonl") if r.get("kind") == "eval"]
    assert evals and evals[-1]["step"] == STEPS
    trainer_stats = [evals[-1][name] for name in STAT_NAMES]
    out = trained_run / "reeval"
    proc = subprocess.run([str(BIN / "vitpose-scale"), "eval", "--config", str(trained_run / "config.yaml"),
                           "--checkpoint", str(trained_run / "final.pth"), "--out", str(out)],
                          cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The CLI prints the ten COCO stats, as pycocotools formats them.
    printed = [line for line in proc.stdout.splitlines() if line.startswith(" Average ")]
    assert len(printed) == 10
    stats = json.loads((out / "stats.json").read_text())
    assert [stats[name] for name in STAT_NAMES] == trainer_stats  # to the last digit
    assert printed == format_stats(trainer_stats)
    # ... because every keypoint is the same: the export loses nothing.
    trainer_results = json.loads((trained_run / "eval" / f"results_step{STEPS:08d}.json").read_text())
    assert json.loads((out / "results.json").read_text()) == trainer_results
    assert len(trainer_results) == 12


def test_every_weight_layout_evaluates_alike_including_the_training_checkpoint_directory(trained_run, tmp_path):
    """One reader for every command: the run's checkpoints/step_N directory (ZeRO/plain training
    state), final.pth and its safetensors export give the same people (the final step's weights)."""
    from vitpose_scale.evaluate import evaluate_checkpoints
    from vitpose_scale.export import export_safetensors
    from vitpose_scale.models.weights import load_weights
    from vitpose_scale.models.pose import build_pose_model

    cfg = from_dict(yaml.safe_load((trained_run / "config.yaml").read_text()))
    model = build_pose_model(cfg.model)
    load_weights(model, trained_run / "final.pth")
    safetensors = export_safetensors(model, tmp_path / "final.safetensors")
    step_dir = trained_run / "checkpoints" / f"step_{STEPS:08d}"
    assert step_dir.is_dir()
    outcomes = {str(p): evaluate_checkpoints(cfg, [str(p)]) for p in (trained_run / "final.pth", step_dir, safetensors)}
    first = outcomes[str(trained_run / "final.pth")]
    for outcome in outcomes.values():
        assert outcome.stats == first.stats and outcome.results == first.results


# ------------------------------------------------------------ distributed --


def _evaluate_on(rank, world, port, cfg_dict, checkpoint, out_dir):
    """One rank: the trainer's path (a forward that is a collective, as under ZeRO-3: shorter
    shards must make dummy calls) and the eval command's path (evaluate_checkpoints)."""
    import torch.distributed as dist

    from vitpose_scale.evaluate import build_eval_set, evaluate_checkpoints
    from vitpose_scale.eval.runner import evaluate_model
    from vitpose_scale.models.weights import load_weights
    from vitpose_scale.models.pose import build_pose_model

    torch.set_num_threads(1)
    if world > 1:
        # A rank left waiting in a collective fails within a minute instead of hanging the suite.
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
    try:
        cfg = from_dict(cfg_dict)
        model = build_pose_model(cfg.model)
        load_weights(model, checkpoint)
        model.eval()

        def collective_forward(images):
            if world > 1:
                dist.all_reduce(torch.ones(1))  # every rank must call as often as the others
            return model(images).float()

        dataset, ann, _ = build_eval_set(cfg)
        stats, results = evaluate_model(collective_forward, dataset, ann, cfg, rank, world, progress=False)
        outcome = evaluate_checkpoints(cfg, [checkpoint], rank=rank, world_size=world)
        Path(out_dir, f"rank{rank}_of{world}.json").write_text(json.dumps(
            {"boxes": len(dataset), "stats": stats, "results": results, "cli_stats": outcome.stats,
             "cli_results": outcome.results}))
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_over_an_odd_number_of_people_equal_one_rank(trained_run, coco_sample):
    torch_mp = pytest.importorskip("torch.multiprocessing")
    cfg = _sample_config(coco_sample, trained_run)
    # 37 detections (odd): shards of 19 and 18 boxes. Batch size 1 keeps every forward's arithmetic
    # independent of how the boxes are batched, so the comparison can be exact.
    cfg["data"].update(det_file="test_coco_det_AP_H_56.json", det_score_thr=0.2)
    cfg["eval"]["batch_size"] = 1
    checkpoint = str(trained_run / "final.pth")
    with tempfile.TemporaryDirectory() as d:
        _evaluate_on(0, 1, 0, cfg, checkpoint, d)
        torch_mp.spawn(_evaluate_on, args=(2, free_port(), cfg, checkpoint, d), nprocs=2, join=True)
        one = json.loads(Path(d, "rank0_of1.json").read_text())
        two = [json.loads(Path(d, f"rank{r}_of2.json").read_text()) for r in range(2)]
    assert one["boxes"] == 37
    assert two[0]["stats"] == one["stats"] and two[0]["cli_stats"] == one["cli_stats"] == one["stats"]
    assert two[1]["stats"] is None  # rank 0 scores
    for rank in range(2):  # every rank holds the whole result list
        assert two[rank]["results"] == one["results"]
        assert two[rank]["cli_results"] == one["cli_results"] == one["results"]
    assert 0 < len(one["results"]) < 37  # OKS-NMS merged some boxes


def test_eval_command_reports_a_missing_checkpoint_in_one_line_exit_4(trained_run, tmp_path, monkeypatch, capsys):
    from vitpose_scale.evaluate import main

    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="0").items():  # a one-process group (the OS picks its port), restored afterwards
        monkeypatch.setenv(key, value)
    assert main(["--config", str(trained_run / "config.yaml"), "--checkpoint", str(tmp_path / "nope.pth"),
                 "--out", str(tmp_path)]) == 4  # a checkpoint error, as from training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("checkpoint error: checkpoint") and "nope.pth" in err[0]
    assert not torch.distributed.is_initialized()  # the group is gone again


def _runner_cfg(coco_sample, **eval_settings):
    cfg = Config()
    cfg.model.image_size = [64, 48]
    cfg.data = DataConfig(root=str(coco_sample), val_ann="test_coco.json", val_images=".", num_workers=0)
    for key, value in eval_settings.items():
        setattr(cfg.eval, key, value)
    return cfg


def _heatmaps_from_the_crop(images):
    """A deterministic stand-in for a model whose maps depend on the crop (a real model could not
    be told apart by the runner): the grey crop, pooled to the heatmap size, per joint scaled."""
    grey = images.float().mean(1, keepdim=True)
    maps = F.interpolate(grey, size=(images.shape[2] // 4, images.shape[3] // 4), mode="area")
    return maps.expand(-1, 17, -1, -1) * torch.linspace(0.5, 1.5, 17).view(1, 17, 1, 1)


@pytest.mark.parametrize("flip_test", [True, False])
def test_runner_every_rank_forwards_as_often_as_the_longest_shard(coco_sample, flip_test):
    """Sharded models make each forward a collective: a shorter shard pads with zero dummies."""
    cfg = _runner_cfg(coco_sample, flip_test=flip_test, batch_size=2)
    dataset, _, _ = build_eval_set(cfg)
    world = 5
    per_batch = 2 if flip_test else 1
    expected = math.ceil(math.ceil(len(dataset) / world) / 2) * per_batch
    shard_sizes = [len(list(ShardSampler(len(dataset), rank, world))) for rank in range(world)]
    assert len(set(shard_sizes)) == 2, "the test needs uneven shards"
    for rank, size in enumerate(shard_sizes):
        calls = []

        def forward(images):
            calls.append(images.clone())
            return _heatmaps_from_the_crop(images)

        people = predict_people(forward, dataset, cfg, rank, world, progress=False)
        assert len(people) == size
        real = math.ceil(size / 2) * per_batch
        assert len(calls) == expected, (rank, size)
        for dummy in calls[real:]:
            assert dummy.shape == (1, 3, 64, 48) and not dummy.any()
        assert all(c.any() for c in calls[:real])


def test_runner_uses_the_configured_rescoring_and_oks_nms_thresholds(coco_sample):
    cfg = _runner_cfg(coco_sample, oks_nms_thr=0.3, rescore_thr=0.4)
    cfg.data.det_file = "test_coco_det_AP_H_56.json"
    dataset, ann, _ = build_eval_set(cfg)
    people = predict_people(_heatmaps_from_the_crop, dataset, cfg, 0, 1, progress=False)
    stats, results = evaluate_model(_heatmaps_from_the_crop, dataset, ann, cfg, 0, 1, progress=False)
    assert results == postprocess_people(people, 0.4, 0.3)
    assert results != postprocess_people(people, 0.4, 0.9), "the NMS threshold must matter on this set"
    assert results != postprocess_people(people, 0.2, 0.3), "the rescoring threshold must matter on this set"
    assert list(stats) == list(STAT_NAMES) and all(isinstance(v, float) for v in stats.values())
    no_gt_stats, same = evaluate_model(_heatmaps_from_the_crop, dataset, None, cfg, 0, 1, progress=False)
    assert no_gt_stats is None and same == results

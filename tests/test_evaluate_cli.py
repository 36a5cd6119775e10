"""`vitpose-scale eval` end to end: a briefly trained model, exported to the official format and
evaluated again through the checkpoint path, gives the trainer's own evaluation to the last digit;
distributed evaluation over uneven shards equals one rank exactly."""
import datetime
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from launch_env import launcher_env  # noqa: E402
from vitpose_scale.config import from_dict
from vitpose_scale.engine.metrics import read_jsonl
from vitpose_scale.eval.coco_eval import STAT_NAMES, format_stats

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


# ------------------------------------------------------------ distributed --
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate_on(rank, world, port, cfg_dict, checkpoint, out_dir):
    """One rank: the trainer's path (a forward that is a collective, as under ZeRO-3: shorter
    shards must make dummy calls) and the eval command's path (evaluate_checkpoints)."""
    import torch.distributed as dist

    from vitpose_scale.evaluate import build_eval_set, evaluate_checkpoints
    from vitpose_scale.eval.runner import evaluate_model
    from vitpose_scale.models.interop import load_official
    from vitpose_scale.models.pose import build_pose_model

    torch.set_num_threads(1)
    if world > 1:
        # A rank left waiting in a collective fails within a minute instead of hanging the suite.
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
    try:
        cfg = from_dict(cfg_dict)
        model = build_pose_model(cfg.model)
        load_official(model, checkpoint)
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
        torch_mp.spawn(_evaluate_on, args=(2, _free_port(), cfg, checkpoint, d), nprocs=2, join=True)
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
                           MASTER_PORT=str(_free_port())).items():  # a one-process group, restored afterwards
        monkeypatch.setenv(key, value)
    assert main(["--config", str(trained_run / "config.yaml"), "--checkpoint", str(tmp_path / "nope.pth"),
                 "--out", str(tmp_path)]) == 4  # a checkpoint error, as from training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("checkpoint error: checkpoint") and "nope.pth" in err[0]
    assert not torch.distributed.is_initialized()  # the group is gone again

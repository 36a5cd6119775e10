"""bench/gpu_suite.py --smoke: every part of the GPU suite runs its real code path on the CPU (tiny
shapes, Triton interpreter, DeepSpeed on one CPU rank), so the suite cannot rot before a GPU appears."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import launcher_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute on 2 cores; the first GPU check's --dry-run (tests/test_gpu_check.py) is the default
def test_gpu_suite_smoke_runs_every_part(tmp_path):
    out = tmp_path / "suite.json"
    env = launcher_env()
    env["OMP_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "bench/gpu_suite.py", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    shapes = {e["name"]: e for e in report["attention"]["shapes"]}
    assert list(shapes) == ["B_256x192", "H_256x192", "G_576x432", "G_stride8_576x432"]
    for entry in shapes.values():
        for impl in ("triton", "sdpa_math", "plain"):
            result = entry["results"][impl]
            assert "error" not in result, (entry["name"], impl, result)
            assert result["max_abs_err_vs_sdpa"] < 3e-2  # bf16
            assert result["fwd_bwd_tflops"] > 0
    for name in ("B", "L", "H", "G"):
        train = report["train"][name]
        assert train["images_per_s"] > 0 and train["micro_batch"] == 2, train
        assert train["attention"] == "triton"
    for name in ("B", "L", "H"):
        assert report["inference"][name]["images_per_s"] > 0
        assert report["inference"][name]["official_a100_images_per_s"] in (944, 411, 241)
    assert report["compile"]["on"]["compile"] == "eager" and report["compile"]["speedup"] > 0
    # Forward and backward errors against float64, with the threshold that fails the suite for Triton.
    for entry in shapes.values():
        acc = entry["accuracy"]
        assert acc["threshold"] == 3e-2
        for impl in ("triton", "sdpa_math", "plain"):
            r = acc["impls"][impl]
            assert 0 < r["fwd_err"] < 3e-2 and 0 < r["bwd_err"] < 3e-2 and r["within_threshold"], (impl, r)
    for name in ("B", "L", "H", "G"):  # the loss of every timed step
        train = report["train"][name]
        assert train["loss_finite"] and len(train["losses"]) == 1 and 0 < train["losses"][0] < 1, train
    # The ZeRO-3 parts: gpu_check's deepspeed run (on CPU ranks here, 2 of them for two_gpu).
    assert report["zero3"]["passed"] and report["two_gpu"]["passed"], (report["zero3"], report["two_gpu"])
    assert {c["check"] for c in report["two_gpu"]["checks"]} == {"loss finite and falling", "both ranks' losses equal"}
    assert report["problems"] == []
    table = out.with_suffix(".md").read_text()
    assert "| G_stride8_576x432 |" in table and "| B | 2 |" in table
    assert "## Attention errors vs float64" in table and "| two_gpu | both ranks' losses equal | PASS |" in table
    assert "## Verdict: passed" in table


def test_a_failing_part_is_recorded_and_the_rest_runs(tmp_path):
    """A part that raises (an unknown config here, standing in for an OOM or a missing kernel)
    lands in the JSON as an error; the budget skips parts that cannot start in time."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_suite

    report = {}
    gpu_suite.run_part("broken", lambda: {}["missing"], report, gpu_suite.Budget(100), 1)
    gpu_suite.run_part("fine", lambda: {"value": 1}, report, gpu_suite.Budget(100), 1)
    gpu_suite.run_part("late", lambda: {"value": 2}, report, gpu_suite.Budget(0), 1)
    assert report["broken"]["error"] == "KeyError: 'missing'"
    assert report["fine"]["value"] == 1
    assert "time budget" in report["late"]["skipped"]


def test_the_verdict_fails_on_skipped_parts_nan_and_triton_errors():
    """The suite exits non-zero (problems() non-empty) instead of 0 when a part was skipped or failed,
    an error or a loss is NaN, or the Triton kernel's errors exceed their threshold."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_suite

    good_acc = {"threshold": 3e-2, "impls": {
        "triton": {"fwd_err": 5e-3, "bwd_err": 1e-2, "dq_err": 1e-2, "dk_err": 9e-3, "dv_err": 8e-3,
                   "within_threshold": True},
        "plain": {"fwd_err": 4e-2, "bwd_err": 5e-2, "dq_err": 5e-2, "dk_err": 1e-2, "dv_err": 1e-2,
                  "within_threshold": False}}}  # not binding: only our kernel's threshold fails the suite
    base = {"parts": ["attention", "train"], "attention": {"shapes": [{"name": "G", "results": {}, "accuracy": good_acc}]},
            "train": {"G": {"losses": [0.3, 0.2], "loss_finite": True}}}
    assert gpu_suite.problems(base) == []
    skipped = dict(base, train={"skipped": "time budget: -170 s left, part needs ~60 s"})
    assert any("time budget" in p for p in gpu_suite.problems(skipped))
    nan_loss = dict(base, train={"G": {"losses": [0.3, float("nan")], "loss_finite": False}})
    assert any("loss not finite" in p for p in gpu_suite.problems(nan_loss))
    bad = {"threshold": 3e-2, "impls": {"triton": dict(good_acc["impls"]["triton"], bwd_err=0.5, dk_err=0.5,
                                                       within_threshold=False)}}
    over = dict(base, attention={"shapes": [{"name": "G", "results": {}, "accuracy": bad}]})
    assert any("triton: errors over the threshold" in p for p in gpu_suite.problems(over))
    nan = {"threshold": 3e-2, "impls": {"triton": dict(good_acc["impls"]["triton"], fwd_err=float("nan"),
                                                       within_threshold=False)}}
    assert any("NaN" in p for p in gpu_suite.problems(dict(base, attention={"shapes": [{"name": "G", "accuracy": nan}]})))


def test_the_budget_starts_after_set_up(monkeypatch, tmp_path):
    """A slow set-up (imports, process group, DeepSpeed) used to eat the budget: every part was then
    skipped ("time budget: -170 s left") and the suite exited 0. Now the budget starts after it; a
    part skipped for time fails the suite. The suite's clock is faked: set-up takes 1000 s. The set-up
    itself is faked too (one CPU rank, no process group): the budget logic is under test, and the real
    set-up runs in the --dry-run of tests/test_gpu_check.py and the slow --smoke test above."""
    import time
    import types

    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_suite
    from vitpose_scale.engine import distributed

    clock = {"offset": 0.0}
    monkeypatch.setattr(gpu_suite, "time", types.SimpleNamespace(
        monotonic=lambda: time.monotonic() + clock["offset"], perf_counter=time.perf_counter))

    def slow_init(use_deepspeed):
        clock["offset"] += 1000.0
        return distributed.DistInfo(0, 1, 0, torch.device("cpu"))

    monkeypatch.setattr(distributed, "init_distributed", slow_init)
    out = tmp_path / "suite.json"
    assert gpu_suite.main(["--smoke", "--budget-s", "60", "--parts", "inference", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["setup_seconds"] >= 1000
    assert report["inference"]["B"]["images_per_s"] > 0, report["inference"]
    assert gpu_suite.main(["--smoke", "--budget-s", "0", "--parts", "inference", "--out", str(out)]) == 1
    assert "time budget" in json.loads(out.read_text())["inference"]["skipped"]

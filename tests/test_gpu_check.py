"""bench/gpu_check.py, the first thing to run on a GPU: its --dry-run runs every check's real code path on
the CPU (Triton interpreter, DeepSpeed on CPU ranks, toy sizes), so the script cannot rot before a GPU
appears; and its verdicts (exit code, table rows) follow the numbers, checked on made-up records."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import launcher_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.distributed  # the dry run trains under `deepspeed --num_gpus 1` and `--num_gpus 2`
def test_dry_run_passes_every_check(tmp_path):
    out = tmp_path / "check.json"
    env = launcher_env()
    env["OMP_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["passed"]
    rows = report["rows"]
    assert not [r for r in rows if r["status"] == "FAIL"]
    checks = {(r["part"], r["check"]): r for r in rows}
    assert checks["environment", "DS_ACCELERATOR"]["status"] == "PASS"
    assert checks["environment", "Triton"]["status"] == "PASS"
    # Every head dim the shipped configs use (demo 24, MAE-demo decoder 16, S / MAE decoder 32, B/L 64,
    # H 80, G 88), in the three dtypes, forward and backward against float64.
    dims = sorted({s["D"] for s in gpu_check.shipped_attention_shapes()})
    assert dims == [16, 24, 32, 64, 80, 88]
    attention = [r for r in rows if r["part"] == "attention" and r["status"] == "PASS"]
    assert sorted({int(r["check"].split(" D=")[1].split()[0]) for r in attention}) == dims
    assert len(attention) == 3 * len(dims)
    assert all("interpreter tiles out/dq/dk/dv" in r["detail"] and "sdpa " in r["detail"] for r in attention)
    # Every autotune configuration forced once (at G's head dim in the dry run).
    forced = [r for r in attention if "forced configurations" in r["detail"]]
    assert {r["check"].split()[-1] for r in forced} == {"float32", "bfloat16"}  # fp16 shares bf16's list
    assert checks["blocks", "two G blocks, Triton vs SDPA"]["status"] == "PASS"
    assert checks["zero3", "loss finite and falling"]["status"] == "PASS"
    assert "ZeRO-3 (partitioned)" in checks["zero3", "loss finite and falling"]["detail"]
    assert checks["two_gpu", "both ranks' losses equal"]["status"] == "PASS"
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "all passed" in table


def test_shipped_shapes_are_the_configs_real_ones():
    shapes = {(s["N"], s["D"]): s for s in gpu_check.shipped_attention_shapes()}
    assert shapes[972, 88]["H"] == 16 and "vitpose_g_576x432" in shapes[972, 88]["configs"]  # 36x27 tokens
    assert "ablation/vitpose_b_256x192_stride8" in shapes[768, 64]["configs"]  # 32x24 tokens
    assert (192, 80) in shapes and (192, 32) in shapes and (192, 64) in shapes  # H, S, B/L at 16x12
    assert "mae_vitg_person_crops (encoder)" in shapes[48, 88]["configs"]  # 25 % of 192 tokens visible
    assert "mae_vitg_person_crops (decoder)" in shapes[192, 32]["configs"]  # 512 wide, 16 heads


def _records(losses0, losses1=None, **extra):
    base = dict(device="cuda:0", backend="nccl", accelerator="cuda", zero3_partitioned=True, fallbacks=[],
                micro_batch=16)
    recs = [dict(base, rank=0, losses=losses0, global_losses=losses0, **extra)]
    if losses1 is not None:
        mean = [(a + b) / 2 for a, b in zip(losses0, losses1)]
        recs[0]["global_losses"] = mean
        recs.append(dict(base, rank=1, device="cuda:1", losses=losses1, global_losses=mean, **extra))
    return recs


def _statuses(records, gpus):
    report = gpu_check.Report()
    gpu_check.check_training(report, records, gpus, dry_run=False)
    return {r["check"]: r["status"] for r in report.rows}


def test_training_verdicts_follow_the_losses():
    falling = [1.0 - 0.02 * i for i in range(30)]
    assert _statuses(_records(falling), 1) == {"loss finite and falling": "PASS"}
    assert _statuses(_records([1.0] * 30), 1)["loss finite and falling"] == "FAIL"  # flat: not learning
    assert _statuses(_records(falling[:-1] + [float("nan")]), 1)["loss finite and falling"] == "FAIL"
    assert _statuses(_records(falling, zero3_partitioned=False), 1)["loss finite and falling"] == "FAIL"
    assert _statuses(_records(falling, falling), 2)["both ranks' losses equal"] == "PASS"
    other = [x * (1 + 1e-4) for x in falling]  # ranks disagree: their gathered weights differ
    assert _statuses(_records(falling, other), 2)["both ranks' losses equal"] == "FAIL"
    gloo = _records(falling, falling)
    gloo[1]["backend"] = "gloo"  # a GPU run that fell back to CPU ranks
    assert _statuses(gloo, 2)["rank 1 device"] == "FAIL"
    fell_back = _records(falling, fallbacks=["tensors on cpu"])
    assert _statuses(fell_back, 1)["rank 0 Triton used"] == "FAIL"


def test_an_error_or_unknown_part_exits_non_zero(capsys):
    # Not --dry-run: that would set TRITON_INTERPRET / CUDA_VISIBLE_DEVICES in this test process.
    assert gpu_check.main(["--parts", "no_such_part"]) == 1
    out = capsys.readouterr().out
    assert "| no_such_part | part | FAIL | unknown part" in out and "FAILED" in out

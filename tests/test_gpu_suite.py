"""bench/gpu_suite.py --smoke: every part of the GPU suite runs its real code path on the CPU (tiny
shapes, Triton interpreter, DeepSpeed on one CPU rank), so the suite cannot rot before a GPU appears."""
import json
import subprocess
import sys
from pathlib import Path

from launch_env import launcher_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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
    table = out.with_suffix(".md").read_text()
    assert "| G_stride8_576x432 |" in table and "| B | 2 |" in table


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

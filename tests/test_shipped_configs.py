"""Every config in configs/ trains two steps in its own precision and backend, then evaluates.

Only depth, width and data size are shrunk (tests/shipped_configs_runner.py); what a user
would otherwise meet first on a GPU (bf16 BatchNorm, ZeRO bucket alignment, head choice,
stride-8 patches, resolution) runs here on CPU. All configs share one process (DeepSpeed
imported once).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import launcher_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    data = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(data, 8, 2, seed=0)  # the seed build_datasets checks for
    out = tmp_path_factory.mktemp("configs")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "shipped_configs_runner.py"), str(out), str(data),
                           *map(str, CONFIGS)], cwd=ROOT, env=launcher_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {c: json.loads((out / c.relative_to(ROOT / "configs").with_suffix("").as_posix().replace("/", "__")
                           / "report.json").read_text()) for c in CONFIGS}


def test_configs_are_found():
    names = {c.name for c in CONFIGS}
    assert {"vitpose_b_256x192.yaml", "vitpose_g_576x432.yaml", "demo.yaml"} <= names
    # ViTPose+ (three heads) and ViTPose++ (six heads, experts): trained here on synthetic stand-ins
    assert {f"vitpose_plus_{k}_256x192.yaml" for k in "blh"} | {"vitpose_plus_g_576x432.yaml"} <= names
    assert {f"vitpose_pp_{k}_256x192.yaml" for k in "sblh"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_config_trains_two_steps_and_evaluates(reports, config):
    import yaml

    report = reports[config]
    assert report["ok"], report.get("traceback") or report.get("error")
    assert report["steps"] == 2 and len(report["losses"]) == 2
    assert all(math.isfinite(v) for v in report["losses"])
    raw = yaml.safe_load(config.read_text())
    precision = raw.get("parallel", {}).get("precision", "fp32")
    assert report["precision"] == precision
    if precision == "bf16" and raw.get("parallel", {}).get("backend", "deepspeed") == "deepspeed":
        assert "torch.bfloat16" in report["param_dtypes"]  # really trained in the config's precision
    if "mae" not in raw:  # pose configs evaluate once at the end: all ten COCO stats present
        assert report["stats"] is not None and len(report["stats"]) == 10

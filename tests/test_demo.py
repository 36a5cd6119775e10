"""The README demo, end to end (slow: about 4 minutes on 2 cores). Run with `bash scripts/test.sh --slow`."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_trains_and_ap_rises_clearly(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "demo"))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before = json.loads((tmp_path / "demo" / "eval_untrained" / "stats.json").read_text())
    after = json.loads((tmp_path / "demo" / "eval" / "stats.json").read_text())
    assert before["AP"] < 0.01
    # configs/demo.yaml reaches AP 0.32 (AP50 0.68) at its 600 steps; the margin covers run-to-run noise
    assert after["AP"] > 0.25 and after["AP50"] > 0.55
    assert (tmp_path / "demo" / "eval" / "predictions.png").stat().st_size > 10_000
    assert (tmp_path / "demo" / "training_curves.png").stat().st_size > 10_000
    assert "AP on held-out synthetic people: untrained" in proc.stdout

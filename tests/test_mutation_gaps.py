"""Checks added for the mutants that survived the fast tests (docs/testing.md, `bash scripts/mutation.sh <target>`).

Each test pins a value some mutant changed without any other test noticing; the expected values are
written out by hand (the official formulas, analytic values), never taken from the code under test.
"""
import math

import pytest

from vitpose_scale.config import load_config
from vitpose_scale.engine.optim import build_optimizer, lr_factor, param_groups
from vitpose_scale.models.pose import build_pose_model

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "demo.yaml", list(sets))


# --- engine/optim.py ---------------------------------------------------------------------------

def test_optim_a_frozen_parameter_is_left_out_and_every_later_one_still_grouped():
    cfg = _cfg("model.depth=2")
    model = build_pose_model(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    frozen = names[0]  # the very first parameter: every trainable one comes after it
    model.get_parameter(frozen).requires_grad_(False)
    grouped = [n for g in param_groups(model, cfg) for n in g["names"]]
    assert sorted(grouped) == sorted(names[1:])


def test_optim_adamw_uses_the_configured_betas():
    cfg = _cfg("model.depth=2", "optim.betas=[0.8,0.95]")
    opt = build_optimizer(build_pose_model(cfg.model), cfg)
    assert opt.defaults["betas"] == (0.8, 0.95)
    assert all(tuple(g["betas"]) == (0.8, 0.95) for g in opt.param_groups)


def test_optim_cosine_stays_at_zero_after_the_last_step_and_a_one_step_decay_reaches_zero():
    cfg = _cfg("optim.schedule=cosine", "optim.warmup_iters=10")
    # 0.5 * (1 + cos(pi * t)) for t = progress clipped to [0, 1]
    for step in (110, 111, 150, 210):
        assert lr_factor(step, cfg, 100, 110) == pytest.approx(0.0, abs=1e-12), step
    assert lr_factor(35, cfg, 100, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-12)
    assert lr_factor(11, cfg, 100, 11) == pytest.approx(0.0, abs=1e-12)  # decay span of one step


def test_optim_step_schedule_with_one_step_per_epoch():
    cfg = _cfg("optim.schedule=step", "optim.warmup_iters=0", "optim.step_epochs=[2,3]", "optim.step_gamma=0.1")
    assert [lr_factor(s, cfg, 1, 10) for s in range(5)] == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])

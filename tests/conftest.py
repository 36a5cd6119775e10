"""Test-wide environment: CPU DeepSpeed, Triton interpreter, one shared extension cache."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Set before anything imports triton or deepspeed. In-process tests build CPU ranks (DistInfo on
# the CPU), so DeepSpeed's accelerator is the CPU's; GPUs stay visible for the GPU tests. The
# multi-process tests get CPU ranks from launch_env.launcher_env (GPUs hidden).
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("VITPOSE_SCALE_BUILD_DIR", str(ROOT / ".cache" / "build"))  # the partial JPEG decoder

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long checks, run with `pytest -m slow` (docs/testing.md)")
    config.addinivalue_line("markers", "distributed: spawns several processes (gloo / deepspeed launcher)")


@pytest.hookimpl(trylast=True)  # after `-m` deselection: count the tests that run
def pytest_collection_modifyitems(config, items):
    """Files with the most multi-process tests first. scripts/test.sh runs two xdist workers that take
    one file at a time in this order: the long files start early and the short ones fill in at the
    end, instead of one worker finishing a long file alone. The sort is stable, so a file's tests
    stay together and in their order (module fixtures are built once)."""
    launches: dict = {}
    for item in items:
        launches[item.path] = launches.get(item.path, 0) + bool(item.get_closest_marker("distributed"))
    items.sort(key=lambda item: -launches[item.path])


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    return ROOT / "data" / "coco_sample"


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """``synthetic_coco(num_train, num_val)``: a synthetic COCO set with seed 0 (the seed
    build_datasets checks for), generated once per size for the whole session (read only)."""
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    made: dict[tuple[int, int], Path] = {}

    def make(num_train: int, num_val: int) -> Path:
        if (num_train, num_val) not in made:
            root = tmp_path_factory.mktemp(f"synthetic_{num_train}_{num_val}")
            generate_synthetic_coco(root, num_train, num_val, seed=0)
            made[num_train, num_val] = root
        return made[num_train, num_val]

    return make

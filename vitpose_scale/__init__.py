"""vitpose-scale: ViTPose pose models from ViT-B to billion-parameter backbones (README.md).

`from vitpose_scale import PoseEstimator` is the Python API (vitpose_scale/api.py); it is
imported on first use so that `import vitpose_scale` and every `--help` stay free of torch.
"""
from __future__ import annotations

__all__ = ["Person", "PoseEstimator"]


def __getattr__(name: str):
    if name in __all__:
        from vitpose_scale import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitpose_scale' has no attribute {name!r}")

"""Models with weights and BatchNorm statistics of order 1, for export and interop comparisons
(the initialisation's 0.001-scale head would hide errors)."""
import torch

from vitpose_scale.models.pose import build_pose_model


def random_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_pose_model(cfg.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model

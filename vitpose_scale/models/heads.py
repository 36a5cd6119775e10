"""Heatmap heads. Both produce heatmaps at 1/4 of the input resolution."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitpose_scale.models.init import init_is_deferred


class Fp32BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises and keeps its running statistics in fp32 whatever the input dtype.

    Under bf16/fp16 training the wrappers cast parameters to 16 bit but keep buffers in fp32
    (DeepSpeed) or cast activations only (FSDP2, autocast), and batch statistics summed in
    16 bit lose most of their digits; computing in fp32 is both well-typed and sound.
    The state-dict keys are those of nn.BatchNorm2d (official checkpoints load unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("running_mean", "running_var"):
            buf = getattr(self, name)
            if buf is not None and buf.dtype != torch.float32:  # a wrapper cast the whole module
                setattr(self, name, buf.float())
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and x.shape[0]:  # a head with no sample this batch
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        out = F.batch_norm(x.float(), self.running_mean, self.running_var,
                           None if self.weight is None else self.weight.float(),
                           None if self.bias is None else self.bias.float(),
                           use_batch_stats, momentum, self.eps)
        return out.to(x.dtype)


class ClassicHead(nn.Module):
    """[ConvTranspose(k4,s2,p1) -> BN -> ReLU] x n, then 1x1 conv.

    n = 2 for stride-16 features (the official head), 1 for stride-8 features,
    so the heatmaps stay at 1/4 resolution. Layer indices match the official
    keys (deconv_layers.0/.3 conv, .1/.4 BN).
    """

    def __init__(self, in_channels: int, num_keypoints: int, channels: int = 256, feature_stride: int = 16):
        super().__init__()
        num_deconv = int(math.log2(feature_stride // 4))
        layers: list[nn.Module] = []
        for i in range(num_deconv):
            layers += [nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, 4, 2, 1, bias=False),
                       Fp32BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, kernel_size=1)
        if not init_is_deferred():
            self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()  # buffers are garbage after to_empty() from the meta device
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class SimpleHead(nn.Module):
    """ReLU -> bilinear upsampling to 1/4 resolution -> 3x3 conv (ViTPose's simple decoder)."""

    def __init__(self, in_channels: int, num_keypoints: int, feature_stride: int = 16):
        super().__init__()
        self.act = nn.ReLU()
        self.upsample = nn.Upsample(scale_factor=feature_stride // 4, mode="bilinear", align_corners=False)
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, kernel_size=3, padding=1)
        if not init_is_deferred():
            self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.upsample(self.act(x)))

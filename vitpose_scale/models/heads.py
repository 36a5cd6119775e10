"""Heatmap heads. Both produce heatmaps at 1/4 of the input resolution."""
from __future__ import annotations

import math

import torch
from torch import nn


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
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, kernel_size=1)
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
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.upsample(self.act(x)))

"""A tiny 3-D CNN for tests and the CPU demo (not a research model).

Four conv3d(3x3x3) + BatchNorm + ReLU stages (strides (1,2,2), 2, 2, 2) and a global average
pool. With the default width 64 it has about 0.18 M parameters and runs a forward+backward of a
(4, 3, 16, 64, 64) batch in well under a second on one CPU core.

Input: float (B, 3, T, H, W), normalised. Output: float (B, width).
"""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN3D(nn.Module):
    """Attributes: feature_dim = classifier_input_dim = ``width``."""

    def __init__(self, *, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if width < 8 or width % 8 != 0:
            raise ValueError(f"TinyCNN3D: width must be a positive multiple of 8, got {width}")
        self.in_channels = in_channels
        chans = [in_channels, width // 4, width // 2, width, width]
        strides = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        layers: list[nn.Module] = []
        for cin, cout, stride in zip(chans[:-1], chans[1:], strides):
            layers += [
                nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.feature_dim = width
        self.classifier_input_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, T, H, W) -> features float (B, width)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"TinyCNN3D expects input (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        return self.features(x).mean(dim=(2, 3, 4))


def tiny(*, width: int = 64, in_channels: int = 3) -> TinyCNN3D:
    """Build the tiny test backbone."""
    return TinyCNN3D(width=width, in_channels=in_channels)

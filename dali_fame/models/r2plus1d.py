"""R(2+1)D-18 and R3D-18 backbones (torchvision's networks without the classifier).

The classes subclass torchvision's ``VideoResNet`` and only drop ``fc``, so every parameter and
buffer keeps torchvision's name (``stem.0.weight``, ``layer1.0.conv1.0.0.weight``, ...) and a
torchvision checkpoint loads with :meth:`VideoResNetBackbone.load_torchvision_state_dict`.

Input: float32/bf16/fp16 tensor (B, 3, T, H, W), normalised, channels-first.
Output: float tensor (B, 512), the globally average-pooled ``layer4`` features.
The network downsamples time by 8 and space by 16 (input 16 x 112 x 112 -> 2 x 7 x 7 before the
pool); any T >= 1 and H, W >= 1 run because the pool is adaptive.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models.video.resnet import (
    BasicBlock,
    BasicStem,
    Conv2Plus1D,
    Conv3DSimple,
    R2Plus1dStem,
    VideoResNet,
)

FEATURE_DIM = 512


class VideoResNetBackbone(VideoResNet):
    """torchvision ``VideoResNet`` returning pooled features instead of logits.

    Attributes:
        feature_dim: 512, the width of the returned features.
        classifier_input_dim: same as ``feature_dim`` (what a linear head on top must accept).
    """

    def __init__(
        self,
        *,
        conv_maker: type[nn.Module],
        stem: type[nn.Module],
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(
            block=BasicBlock,
            conv_makers=[conv_maker] * 4,
            layers=list(layers),
            stem=stem,
            num_classes=1,  # the fc is deleted below; 1 keeps its throwaway init cheap
            zero_init_residual=zero_init_residual,
        )
        del self.fc
        self.feature_dim = FEATURE_DIM
        self.classifier_input_dim = FEATURE_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, T, H, W) -> features float (B, 512)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects input (B, 3, T, H, W), got {tuple(x.shape)}"
            )
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.avgpool(x).flatten(1)

    def load_torchvision_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
    ) -> list[str]:
        """Load a torchvision ``r2plus1d_18`` / ``r3d_18`` state dict, dropping its ``fc.*``.

        Returns the names of the dropped classifier keys (so the caller can log them). With
        ``strict`` every other key must match exactly (missing or unexpected keys raise).
        """
        dropped = [k for k in state_dict if k.startswith("fc.")]
        kept = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        self.load_state_dict(kept, strict=strict)
        return dropped


def r2plus1d_18(*, zero_init_residual: bool = False) -> VideoResNetBackbone:
    """R(2+1)D-18 (Tran et al. 2018) as in torchvision: 31,300,125 parameters without the fc."""
    return VideoResNetBackbone(
        conv_maker=Conv2Plus1D, stem=R2Plus1dStem, zero_init_residual=zero_init_residual
    )


def r3d_18(*, zero_init_residual: bool = False) -> VideoResNetBackbone:
    """R3D-18 as in torchvision (full 3x3x3 convolutions): 33,166,272 parameters without the fc."""
    return VideoResNetBackbone(
        conv_maker=Conv3DSimple, stem=BasicStem, zero_init_residual=zero_init_residual
    )

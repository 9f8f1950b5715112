"""I3D backbone: Inception-v1 (GoogLeNet / TF-slim InceptionV1) inflated to 3-D.

Carreira & Zisserman, "Quo Vadis, Action Recognition?" (CVPR 2017). The layer names, widths and
the TensorFlow "SAME" padding follow the original Sonnet code (deepmind/kinetics-i3d) and its
common PyTorch port (``Unit3D`` = conv3d without bias + BatchNorm3d + ReLU;
``MaxPool3dSamePadding``), so checkpoints converted for that port load by name.

BatchNorm settings (:data:`BN_SETTINGS`): ``"torch"`` (default) is PyTorch's eps 1e-5, momentum
0.1, what the released FAME I3D uses; ``"sonnet"`` is eps 1e-3, momentum 0.01 (TF's decay 0.99),
the Sonnet original and the common port (registered as backbone ``i3d_sonnet``).
22 layers deep (counting conv layers along the longest path, as GoogLeNet does).

Input: float (B, 3, T, H, W), normalised, channels-first. Output: float (B, 1024), the global
average of ``Mixed_5c`` (for the standard 16 x 224 x 224 input that is a 2 x 7 x 7 map, which is
exactly what the original ``AvgPool3d([2, 7, 7])`` head averages; the classifier itself is not
part of the backbone). Time is downsampled by 8, space by 32.

BatchNorm layers carry a learnable scale and offset as in the PyTorch port (Sonnet's
``snt.BatchNorm`` created only the offset by default, i.e. 7,280 parameters fewer; a converted
checkpoint sets the scales to 1).

Parameter count without the head: 12,287,264 (12,272,704 convolution weights + 14,560 BatchNorm
affine parameters; ``tests/models/test_backbones.py`` recomputes it from the layer table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1024

Triple = tuple[int, int, int]

#: BatchNorm (eps, momentum) by name: the released FAME I3D ("torch") and the Sonnet original
BN_SETTINGS: dict[str, tuple[float, float]] = {"torch": (1e-5, 0.1), "sonnet": (1e-3, 0.01)}


def _triple(v: int | Triple) -> Triple:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def same_padding(size: Triple, kernel: Triple, stride: Triple) -> tuple[int, ...]:
    """TensorFlow "SAME" padding for a (T, H, W) input, in ``F.pad`` order.

    TF pads so that ``out = ceil(in / stride)``; the total per dimension is
    ``max((out - 1) * stride + kernel - in, 0)`` with the odd pixel at the END (after), unlike
    PyTorch's symmetric padding. Returns (w_before, w_after, h_before, h_after, t_before, t_after).
    """
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """conv3d (TF "SAME" padding computed from the input size) -> BatchNorm3d -> ReLU.

    x: float (B, C_in, T, H, W) -> float (B, C_out, ceil(T/st), ceil(H/sh), ceil(W/sw)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int | Triple = 1,
        stride: int | Triple = 1,
        use_batch_norm: bool = True,
        use_bias: bool = False,
        activation: bool = True,
        bn: str = "torch",
    ) -> None:
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel_size, stride=self.stride, bias=use_bias
        )
        eps, momentum = BN_SETTINGS[bn]
        self.bn = nn.BatchNorm3d(out_channels, eps=eps, momentum=momentum) if use_batch_norm else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = same_padding(tuple(x.shape[2:]), self.kernel_size, self.stride)
        x = self.conv3d(F.pad(x, pad))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pooling with TF "SAME" padding (padded cells never win: they are -inf)."""

    def __init__(self, kernel_size: int | Triple, stride: int | Triple) -> None:
        super().__init__(_triple(kernel_size), stride=_triple(stride), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = same_padding(tuple(x.shape[2:]), self.kernel_size, self.stride)  # type: ignore[arg-type]
        # TF excludes padded cells from the max. Here every pooled input is post-ReLU (>= 0), so
        # the zero padding of the common port gives the same result; -inf is exact regardless.
        return super().forward(F.pad(x, pad, value=float("-inf")))


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels.

    ``widths`` = (b0 1x1, b1 1x1 reduce, b1 3x3, b2 1x1 reduce, b2 3x3, b3 pool-proj 1x1);
    branch 2 uses a 3x3x3 convolution (not 5x5), as TF-slim's InceptionV1 and the I3D release do.
    x: (B, in_channels, T, H, W) -> (B, w0 + w2 + w4 + w5, T, H, W).
    """

    def __init__(
        self, in_channels: int, widths: tuple[int, int, int, int, int, int], *, bn: str = "torch"
    ) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0, kernel_size=1, bn=bn)
        self.b1a = Unit3D(in_channels, w1a, kernel_size=1, bn=bn)
        self.b1b = Unit3D(w1a, w1b, kernel_size=3, bn=bn)
        self.b2a = Unit3D(in_channels, w2a, kernel_size=1, bn=bn)
        self.b2b = Unit3D(w2a, w2b, kernel_size=3, bn=bn)
        self.b3a = MaxPool3dSamePadding(kernel_size=3, stride=1)
        self.b3b = Unit3D(in_channels, w3, kernel_size=1, bn=bn)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


# (name, in_channels, widths) for every Inception block, in order; the table the test recounts.
INCEPTION_BLOCKS: tuple[tuple[str, int, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class I3D(nn.Module):
    """Inflated Inception-v1 feature extractor.

    Attributes:
        feature_dim: 1024. classifier_input_dim: same.
    Submodules keep the Sonnet end-point names (``Conv3d_1a_7x7``, ``MaxPool3d_2a_3x3``, ...,
    ``Mixed_5c``) so ported checkpoints map one to one.
    """

    def __init__(self, *, in_channels: int = 3, bn: str = "torch") -> None:
        super().__init__()
        if bn not in BN_SETTINGS:
            raise ValueError(f"I3D bn must be one of {sorted(BN_SETTINGS)}, got {bn!r}")
        self.in_channels = in_channels
        self.bn = bn
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, kernel_size=7, stride=2, bn=bn)),
            ("MaxPool3d_2a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64, kernel_size=1, bn=bn)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, kernel_size=3, bn=bn)),
            ("MaxPool3d_3a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
        ]
        pools = {
            "Mixed_4b": ("MaxPool3d_4a_3x3", MaxPool3dSamePadding(kernel_size=3, stride=2)),
            "Mixed_5b": ("MaxPool3d_5a_2x2", MaxPool3dSamePadding(kernel_size=2, stride=2)),
        }
        channels = 192
        for name, cin, widths in INCEPTION_BLOCKS:
            if name in pools:
                layers.append(pools[name])
            if cin != channels:
                raise AssertionError(f"I3D layer table: {name} expects {cin}, gets {channels}")
            block = InceptionModule(cin, widths, bn=bn)
            layers.append((name, block))
            channels = block.out_channels
        for name, module in layers:
            self.add_module(name, module)
        self.end_points = tuple(name for name, _ in layers)
        self.feature_dim = channels
        self.classifier_input_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, T, H, W) -> features float (B, 1024)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"I3D expects input (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        for name in self.end_points:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3, 4))


def i3d(*, in_channels: int = 3, bn: str = "torch") -> I3D:
    """Build the I3D backbone (12,287,264 parameters, 1024-d features); ``bn`` names the
    BatchNorm settings (:data:`BN_SETTINGS`)."""
    return I3D(in_channels=in_channels, bn=bn)


def i3d_sonnet(*, in_channels: int = 3) -> I3D:
    """I3D with the Sonnet original's BatchNorm (eps 1e-3, momentum 0.01)."""
    return I3D(in_channels=in_channels, bn="sonnet")

"""Class-agnostic activation maps of encoders on clips (the kind of the paper's Figure 1).

An encoder's activation map is read from its last convolutional feature map F, float
(C, T', H', W'): the feature map its global pool averages (the last 5-D activation of the
forward pass with H' * W' > 1, found with forward hooks, so every backbone of the registry works
unchanged). Reduced over channels by ``reduce``:

* ``"mean-abs"`` (default): mean over c of |F[c]|;
* ``"l2"``: the L2 norm over c of F[c].

The map (T', H', W') is upsampled trilinearly to the clip (T, H, W) and min-max scaled over the
whole clip (so that brighter frames really are more active), then drawn over the frames. No
label is involved (class-agnostic): where the encoder's features are strong, not where a class
score comes from. A scene-biased encoder lights up the background, a motion-aware one the mover.

One PNG per clip: the first row is the clip, then one row per encoder, columns are frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dali_fame.eval.inference import normalize_clips
from dali_fame.figures.common import Encoder
from dali_fame.figures.plot import frame_grid, label_axis, overlay, pick_frames, safe_name, save_png

__all__ = ["REDUCTIONS", "activation_maps", "cam_figure", "last_feature_map"]

REDUCTIONS = ("mean-abs", "l2")


@torch.no_grad()
def last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last 5-D activation with spatial extent above 1 x 1 of ``model(x)``.

    Args:
        model: a backbone (float (B, 3, T, H, W) -> features).
        x: float32 (B, 3, T, H, W), normalised.

    Returns:
        float32 (B, C, T', H', W'). Modules finish in forward order, so for a backbone that ends
        in a global pool this is the map the pool reads (a pool with a fixed window, such as
        I3D's, gives 1 x 1 and is skipped).

    Raises:
        ValueError: no submodule produced such a map (naming the model class).
    """
    found: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 5 and output.shape[-1] * output.shape[-2] > 1:
            found.append(output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise ValueError(f"{type(model).__name__} produced no 5-D feature map larger than 1 x 1 on "
                         f"input {tuple(x.shape)}: the clip is too small for an activation map "
                         f"(raise data.crop)")
    return found[-1].float()


@torch.no_grad()
def activation_maps(model: nn.Module, clips: torch.Tensor, *, reduce: str = "mean-abs") -> torch.Tensor:
    """Class-agnostic activation maps of ``model`` on ``clips``.

    Args:
        model: a backbone in eval mode (CPU).
        clips: uint8 (B, T, H, W, 3) RGB channels-last (normalised here with the Kinetics-400
            statistics, as in the evaluations).
        reduce: "mean-abs" or "l2" (module docstring).

    Returns:
        float32 (B, T, H, W) in [0, 1], min-max scaled per clip.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"--reduce must be one of {REDUCTIONS}, got {reduce!r}")
    fmap = last_feature_map(model, normalize_clips(clips))
    amap = fmap.abs().mean(dim=1) if reduce == "mean-abs" else fmap.norm(dim=1)  # (B, T', H', W')
    _, t, h, w, _ = clips.shape
    up = F.interpolate(amap[:, None], size=(t, h, w), mode="trilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (up - lo) / (hi - lo).clamp(min=1e-8)


def cam_figure(clips: torch.Tensor, names: list[str], encoders: list[Encoder], *, out_dir: str | Path,
               reduce: str = "mean-abs", frames: int = 8) -> list[Path]:
    """Write ``cam_<name>.png`` per clip: the clip, then each encoder's map over its frames.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last.
        names: B labels (video ids; the file names come from them).
        encoders: one or more :class:`~dali_fame.figures.common.Encoder` (rows, in order).
        out_dir: folder for the PNGs.
        reduce: "mean-abs" or "l2".
        frames: columns (frames spread over the clip).

    Returns:
        the paths written, in clip order.
    """
    if not encoders:
        raise ValueError("cam_figure: give at least one encoder (--pretrained)")
    if len(names) != clips.shape[0]:
        raise ValueError(f"cam_figure: {clips.shape[0]} clips but {len(names)} names")
    maps = [activation_maps(e.model, clips, reduce=reduce).numpy() for e in encoders]
    x = clips.cpu().numpy()
    cols = pick_frames(x.shape[1], frames)
    paths = []
    for b, name in enumerate(names):
        fig, axes = frame_grid(1 + len(encoders), len(cols),
                               title=f"activation maps ({reduce} of the last feature map): {name}")
        for j, f in enumerate(cols):
            axes[0, j].imshow(x[b, f], interpolation="nearest")
            label_axis(axes[0, j], f"frame {f}", row=False)
            for i, amap in enumerate(maps):
                axes[i + 1, j].imshow(overlay(x[b, f], amap[b, f]), interpolation="nearest")
        label_axis(axes[0, 0], "clip", row=True)
        for i, enc in enumerate(encoders):
            label_axis(axes[i + 1, 0], _wrap(f"{enc.name}\n({enc.backbone_name})"), row=True)
        paths.append(save_png(fig, Path(out_dir) / f"cam_{safe_name(name)}.png"))
    return paths


def _wrap(text: str, width: int = 28) -> str:
    """Break long checkpoint paths into lines so the row label stays narrow."""
    lines = []
    for line in text.split("\n"):
        lines += [line[i:i + width] for i in range(0, max(len(line), 1), width)]
    return "\n".join(lines)


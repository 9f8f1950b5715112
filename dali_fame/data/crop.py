"""Apply a sample plan's crop window to decoded frames: the one crop / resize / flip both loaders
run on the CPU (the CPU loader in its workers, the DALI pipeline's CPU backend inside DALI), so
their pixels are bit-identical. The window itself is decided in :mod:`dali_fame.data.plan`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dali_fame.data.plan import CropWindow

__all__ = ["crop_resize_flip"]


def crop_resize_flip(frames: np.ndarray, window: CropWindow | None, size: int | None) -> torch.Tensor:
    """Apply one crop window to every frame of a clip, resize to ``size x size``, maybe flip.

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB, channels-last.
        window: the clip's box and flip flag; ``None`` keeps the frames as they are.
        size: output side; ``None`` skips cropping and resizing (the flip still applies).

    Returns:
        uint8 ``(T, size, size, 3)`` (or ``(T, H, W, 3)``), contiguous. Resizing is bilinear
        with antialiasing on uint8 (torch's channels-last uint8 fast path; no float copy).
    """
    clip = torch.from_numpy(frames)
    if window is None:
        return clip.contiguous()
    if size is not None:
        clip = clip[:, window.y : window.y + window.h, window.x : window.x + window.w]
        if clip.shape[1] != size or clip.shape[2] != size:
            # (T, H, W, 3) -> (T, 3, H, W) view in channels-last memory: the uint8 AA kernel's
            # fast path; permute back afterwards (memory stays channels-last).
            chw = clip.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            chw = F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)
            clip = chw.permute(0, 2, 3, 1)
    if window.flip:
        clip = clip.flip(2)
    return clip.contiguous()

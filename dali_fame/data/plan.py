"""The plan of one sample, shared by both loaders: frame indices, crop boxes and flips.

Everything random about a sample is decided here, before any decoding, as a pure function of
``(seed, epoch, video_index[, view])``: the frame indices come from the shared sampler
(:mod:`dali_fame.data.sampler`) and each clip's RandomResizedCrop box and flip from
:func:`clip_crop_window`. So the CPU loader and the DALI pipeline, any number of workers and any
rank give the same clips for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from dali_fame.data.records import VideoRecord

#: RandomResizedCrop area range (fraction of the frame) and aspect-ratio range (spec section 5)
CROP_SCALE: tuple[float, float] = (0.2, 1.0)
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

# Appended to the crop generator's seed words. numpy's SeedSequence treats trailing zero words
# as absent ([s, e, i] and [s, e, i, 0] give the same stream), so without a non-zero salt view
# 0's crop draws would replay the sampler's temporal draws for the same (seed, epoch, video).
_CROP_STREAM_SALT = 0x63726F70  # "crop"

MODES = ("train", "eval")

class CropWindow(NamedTuple):
    """A crop box in source-frame pixels plus a flip flag, one per clip.

    Attributes:
        y, x: top-left corner (row, column), integers.
        h, w: box height and width in pixels (>= 1).
        flip: mirror the clip left-right after cropping.
    """

    y: int
    x: int
    h: int
    w: int
    flip: bool


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with a numpy generator.

    Ten tries at a box with area fraction ~ U(scale) and log-uniform aspect ratio in ``ratio``;
    if none fits, the largest centred box whose aspect ratio lies in ``ratio``.

    Returns:
        ``(y, x, h, w)`` in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            y = int(rng.integers(0, height - h + 1))
            x = int(rng.integers(0, width - w + 1))
            return y, x, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_square_window(height: int, width: int) -> CropWindow:
    """The evaluation crop: the centred ``s x s`` square, ``s = min(height, width)``, no flip.

    Resizing this square to ``crop x crop`` equals "resize the short side to ``crop``, then
    centre crop ``crop x crop``" (spec section 6) without rounding the long side twice, and it
    lets both loaders share one crop-then-resize code path.
    """
    side = min(height, width)
    return CropWindow((height - side) // 2, (width - side) // 2, side, side, False)


def clip_crop_window(
    height: int,
    width: int,
    *,
    seed: int,
    epoch: int,
    video_index: int,
    view: int,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> CropWindow:
    """The training crop and flip of one clip: a pure function of its identity.

    Draws from ``np.random.Generator(PCG64([seed, epoch, video_index, view, salt]))``: first the
    RandomResizedCrop box (:func:`random_resized_crop_box`), then the flip (p = 0.5).
    """
    rng = np.random.Generator(
        np.random.PCG64([int(seed), int(epoch), int(video_index), int(view), _CROP_STREAM_SALT])
    )
    y, x, h, w = random_resized_crop_box(height, width, rng, scale=scale, ratio=ratio)
    flip = bool(rng.random() < 0.5)
    return CropWindow(y, x, h, w, flip)


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Everything random about one sample, decided before decoding (shared by both loaders).

    Attributes:
        frame_indices: int64 ``(V, T)`` absolute frame numbers in the file (``start_frame``
            already added; short videos repeat their last frame).
        windows: ``V`` crop windows in source pixels (``None`` entries when cropping is off).
    """

    frame_indices: np.ndarray
    windows: tuple[CropWindow | None, ...]


def plan_sample(
    record: VideoRecord,
    *,
    video_index: int,
    epoch: int,
    seed: int,
    mode: str = "train",
    num_views: int = 2,
    clip_len: int = 16,
    stride: int = 2,
    eval_clips: int = 10,
    crop: int | None = 112,
    flip: bool = True,
) -> SamplePlan:
    """Frame indices and crop windows of one sample.

    Args:
        record: the video (``segment_frames`` frames starting at ``start_frame``).
        video_index: the record's position in the dataset list (seeds the draws).
        epoch, seed: with ``video_index``, the whole randomness of the sample.
        mode: ``"train"`` (``num_views`` random clips, random crop + flip) or ``"eval"``
            (``eval_clips`` uniform clips, centre square, no flip).
        crop: output side; ``None`` keeps full frames (no crop, no resize; train mode still
            flips when ``flip``), which makes the decoded pixels directly comparable.
        flip: allow the random horizontal flip in train mode.
    """
    from dali_fame.data.sampler import eval_clip_indices, train_clip_indices

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = int(record.segment_frames)
    if n < 1:
        raise ValueError(f"{record.path}: the record has no frames (segment_frames = {n})")
    if mode == "train":
        rel = train_clip_indices(
            n, video_index=video_index, epoch=epoch, seed=seed, num_views=num_views,
            clip_len=clip_len, stride=stride,
        )
    else:
        rel = eval_clip_indices(n, num_clips=eval_clips, clip_len=clip_len, stride=stride)
    # Clamp defensively: the sampler already repeats the last frame of short videos.
    frames = np.minimum(np.asarray(rel, dtype=np.int64), n - 1) + int(record.start_frame)
    windows: list[CropWindow | None] = []
    for view in range(frames.shape[0]):
        if mode == "eval":
            windows.append(center_square_window(record.height, record.width) if crop else None)
            continue
        if crop:
            window = clip_crop_window(
                record.height, record.width, seed=seed, epoch=epoch, video_index=video_index,
                view=view,
            )
        else:
            # Same generator as the crop case: the flip is the draw after the box.
            full = clip_crop_window(
                record.height, record.width, seed=seed, epoch=epoch, video_index=video_index,
                view=view,
            )
            window = CropWindow(0, 0, record.height, record.width, full.flip)
        windows.append(window if flip else window._replace(flip=False))
    return SamplePlan(frames, tuple(windows))

"""Clip sampler shared by the CPU loader and the DALI pipeline (fame-spec section 6).

Every function here is pure: the frames a video yields depend only on (number of frames,
video index, epoch, seed), never on the rank, the world size, the worker or call order. So
the two decoders pick the same frames for the same seed, a run resumed at epoch ``e`` replays
exactly the clips of the original epoch ``e``, and a video gets the same clips whichever rank
happens to load it.

Frame indices are relative to the start of the video's segment (``VideoRecord.start_frame``;
0 for whole videos): pass ``record.segment_frames`` as ``num_frames`` and add
``record.start_frame`` before decoding.

A clip is ``clip_len`` frames ``stride`` apart, spanning ``(clip_len - 1) * stride + 1``
frames (31 for the default 16 x 2). A video shorter than the span starts at 0 and repeats its
last frame (fame-spec: documented, counted, never dropped): ``is_short`` tells the loaders
which videos to count.
"""

from __future__ import annotations

import math

import numpy as np


def clip_span(*, clip_len: int = 16, stride: int = 2) -> int:
    """Frames covered by one clip: ``(clip_len - 1) * stride + 1``."""
    _check_clip(clip_len, stride)
    return (clip_len - 1) * stride + 1


def is_short(num_frames: int, *, clip_len: int = 16, stride: int = 2) -> bool:
    """True when a video has fewer frames than one clip spans, so its clips repeat the last
    frame (``train_clip_indices`` / ``eval_clip_indices`` clamp to ``num_frames - 1``)."""
    _check_frames(num_frames)
    return num_frames < clip_span(clip_len=clip_len, stride=stride)


def train_clip_indices(
    num_frames: int,
    *,
    video_index: int,
    epoch: int,
    seed: int,
    num_views: int = 2,
    clip_len: int = 16,
    stride: int = 2,
) -> np.ndarray:
    """Frame indices of the pretraining views of one video for one epoch.

    The start frames of views 0 and 1 are drawn independently and uniformly from the
    ``num_frames - span + 1`` valid starts (only 0 for a short video). Views 2, 3, ... (the
    intra-video background clip of fame-spec section 3) are drawn uniformly from the valid starts
    other than view 0's, so that the background comes from another timestamp whenever the video
    allows it. Asking for more views never changes the first ones.

    Randomness: ``np.random.Generator(np.random.PCG64([seed, epoch, video_index]))``.

    Args:
        num_frames: frames in the video (segment), >= 1.
        video_index: the video's index in the dataset (its position in the index's record list).
        epoch: epoch number, >= 0.
        seed: run seed, >= 0.
        num_views: clips per video, >= 1 (2 for MoCo, 3 with an intra-video background clip).
        clip_len: frames per clip.
        stride: temporal stride between the frames of a clip.

    Returns:
        int64 array (num_views, clip_len) of frame indices in ``[0, num_frames - 1]``,
        non-decreasing along each row; frames past the end repeat the last frame.
    """
    _check_frames(num_frames)
    for name, value in (("video_index", video_index), ("epoch", epoch), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r}: expected an integer >= 0")
    if num_views < 1:
        raise ValueError(f"num_views={num_views}: expected >= 1")
    span = clip_span(clip_len=clip_len, stride=stride)
    num_starts = max(num_frames - span + 1, 1)
    rng = np.random.Generator(np.random.PCG64([int(seed), int(epoch), int(video_index)]))
    starts = np.empty(num_views, dtype=np.int64)
    starts[: min(num_views, 2)] = rng.integers(0, num_starts, size=min(num_views, 2))
    for v in range(2, num_views):
        if num_starts == 1:
            starts[v] = 0
        else:
            # Uniform over the starts other than view 0's: draw from num_starts - 1 and skip it.
            s = int(rng.integers(0, num_starts - 1))
            starts[v] = s + (s >= starts[0])
    return _clips(starts, num_frames, clip_len, stride)


def eval_clip_indices(
    num_frames: int, *, num_clips: int = 10, clip_len: int = 16, stride: int = 2
) -> np.ndarray:
    """Frame indices of the evaluation clips: ``num_clips`` starts uniformly spaced from the first
    frame to the last valid start (both included), rounded to the nearest frame.

    With ``num_clips == 1`` the single clip is centred. A short video gives ``num_clips``
    identical clips starting at 0 (last frame repeated), so that every video contributes the same
    number of predictions to the 10-clip average.

    Returns:
        int64 array (num_clips, clip_len) of frame indices in ``[0, num_frames - 1]``.
    """
    _check_frames(num_frames)
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips}: expected >= 1")
    span = clip_span(clip_len=clip_len, stride=stride)
    last_start = max(num_frames - span, 0)
    if num_clips == 1:
        starts = np.array([last_start // 2], dtype=np.int64)
    else:
        # Integer arithmetic (no float rounding surprises): round(i * last / (n - 1)), half up.
        i = np.arange(num_clips, dtype=np.int64)
        starts = (2 * i * last_start + (num_clips - 1)) // (2 * (num_clips - 1))
    return _clips(starts, num_frames, clip_len, stride)


def shard_indices(
    num_videos: int,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    shuffle: bool = True,
) -> np.ndarray:
    """Video indices that ``rank`` visits in ``epoch``, in visiting order.

    The epoch's order is one permutation of ``range(num_videos)`` (PCG64([seed, epoch]); the
    identity when ``shuffle`` is False), dealt round-robin: rank r takes positions r,
    r + world_size, ... (as torch's DistributedSampler does). No padding: across ranks every
    video appears exactly once, and shard sizes differ by at most one (the first
    ``num_videos % world_size`` ranks get one more). Training with DDP needs the same number of
    steps on every rank: take ``steps_per_epoch(...)`` batches from each shard.

    Returns:
        int64 array (ceil or floor of num_videos / world_size,) of video indices.
    """
    if num_videos < 0:
        raise ValueError(f"num_videos={num_videos}: expected >= 0")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
    if epoch < 0 or seed < 0:
        raise ValueError(f"epoch={epoch}, seed={seed}: expected integers >= 0")
    if shuffle:
        order = np.random.Generator(np.random.PCG64([int(seed), int(epoch)])).permutation(
            num_videos
        )
    else:
        order = np.arange(num_videos, dtype=np.int64)
    return order[rank::world_size].astype(np.int64, copy=False)


def steps_per_epoch(
    num_videos: int, *, world_size: int, batch_size: int, drop_last: bool = True
) -> int:
    """Batches per rank per epoch for shards made by ``shard_indices``.

    - ``drop_last=True`` (training): ``(num_videos // world_size) // batch_size``, the number of
      full batches that even the smallest shard holds, so that every rank runs the same number
      of DDP steps. Each rank takes the first ``steps * batch_size`` videos of its shard; the
      rest (fewer than ``world_size * (batch_size + 1)`` videos) wait for another epoch, a
      different random subset every epoch since each epoch reshuffles.
    - ``drop_last=False`` (evaluation): ``ceil(ceil(num_videos / world_size) / batch_size)``, the
      largest shard's batch count, so that every video is seen once. Smaller shards may then
      finish one batch earlier: use it only where no collective runs per batch (gather the
      results once at the end), or the ranks would wait for each other forever.
    """
    if num_videos < 0 or world_size < 1 or batch_size < 1:
        raise ValueError(
            f"num_videos={num_videos}, world_size={world_size}, batch_size={batch_size}: "
            "expected num_videos >= 0, world_size >= 1, batch_size >= 1"
        )
    if drop_last:
        return (num_videos // world_size) // batch_size
    return math.ceil(math.ceil(num_videos / world_size) / batch_size)


def _clips(starts: np.ndarray, num_frames: int, clip_len: int, stride: int) -> np.ndarray:
    offsets = np.arange(clip_len, dtype=np.int64) * stride
    return np.minimum(starts.astype(np.int64)[:, None] + offsets[None, :], num_frames - 1)


def _check_clip(clip_len: int, stride: int) -> None:
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len={clip_len}, stride={stride}: expected both >= 1")


def _check_frames(num_frames: int) -> None:
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r}: expected an integer >= 1")

"""CPU clip loader: a torch DataLoader that decodes with PyAV in worker processes.

One sample is one video. In ``"train"`` mode a video yields ``num_views`` clips (the sampler's
:func:`~dali_fame.data.sampler.train_clip_indices`), each with its own RandomResizedCrop
(area 0.2-1, aspect 3/4-4/3) and horizontal flip, one draw per clip applied to all its frames.
In ``"eval"`` mode a video yields ``eval_clips`` uniformly spaced clips
(:func:`~dali_fame.data.sampler.eval_clip_indices`), each resized short side -> ``crop`` and
centre-cropped, never flipped.

Batches (the same dict from :mod:`dali_fame.data.dali_pipeline`):

* ``"views"``: uint8 ``(B, V, T, crop, crop, 3)`` RGB, channels-last; ``V = num_views`` in train
  mode, ``V = eval_clips`` in eval mode. One stacked tensor (not a list) so that a batch moves
  to the device in one copy; ``views[:, v]`` is view ``v`` as ``(B, T, crop, crop, 3)``.
* ``"labels"``: int64 ``(B,)``.
* ``"index"``: int64 ``(B,)``, the video's position in ``records`` (what seeds its draws).

Reproducibility: every random draw is a pure function of ``(seed, epoch, video_index[, view])``:
the frame indices come from the shared sampler and the crop/flip from
:func:`clip_crop_window`, so the result does not depend on the number of workers, on which
worker ran a sample, or on the loader (the DALI pipeline calls the same functions).

Pixels: with the default ``rgb="exact"`` the decoded frames are bit-identical to
:func:`dali_fame.data.video_io.read_frames` and to DALI's CPU decoder; ``rgb="fast"`` trades
that for FFmpeg's cheaper default YUV->RGB (see :class:`FrameDecoder`; numbers in
benchmarks/results/bench_loader.md).

Unreadable videos: a video that fails to open or decode mid-epoch is dropped from its batch
(the batch is shorter by one), a warning naming the file and the reason is logged, and the
loader counts it (:attr:`CPUClipLoader.skipped`, :attr:`CPUClipLoader.stats`). Nothing crashes
and nothing is dropped silently; ``delivered + skipped == visited`` holds for every epoch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from dali_fame.data.frame_decoder import RGB_MODES, FrameDecoder
from dali_fame.data.plan import MODES, CropWindow, SamplePlan, plan_sample
from dali_fame.data.shard import ShardBatchSampler

if TYPE_CHECKING:
    from dali_fame.data.records import VideoRecord

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# dataset, sampler, loader

@dataclasses.dataclass(frozen=True)
class SkippedVideo:
    """A video that could not be loaded: what the loaders report and count.

    Attributes:
        index: its position in ``records``.
        path: the file.
        reason: the error, in words.
        epoch: the epoch it was skipped in.
    """

    index: int
    path: str
    reason: str
    epoch: int


class VideoClipDataset(torch.utils.data.Dataset):
    """One item = one video's clips, keyed by ``(epoch, video_index)``.

    The key carries the epoch so that persistent workers (which hold a copy of the dataset made
    when they started) still draw each epoch's clips: the sampler lives in the main process.

    ``decoder_factory`` (picklable, called once per worker) may supply another decoder with
    :meth:`FrameDecoder.decode`'s contract (benchmarks compare torchcodec and decord this way);
    the default is :class:`FrameDecoder`.

    ``dataset[(epoch, i)]`` returns ``dict(views=uint8 (V, T, crop, crop, 3), label=int,
    index=int)``, or a :class:`SkippedVideo` when the file cannot be decoded.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        crop: int | None,
        num_views: int = 2,
        clip_len: int = 16,
        stride: int = 2,
        seed: int = 0,
        mode: str = "train",
        eval_clips: int = 10,
        flip: bool = True,
        decode_threads: int = 1,
        rgb: str = "exact",
        decoder_factory: Callable[[], Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be a positive number of pixels or None, got {crop}")
        self.records = list(records)
        self.crop = crop
        self.num_views = int(num_views)
        self.clip_len = int(clip_len)
        self.stride = int(stride)
        self.seed = int(seed)
        self.mode = mode
        self.eval_clips = int(eval_clips)
        self.flip = bool(flip)
        self.decode_threads = int(decode_threads)
        if rgb not in RGB_MODES:
            raise ValueError(f"rgb must be one of {RGB_MODES}, got {rgb!r}")
        self.rgb = rgb
        self.decoder_factory = decoder_factory
        self._decoder: FrameDecoder | None = None  # made lazily, once per worker process

    def __len__(self) -> int:
        return len(self.records)

    def plan(self, video_index: int, epoch: int) -> SamplePlan:
        """This sample's frame indices and crop windows (see :func:`plan_sample`)."""
        return plan_sample(
            self.records[video_index], video_index=video_index, epoch=epoch, seed=self.seed,
            mode=self.mode, num_views=self.num_views, clip_len=self.clip_len,
            stride=self.stride, eval_clips=self.eval_clips, crop=self.crop, flip=self.flip,
        )

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any] | SkippedVideo:
        epoch, _position, video_index = key if isinstance(key, tuple) else (0, key, key)
        record = self.records[video_index]
        if self._decoder is None:
            factory = self.decoder_factory
            self._decoder = (
                factory() if factory else FrameDecoder(threads=self.decode_threads, rgb=self.rgb)
            )
        try:
            plan = self.plan(video_index, epoch)
            views_t, clip_len = plan.frame_indices.shape
            frames = self._decoder.decode(record.path, plan.frame_indices.reshape(-1))
            frames = frames.reshape(views_t, clip_len, *frames.shape[1:])
            views = torch.stack(
                [crop_resize_flip(frames[v], plan.windows[v], self.crop) for v in range(views_t)]
            )
        except Exception as exc:  # noqa: BLE001 - any failure of one file must not end the epoch
            return SkippedVideo(video_index, record.path, f"{type(exc).__name__}: {exc}", epoch)
        from dali_fame.data.sampler import is_short

        short = is_short(int(record.segment_frames), clip_len=self.clip_len, stride=self.stride)
        return {"views": views, "label": int(record.label), "index": int(video_index),
                "short": short}

def collate_clips(items: list[dict[str, Any] | SkippedVideo]) -> dict[str, Any]:
    """Stack the good items; pass the skipped ones along under ``"skipped"`` for reporting.

    Returns:
        ``views`` uint8 ``(B', V, T, H, W, 3)``, ``labels`` int64 ``(B',)``, ``index`` int64
        ``(B',)`` with ``B'`` the good items (``views`` is None when there are none),
        ``skipped``: list of :class:`SkippedVideo`, ``short``: how many good items came from
        videos shorter than one clip's span (their clips repeat the last frame).
    """
    good = [item for item in items if not isinstance(item, SkippedVideo)]
    skipped = [item for item in items if isinstance(item, SkippedVideo)]
    short = sum(int(item["short"]) for item in good)
    if not good:
        return {"views": None, "labels": None, "index": None, "skipped": skipped, "short": 0}
    return {
        "short": short,
        "views": torch.stack([item["views"] for item in good]),
        "labels": torch.tensor([item["label"] for item in good], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in good], dtype=torch.int64),
        "skipped": skipped,
    }


class CPUClipLoader:
    """The iterable the trainer sees: batches of plain tensors, ``__len__`` and ``set_epoch``.

    Iterating yields ``dict(views, labels, index)`` (see the module docstring); a batch that
    lost videos to decode errors is shorter, and a batch that lost all of them is not yielded.
    ``len(loader)`` is the number of batches scheduled per epoch.

    Attributes:
        skipped: every :class:`SkippedVideo` so far (all epochs).
        stats: this epoch's counts: ``visited`` (videos scheduled and processed), ``delivered``,
            ``skipped`` and ``short`` (delivered videos shorter than a clip's span, whose clips
            repeat their last frame); ``visited == delivered + skipped`` once an epoch completes.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: ShardBatchSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self.skipped: list[SkippedVideo] = []
        self.stats = {"visited": 0, "delivered": 0, "skipped": 0, "short": 0}

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.stats = {"visited": 0, "delivered": 0, "skipped": 0, "short": 0}
        for batch in self.loader:
            skipped = batch.pop("skipped")
            self.stats["short"] += int(batch.pop("short"))
            for item in skipped:
                logger.warning(
                    "skipped unreadable video %s (index %d, epoch %d): %s",
                    item.path, item.index, item.epoch, item.reason,
                )
            self.skipped.extend(skipped)
            delivered = 0 if batch["views"] is None else int(batch["views"].shape[0])
            self.stats["visited"] += delivered + len(skipped)
            self.stats["delivered"] += delivered
            self.stats["skipped"] += len(skipped)
            if delivered:
                yield batch


def build_cpu_loader(
    records: Sequence[VideoRecord],
    *,
    batch_size: int,
    crop: int | None,
    num_views: int = 2,
    clip_len: int = 16,
    stride: int = 2,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    mode: str = "train",
    eval_clips: int = 10,
    drop_last: bool = True,
    flip: bool = True,
    prefetch_factor: int = 2,
    pin_memory: bool | None = None,
    decode_threads: int = 1,
    rgb: str = "exact",
    decoder_factory: Callable[[], Any] | None = None,
) -> CPUClipLoader:
    """Build the PyAV DataLoader for this rank.

    Args:
        records: validated videos (the index's output); a video's position is its index.
        batch_size: videos per batch on this rank.
        crop: output side (112 or 224); ``None`` returns full frames (tests / inspection).
        num_views, clip_len, stride: train-mode clips per video and their frames / step.
        workers: decoding processes (0 decodes in the main process).
        seed: the run's seed (with epoch and video index, all randomness of a sample).
        rank, world_size: global rank and number of processes; each rank gets its shard.
        mode: ``"train"`` (shuffled shard, random clips/crops/flips) or ``"eval"`` (fixed order,
            ``eval_clips`` uniform clips, centre crop).
        drop_last: drop the last incomplete batch of the shard.
        flip: allow the random horizontal flip (train mode).
        prefetch_factor: batches each worker prepares ahead.
        pin_memory: page-lock batches for fast host->GPU copies; default: when CUDA is available.
        decode_threads: FFmpeg threads per worker (1 is best when workers == cores).
        rgb: ``"exact"`` (pixels bit-identical to ``video_io.read_frames`` and DALI's CPU
            decoder) or ``"fast"`` (FFmpeg's default conversion, ~1.2-1.3x the clips/s on small
            videos, mean |diff| ~1.4); see :class:`FrameDecoder`.
        decoder_factory: another frame decoder for the workers (see :class:`VideoClipDataset`).

    Returns:
        :class:`CPUClipLoader`: iterate it, call ``set_epoch(epoch)`` before each epoch. Its
        batches: ``views`` uint8 ``(B, V, T, crop, crop, 3)``, ``labels`` int64 ``(B,)``,
        ``index`` int64 ``(B,)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    dataset = VideoClipDataset(
        records, crop=crop, num_views=num_views, clip_len=clip_len, stride=stride, seed=seed,
        mode=mode, eval_clips=eval_clips, flip=flip, decode_threads=decode_threads, rgb=rgb,
        decoder_factory=decoder_factory,
    )
    sampler = ShardBatchSampler(
        len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        shuffle=(mode == "train"), drop_last=drop_last,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_clips,
        pin_memory=pin_memory, **extra,
    )
    return CPUClipLoader(loader, sampler)

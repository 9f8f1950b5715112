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
* ``"labels"``: int64 ``(B,)``, the labels of the videos delivered.
* ``"index"``: int64 ``(B,)``, the delivered videos' positions in ``records`` (what seeds their
  draws); a substitute (below) appears under its own index and label.

Reproducibility: every random draw is a pure function of ``(seed, epoch, video_index[, view])``:
the frame indices come from the shared sampler and the crop/flip from
:func:`~dali_fame.data.plan.clip_crop_window`, so the result does not depend on the number of
workers, on which worker ran a sample, or on the loader (the DALI pipeline calls the same
functions).

Pixels: with the default ``rgb="exact"`` the decoded frames are bit-identical to
:func:`dali_fame.data.video_io.read_frames` and to DALI's CPU decoder; ``rgb="fast"`` trades
that for FFmpeg's cheaper default YUV->RGB (see :class:`FrameDecoder`; numbers in
benchmarks/results/bench_loader.md).

Unreadable videos (see :mod:`dali_fame.data.ledger`): a video that fails to open or decode
mid-epoch is replaced, in the worker that met it, by the first video of
:func:`~dali_fame.data.ledger.substitute_candidates` (same shard; a pure function of seed, epoch
and position) that loads. So every batch keeps its size and every rank yields exactly
``len(loader)`` batches per epoch, the same batches whatever the number of workers; DDP ranks
never wait on one another. Each bad file is warned about once (by path and reason) and counted
(:attr:`CPUClipLoader.stats`: ``visited == delivered + replaced``; :attr:`CPUClipLoader.failures`).
When no video of the shard loads any more, iterating raises
:class:`~dali_fame.data.ledger.NoHealthyVideoError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dali_fame.data.crop import crop_resize_flip
from dali_fame.data.frame_decoder import RGB_MODES, FrameDecoder
from dali_fame.data.ledger import (
    FailedVideo,
    NoHealthyVideoError,
    VideoLedger,
    substitute_candidates,
)
from dali_fame.data.plan import MODES, SamplePlan, plan_sample
from dali_fame.data.sampler import is_short, shard_indices
from dali_fame.data.shard import ShardBatchSampler

if TYPE_CHECKING:
    from dali_fame.data.records import VideoRecord

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# dataset and loader


@dataclasses.dataclass(frozen=True)
class ShardExhausted:
    """What a worker returns when neither a video nor any substitute of its shard loads.

    The worker does not raise (a worker exception loses the failures met on the way); the main
    process turns this into :class:`~dali_fame.data.ledger.NoHealthyVideoError`.

    Attributes:
        index: the scheduled video (its position in ``records``).
        position: its place in the shard.
        epoch: the epoch.
        shard_size: videos in this rank's shard.
        failures: every :class:`FailedVideo` met: the video itself, then each candidate.
    """

    index: int
    position: int
    epoch: int
    shard_size: int
    failures: tuple[FailedVideo, ...]


class VideoClipDataset(torch.utils.data.Dataset):
    """One item = one batch place's clips, keyed by ``(epoch, position, video_index)``.

    The key carries the epoch so that persistent workers (which hold a copy of the dataset made
    when they started) still draw each epoch's clips: the sampler lives in the main process.
    ``position`` is the video's place in this rank's shard, which the dataset recomputes itself
    (:func:`~dali_fame.data.sampler.shard_indices` with ``seed``, ``rank``, ``world_size``,
    ``shuffle``: the same arguments as the :class:`ShardBatchSampler`) to find substitutes in
    the worker, off the training thread.

    ``decoder_factory`` (picklable, called once per worker) may supply another decoder with
    :meth:`FrameDecoder.decode`'s contract (benchmarks compare torchcodec and decord this way);
    the default is :class:`FrameDecoder`.

    ``dataset[(epoch, position, i)]`` returns ``dict(views=uint8 (V, T, crop, crop, 3),
    label=int, index=int, short=bool, replaced=bool, failures=list[FailedVideo])``: the clips of
    video ``i`` or, when it fails to load, of the first substitute that loads (``label`` and
    ``index`` are then the substitute's, ``replaced`` is True, ``failures`` lists every video
    that failed on the way). When nothing in the shard loads it returns a
    :class:`ShardExhausted`.
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
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be a positive number of pixels or None, got {crop}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
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
        self.rank = int(rank)
        self.world_size = int(world_size)
        # The sampler's default: train shuffles, eval keeps the records' order.
        self.shuffle = (mode == "train") if shuffle is None else bool(shuffle)
        self._decoder: FrameDecoder | None = None  # made lazily, once per worker process
        self._shard: tuple[int, np.ndarray] | None = None  # (epoch, shard)
        # This worker's failures in the current epoch, by video index: a bad video is not
        # decoded again for each place it could stand in for. Kept for one epoch only, so a
        # transient error (a network file system) does not bar a video for the whole run.
        self._failed: tuple[int, dict[int, FailedVideo]] = (-1, {})

    def __len__(self) -> int:
        return len(self.records)

    def plan(self, video_index: int, epoch: int) -> SamplePlan:
        """This sample's frame indices and crop windows (see :func:`plan_sample`)."""
        return plan_sample(
            self.records[video_index], video_index=video_index, epoch=epoch, seed=self.seed,
            mode=self.mode, num_views=self.num_views, clip_len=self.clip_len,
            stride=self.stride, eval_clips=self.eval_clips, crop=self.crop, flip=self.flip,
        )

    def shard(self, epoch: int) -> np.ndarray:
        """int64 ``(n,)`` this rank's whole shard in ``epoch`` (= ``ShardBatchSampler.shard()``)."""
        if self._shard is None or self._shard[0] != epoch:
            shard = shard_indices(len(self.records), epoch=epoch, seed=self.seed,
                                  rank=self.rank, world_size=self.world_size,
                                  shuffle=self.shuffle)
            self._shard = (epoch, np.asarray(shard, dtype=np.int64))
        return self._shard[1]

    def load(self, video_index: int, epoch: int) -> torch.Tensor:
        """Decode, crop and flip one video's clips.

        Returns:
            uint8 ``(V, T, crop, crop, 3)`` (``(V, T, H, W, 3)`` with ``crop=None``).

        Raises:
            Exception: whatever planning, decoding or cropping raised for this file.
        """
        if self._decoder is None:
            factory = self.decoder_factory
            self._decoder = (
                factory() if factory else FrameDecoder(threads=self.decode_threads, rgb=self.rgb)
            )
        plan = self.plan(video_index, epoch)
        views_t, clip_len = plan.frame_indices.shape
        frames = self._decoder.decode(self.records[video_index].path,
                                      plan.frame_indices.reshape(-1))
        frames = frames.reshape(views_t, clip_len, *frames.shape[1:])
        return torch.stack(
            [crop_resize_flip(frames[v], plan.windows[v], self.crop) for v in range(views_t)]
        )

    def _try(self, video_index: int, epoch: int) -> torch.Tensor | FailedVideo:
        """:meth:`load`, or the video's :class:`FailedVideo` (remembered for this epoch)."""
        if self._failed[0] != epoch:
            self._failed = (epoch, {})
        known = self._failed[1].get(video_index)
        if known is not None:
            return known
        try:
            return self.load(video_index, epoch)
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the epoch
            failed = FailedVideo(video_index, self.records[video_index].path,
                                 f"{type(exc).__name__}: {exc}", epoch)
            self._failed[1][video_index] = failed
            return failed

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any] | ShardExhausted:
        epoch, position, video_index = (int(k) for k in key)
        failures: list[FailedVideo] = []
        got = self._try(video_index, epoch)
        delivered = video_index
        if isinstance(got, FailedVideo):
            failures.append(got)
            shard = self.shard(epoch)
            if not (0 <= position < len(shard) and shard[position] == video_index):
                raise ValueError(
                    f"key {key} does not match this dataset's shard (rank {self.rank}, "
                    f"world_size {self.world_size}, seed {self.seed}, shuffle {self.shuffle}): "
                    "build the dataset and the ShardBatchSampler with the same arguments"
                )
            # The whole shard, in order; a bad file fails fast (the container does not parse)
            # and is tried at most once per worker and epoch, so this bound is cheap.
            candidates = substitute_candidates(shard, seed=self.seed, epoch=epoch,
                                               position=position)
            for candidate in candidates.tolist():
                got = self._try(candidate, epoch)
                if not isinstance(got, FailedVideo):
                    delivered = candidate
                    break
                failures.append(got)
            else:
                return ShardExhausted(video_index, position, epoch, len(shard), tuple(failures))
        record = self.records[delivered]
        short = is_short(int(record.segment_frames), clip_len=self.clip_len, stride=self.stride)
        return {"views": got, "label": int(record.label), "index": int(delivered),
                "short": short, "replaced": delivered != video_index, "failures": failures}


def collate_clips(items: list[dict[str, Any] | ShardExhausted]) -> dict[str, Any]:
    """Stack one batch's items; pass the failures along for the main process to report.

    Returns:
        ``views`` uint8 ``(B, V, T, H, W, 3)``, ``labels`` int64 ``(B,)``, ``index`` int64
        ``(B,)`` (B = every place of the batch: failed videos were already replaced),
        ``failures``: list of :class:`FailedVideo` met in this batch, ``replaced``: places
        filled by a substitute, ``short``: places filled by a video shorter than one clip's
        span (its clips repeat the last frame), ``exhausted``: None, or the first
        :class:`ShardExhausted` (then ``views``, ``labels`` and ``index`` are None).
    """
    failures = [f for item in items
                for f in (item.failures if isinstance(item, ShardExhausted) else item["failures"])]
    exhausted = next((item for item in items if isinstance(item, ShardExhausted)), None)
    if exhausted is not None:
        return {"views": None, "labels": None, "index": None, "failures": failures,
                "replaced": 0, "short": 0, "exhausted": exhausted}
    return {
        "views": torch.stack([item["views"] for item in items]),
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "failures": failures,
        "replaced": sum(int(item["replaced"]) for item in items),
        "short": sum(int(item["short"]) for item in items),
        "exhausted": None,
    }


class CPUClipLoader:
    """The iterable the trainer sees: batches of plain tensors, ``__len__`` and ``set_epoch``.

    Iterating yields ``dict(views, labels, index)`` (see the module docstring), exactly
    ``len(loader) - start_batch`` batches per epoch, each with all its places filled (a failed
    video's place holds a substitute from the same shard). ``len(loader)`` is the number of
    batches of a whole epoch; with ``drop_last`` (training) every batch has ``batch_size``
    videos, without it (test passes) the shard's last batch may hold fewer.

    Raises (while iterating):
        NoHealthyVideoError: a video failed and no video of this rank's shard could stand in
            for it; the message names the rank, epoch, how many videos failed and the first
            few files. Its failures are in :attr:`failures` (and were warned about) first.

    Attributes:
        ledger: the :class:`~dali_fame.data.ledger.VideoLedger` (failures and counts).
        failures: every :class:`~dali_fame.data.ledger.FailedVideo` so far (all epochs, each
            failed load attempt, substitutes tried included).
        stats: this pass's counts: ``visited`` (batch places yielded), ``delivered`` (filled by
            their own video), ``replaced`` (filled by a substitute) and ``short``;
            ``visited == delivered + replaced``. Reset when iteration starts.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: ShardBatchSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self.ledger = VideoLedger()

    @property
    def stats(self) -> dict[str, int]:
        return self.ledger.stats

    @property
    def failures(self) -> list[FailedVideo]:
        return self.ledger.failures

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; iteration then starts at batch ``start_batch`` (resuming mid-epoch:
        the same batches as an uninterrupted epoch from there on, the skipped ones not loaded)."""
        self.sampler.set_epoch(epoch, start_batch=start_batch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.ledger.start_epoch()
        for batch in self.loader:
            for failure in batch.pop("failures"):
                self.ledger.fail(failure)
            exhausted = batch.pop("exhausted")
            if exhausted is not None:
                raise NoHealthyVideoError.for_shard(
                    exhausted.failures, rank=self.sampler.rank, world_size=self.sampler.world_size,
                    epoch=exhausted.epoch, video=exhausted.index, shard_size=exhausted.shard_size)
            replaced, short = int(batch.pop("replaced")), int(batch.pop("short"))
            self.ledger.count(delivered=int(batch["index"].shape[0]) - replaced,
                              replaced=replaced, short=short)
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
        drop_last: drop the last incomplete batch of the shard (its videos may still stand in
            for failed ones).
        flip: allow the random horizontal flip (train mode).
        prefetch_factor: batches each worker prepares ahead.
        pin_memory: page-lock batches for fast host->GPU copies; default: when CUDA is available.
        decode_threads: FFmpeg threads per worker (1 is best when workers == cores).
        rgb: ``"exact"`` (pixels bit-identical to ``video_io.read_frames`` and DALI's CPU
            decoder) or ``"fast"`` (FFmpeg's default conversion, ~1.2-1.3x the clips/s on small
            videos, mean |diff| ~1.4); see :class:`FrameDecoder`.
        decoder_factory: another frame decoder for the workers (see :class:`VideoClipDataset`).

    Returns:
        :class:`CPUClipLoader`: iterate it, call ``set_epoch(epoch[, start_batch])`` before
        each epoch. Its batches: ``views`` uint8 ``(B, V, T, crop, crop, 3)``, ``labels`` int64
        ``(B,)``, ``index`` int64 ``(B,)``; iterating raises ``NoHealthyVideoError`` when a
        failed video cannot be replaced.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    shuffle = mode == "train"
    dataset = VideoClipDataset(
        records, crop=crop, num_views=num_views, clip_len=clip_len, stride=stride, seed=seed,
        mode=mode, eval_clips=eval_clips, flip=flip, decode_threads=decode_threads, rgb=rgb,
        decoder_factory=decoder_factory, rank=rank, world_size=world_size, shuffle=shuffle,
    )
    sampler = ShardBatchSampler(
        len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        shuffle=shuffle, drop_last=drop_last,
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

"""DALI clip pipeline: the CPU loader's semantics with DALI's video decoder.

One ``@pipeline_def`` (:func:`clip_pipeline`): a Python external source feeds, per video, the
encoded file bytes, the sampler's frame indices for all views, and each view's crop window and
flip (drawn by :func:`~dali_fame.data.cpu_loader.plan_sample`, the very function the CPU loader
uses); ``fn.decoders.video`` decodes exactly those frames (``device="mixed"`` on a GPU: NVDEC
for H.264/HEVC/VP9/AV1; ``"cpu"`` otherwise: VP9, VP8 and MJPEG only); per view, ``fn.slice`` cuts the crop box,
``fn.resize`` resizes it (bilinear, antialiased) and ``fn.flip`` mirrors it, one draw per clip
for all its frames. (``fn.resize``'s own ROI would read pixels outside the box for the filter
support; slicing first keeps the result equal to the CPU loader's crop-then-resize.)

So for the same seed both loaders decode the same frames and use the same crop boxes: with
``crop=None`` the clips are bit-identical to the CPU loader's (DALI's CPU decoder converts
YUV->RGB like :func:`dali_fame.data.video_io.read_frames`); with a crop they differ only by the
resampling arithmetic of the resize (torch vs DALI: mean abs difference < 0.3 on 0..255,
99.9 % of values within 1, see tests/data/test_dali_pipeline.py).

The trainer sees :class:`DaliClipLoader`: ``__len__``, ``set_epoch`` and the CPU loader's batch
dict (``views`` uint8 ``(B, V, T, crop, crop, 3)``, ``labels`` int64 ``(B,)``, ``index`` int64
``(B,)``), on the GPU for ``device="gpu"``. It is never passed to ``accelerator.prepare``: it
shards itself (``shard_id`` = global rank, ``num_shards`` = world size, ``device_id`` = local
rank), which Accelerate could not do for it.

Unreadable files: the source checks each file before feeding it (readable, non-empty, a video
stream in the container) and drops a bad one from its batch with a logged warning; if DALI still
fails on a batch (it raises for the whole batch), that batch is dropped, its files are checked
with PyAV to name the culprit, every dropped file is logged and counted, and the run goes on.
DALI's CPU decoder can return wrong frames for some damaged (e.g. truncated) files without an
error: the index (``dali-fame index``) must catch those before training.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dali_fame.data.cpu_loader import SkippedVideo
from dali_fame.data.frame_decoder import FrameDecoder
from dali_fame.data.plan import MODES, plan_sample
from dali_fame.data.shard import ShardBatchSampler

if TYPE_CHECKING:
    from dali_fame.data.records import VideoRecord

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu")


def _check_encoded(path: str, frames_needed: int) -> tuple[np.ndarray | None, str | None]:
    """Read a file and check it before DALI sees it: non-empty, opens as a container with a
    video stream, and holds at least ``frames_needed`` video packets (demuxed, not decoded:
    DALI silently returns wrong frames past the end of a truncated file).

    Returns:
        ``(bytes uint8 (N,), None)`` or ``(None, reason)``.
    """
    import av

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot read: {exc}"
    if data.size == 0:
        return None, "empty file (0 bytes)"
    try:
        with av.open(io.BytesIO(data.tobytes()), mode="r") as container:
            if not container.streams.video:
                return None, "no video stream"
            packets = 0
            for packet in container.demux(container.streams.video[0]):
                packets += packet.size > 0
                if packets >= frames_needed:
                    break
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return None, f"cannot open: {exc}"
    if packets < frames_needed:
        return None, f"truncated: frame {frames_needed - 1} needed, {packets} frames in the file"
    return data, None


@dataclasses.dataclass
class _FedBatch:
    epoch: int
    indices: list[int]  # video indices fed, in sample order
    paths: list[str]


class ClipSource:
    """The external source: one call returns one batch (lists, one entry per video).

    Three outputs per video: encoded bytes uint8 ``(N,)``; frame indices int32 ``(V * T,)``
    (view major); then, with a crop, the boxes float32 ``(V, 5)`` as ``(y, x, h, w, flip)`` in
    source pixels, or without one, the flip flags int32 ``(V,)``. Raises StopIteration at the
    end of the epoch.

    Files that fail the pre-check are recorded in :attr:`skipped_now` and left out of the batch;
    a batch whose files all fail is skipped whole.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        sampler: ShardBatchSampler,
        *,
        plan_kwargs: dict[str, Any],
    ) -> None:
        self.records = list(records)
        self.sampler = sampler
        self.plan_kwargs = plan_kwargs
        self.fed: collections.deque[_FedBatch] = collections.deque()
        self.skipped_now: list[SkippedVideo] = []
        self._batches: collections.deque[np.ndarray] = collections.deque()
        self._epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)
        self.sampler.set_epoch(epoch)
        shard = self.sampler.shard()
        self._batches = collections.deque(shard[p] for p in self.sampler.batches())

    def stop(self) -> None:
        """Feed nothing more this epoch (used to drain an epoch left unfinished)."""
        self._batches.clear()

    def __call__(self):
        while self._batches:
            batch = self._batches.popleft()
            encoded, frames, extra = [], [], []
            fed = _FedBatch(self._epoch, [], [])
            for video_index in batch.tolist():
                record = self.records[video_index]
                data = plan = None
                try:
                    plan = plan_sample(record, video_index=video_index, epoch=self._epoch,
                                       **self.plan_kwargs)
                    data, reason = _check_encoded(record.path, int(plan.frame_indices.max()) + 1)
                except ValueError as exc:
                    reason = str(exc)
                if data is None:
                    self.skipped_now.append(
                        SkippedVideo(video_index, record.path, str(reason), self._epoch)
                    )
                    continue
                views = plan.frame_indices.shape[0]
                roi = np.zeros((views, 5), np.float32)
                flip = np.zeros((views,), np.int32)
                for v, window in enumerate(plan.windows):
                    if window is None:
                        continue
                    roi[v] = (window.y, window.x, window.h, window.w, float(window.flip))
                    flip[v] = int(window.flip)
                encoded.append(data)
                frames.append(plan.frame_indices.reshape(-1).astype(np.int32))
                extra.append(flip if self.plan_kwargs["crop"] is None else roi)
                fed.indices.append(video_index)
                fed.paths.append(record.path)
            if fed.indices:
                self.fed.append(fed)
                return encoded, frames, extra
        raise StopIteration


def clip_pipeline_fn(
    source: ClipSource, *, num_views: int, clip_len: int, crop: int | None, device: str
):
    """The graph of :func:`clip_pipeline` (undecorated, for reading and testing).

    Returns:
        One DataNode: uint8 ``(V, T, crop, crop, 3)`` per sample, layout ``"VFHWC"`` (full
        frames when ``crop`` is None), on the GPU for ``device="gpu"``.
    """
    from nvidia.dali import fn, types

    encoded, frames, extra = fn.external_source(
        source=source, num_outputs=3, batch=True,
        dtype=[types.UINT8, types.INT32, types.INT32 if crop is None else types.FLOAT],
    )
    video = fn.decoders.video(
        encoded, frames=frames, device="mixed" if device == "gpu" else "cpu"
    )
    views = []
    for v in range(num_views):
        clip = video[v * clip_len : (v + 1) * clip_len]
        if crop is None:
            clip = fn.flip(clip, horizontal=extra[v], vertical=0)
        else:
            clip = fn.slice(clip, extra[v, 0:2], extra[v, 2:4], axis_names="HW",
                            normalized_anchor=False, normalized_shape=False)
            clip = fn.resize(clip, size=[crop, crop], interp_type=types.INTERP_LINEAR,
                             antialias=True)
            clip = fn.flip(clip, horizontal=fn.cast(extra[v, 4], dtype=types.INT32), vertical=0)
        views.append(clip)
    return fn.stack(*views, axis=0, axis_name="V")


def clip_pipeline(source: ClipSource, *, num_views: int, clip_len: int, crop: int | None,
                  device: str, **pipeline_kwargs):
    """Instantiate the ``@pipeline_def`` pipeline (``pipeline_kwargs``: batch_size,
    num_threads, device_id, prefetch_queue_depth, seed, ...)."""
    from nvidia.dali import pipeline_def

    defined = pipeline_def(clip_pipeline_fn)
    return defined(source, num_views=num_views, clip_len=clip_len, crop=crop, device=device,
                   **pipeline_kwargs)


class DaliClipLoader:
    """Iterates the DALI pipeline as plain torch batches (same dict as the CPU loader).

    Attributes:
        skipped: every :class:`~dali_fame.data.cpu_loader.SkippedVideo` so far.
        stats: this epoch's ``visited``, ``delivered``, ``skipped`` (``visited == delivered +
            skipped`` after a full epoch) and ``short`` counts.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        pipe,
        source: ClipSource,
        sampler: ShardBatchSampler,
        device: str,
        device_id: int | None,
        clip_len: int,
        stride: int,
    ) -> None:
        self.records = list(records)
        self.pipe = pipe
        self.source = source
        self.sampler = sampler
        self.device = device
        self.device_id = device_id
        self.clip_len = clip_len
        self.stride = stride
        self.skipped: list[SkippedVideo] = []
        self.stats = {"visited": 0, "delivered": 0, "skipped": 0, "short": 0}
        self._epoch = 0
        self._in_epoch = False
        self._needs_reset = False
        self._checker = FrameDecoder()

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def _report(self, items: list[SkippedVideo]) -> None:
        for item in items:
            logger.warning(
                "skipped unreadable video %s (index %d, epoch %d): %s",
                item.path, item.index, item.epoch, item.reason,
            )
        self.skipped.extend(items)
        self.stats["skipped"] += len(items)
        self.stats["visited"] += len(items)

    def _drain(self) -> None:
        """Finish an epoch abandoned mid-way: stop feeding, discard what is in flight."""
        self.source.stop()
        while True:
            try:
                self.pipe.run()
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - a failing batch being discarded anyway
                logger.debug("discarded a failing batch while draining: %s", exc)
            if self.source.fed:
                self.source.fed.popleft()
        self.source.fed.clear()
        self._needs_reset = True

    def _diagnose(self, fed: _FedBatch, error: Exception) -> list[SkippedVideo]:
        """Name the files of a batch that DALI failed on (PyAV decodes the planned frames)."""
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        out = []
        for video_index, path in zip(fed.indices, fed.paths):
            plan = plan_sample(self.records[video_index], video_index=video_index,
                               epoch=fed.epoch, **self.source.plan_kwargs)
            try:
                self._checker.decode(path, plan.frame_indices.reshape(-1))
                reason = f"dropped with a batch DALI failed to decode ({first_line})"
            except Exception as exc:  # noqa: BLE001
                reason = f"DALI failed to decode its batch; PyAV: {type(exc).__name__}: {exc}"
            out.append(SkippedVideo(video_index, path, reason, fed.epoch))
        return out

    def _to_torch(self, tensor_list) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        shape = tuple(dense.shape())
        if self.device == "gpu":
            device = self._to_device()
            out = torch.empty(shape, dtype=torch.uint8, device=device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        else:
            out = torch.empty(shape, dtype=torch.uint8)
            feed_ndarray(dense, out)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from dali_fame.data.sampler import is_short

        if self._in_epoch:
            self._drain()
        if self._needs_reset:
            self.pipe.reset()
            self._needs_reset = False
        self.stats = {"visited": 0, "delivered": 0, "skipped": 0, "short": 0}
        self.source.start_epoch(self._epoch)
        self._in_epoch = True
        while True:
            try:
                (views,) = self.pipe.run()
            except StopIteration:
                self._report(self.source.skipped_now)
                self.source.skipped_now.clear()
                break
            except Exception as exc:  # DALI raises RuntimeError for bad data
                self._report(self.source.skipped_now)
                self.source.skipped_now.clear()
                if not self.source.fed:
                    raise
                self._report(self._diagnose(self.source.fed.popleft(), exc))
                continue
            self._report(self.source.skipped_now)
            self.source.skipped_now.clear()
            fed = self.source.fed.popleft()
            index = torch.tensor(fed.indices, dtype=torch.int64)
            labels = torch.tensor([self.records[i].label for i in fed.indices], dtype=torch.int64)
            self.stats["visited"] += len(fed.indices)
            self.stats["delivered"] += len(fed.indices)
            self.stats["short"] += sum(
                is_short(self.records[i].segment_frames, clip_len=self.clip_len,
                         stride=self.stride)
                for i in fed.indices
            )
            if self.device == "gpu":
                index, labels = index.to(self._to_device()), labels.to(self._to_device())
            yield {"views": self._to_torch(views), "labels": labels, "index": index}
        self._in_epoch = False
        self._needs_reset = True

    def _to_device(self) -> torch.device:
        return torch.device("cuda", self.device_id or 0)


def build_dali_loader(
    records: Sequence[VideoRecord],
    *,
    batch_size: int,
    crop: int | None,
    num_views: int = 2,
    clip_len: int = 16,
    stride: int = 2,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    local_rank: int = 0,
    device: str = "gpu",
    mode: str = "train",
    eval_clips: int = 10,
    drop_last: bool = True,
    flip: bool = True,
    num_threads: int = 2,
    prefetch_queue_depth: int = 2,
) -> DaliClipLoader:
    """Build the DALI clip loader for this rank (same arguments as ``build_cpu_loader``).

    Args:
        records: validated videos; on ``device="cpu"`` they must be VP9, VP8 or MJPEG.
        batch_size: videos per batch on this rank.
        crop: output side; ``None`` returns full frames (all videos must then share a size).
        num_views, clip_len, stride, mode, eval_clips, drop_last, flip, seed: as the CPU loader.
        rank, world_size: global rank and process count -> DALI ``shard_id`` / ``num_shards``.
        local_rank: this process's GPU -> DALI ``device_id`` (ignored on ``device="cpu"``).
        device: ``"gpu"`` (mixed decoding, outputs on ``cuda:local_rank``) or ``"cpu"``.
        num_threads: DALI CPU worker threads.
        prefetch_queue_depth: batches DALI prepares ahead.

    Returns:
        :class:`DaliClipLoader` with batches ``views`` uint8 ``(B, V, T, crop, crop, 3)``,
        ``labels`` int64 ``(B,)``, ``index`` int64 ``(B,)``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sampler = ShardBatchSampler(
        len(records), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        shuffle=(mode == "train"), drop_last=drop_last,
    )
    plan_kwargs = {"seed": seed, "mode": mode, "num_views": num_views, "clip_len": clip_len,
                   "stride": stride, "eval_clips": eval_clips, "crop": crop, "flip": flip}
    source = ClipSource(records, sampler, plan_kwargs=plan_kwargs)
    views = num_views if mode == "train" else eval_clips
    device_id = local_rank if device == "gpu" else None
    pipe = clip_pipeline(
        source, num_views=views, clip_len=clip_len, crop=crop, device=device,
        batch_size=batch_size, num_threads=num_threads, device_id=device_id,
        prefetch_queue_depth=prefetch_queue_depth, seed=seed + 7919 * rank,
        # shard_id / num_shards are reader arguments in DALI; the external source shards
        # itself through ShardBatchSampler(rank, world_size) with exactly those values.
    )
    pipe.build()
    return DaliClipLoader(
        records, pipe=pipe, source=source, sampler=sampler, device=device, device_id=device_id,
        clip_len=clip_len, stride=stride,
    )

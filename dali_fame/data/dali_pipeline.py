"""DALI clip pipeline: the CPU loader's batches, decoded by DALI, fed off the training thread.

One ``@pipeline_def`` (:func:`clip_pipeline`). Per batch, Python hands DALI only small arrays
(:class:`ClipSource`): each video's file path (as bytes) and its plan, drawn by
:func:`~dali_fame.data.plan.plan_sample` (the very function the CPU loader uses): the sorted
unique frame indices of all its views, each view's positions into them, and each view's crop
box and flip. Everything heavy runs in DALI's own threads (``num_threads``, from
``data.workers``):

* ``fn.io.file.read`` reads the file;
* ``fn.decoders.video`` decodes the unique frames in one forward pass (``device="mixed"`` on a
  GPU: NVDEC for H.264/HEVC/VP9/AV1; ``"cpu"`` otherwise: VP9, VP8 and MJPEG only), with
  ``pad_mode="none"`` so that a frame past the end of a truncated file is an error instead of
  a silently padded black frame;
* per view, the crop: on the GPU (``device="gpu"``), ``fn.sequence_rearrange`` gathers the
  view's frames out of the decoded ones (a later view may start earlier: the decoder never
  seeks back), ``fn.slice`` cuts the crop box, ``fn.resize`` resizes it (bilinear,
  antialiased) and ``fn.flip`` mirrors it, one draw per clip for all its frames
  (``fn.resize``'s own ROI would read pixels outside the box for the filter support; slicing
  first keeps the result equal to the CPU loader's crop-then-resize). On the CPU backend a
  ``fn.python_function`` run by DALI's executor does the same with the CPU loader's own torch
  code (:func:`_crop_views_on_host`): DALI's CPU resize alone cost more than decoding.

So for the same seed both loaders decode the same frames and use the same crop boxes. On the
CPU backend the clips are bit-identical to the CPU loader's (DALI's CPU decoder converts
YUV->RGB like :func:`dali_fame.data.video_io.read_frames`, and the crops are the same torch
code); DALI's own resize (the GPU graph) differs from torch's only by its resampling
arithmetic (mean abs difference < 0.5 on 0..255, 99.9 % of values within 2, measured with the
GPU graph's ops on the CPU backend in tests/data/test_dali_pipeline.py), and NVDEC's colour
conversion adds its own small differences.

The trainer sees :class:`DaliClipLoader`: ``__len__``, ``set_epoch(epoch, start_batch=0)`` and
the CPU loader's batch dict (``views`` uint8 ``(B, V, T, crop, crop, 3)``, ``labels`` int64
``(B,)``, ``index`` int64 ``(B,)``), on the GPU for ``device="gpu"``. It is never passed to
``accelerator.prepare``: it shards itself (``shard_id`` = global rank, ``num_shards`` = world
size, ``device_id`` = local rank), which Accelerate could not do for it.

Videos that fail at feed or decode time (see :mod:`dali_fame.data.ledger`; the index validated
every file, but files go bad during a run) are replaced exactly as the CPU loader replaces
them: by the first video of :func:`~dali_fame.data.ledger.substitute_candidates` that loads.
DALI fails a whole batch at once, so the loader then decodes that batch's videos one by one in
a small probe pipeline (same graph, batch size 1), replaces the ones that fail, and yields the
batch in its place: every rank yields exactly ``len(loader)`` full batches per epoch (fewer
only from ``start_batch``), the same batches as the CPU loader. Each bad file is warned about
once and never fed again; ``loader.stats`` counts ``visited == delivered + replaced``; when no
video of the shard is left to stand in, iterating raises
:class:`~dali_fame.data.ledger.NoHealthyVideoError`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dali_fame.data.ledger import (
    FailedVideo,
    NoHealthyVideoError,
    VideoLedger,
    substitute_candidates,
)
from dali_fame.data.plan import MODES, plan_sample
from dali_fame.data.sampler import is_short
from dali_fame.data.shard import ShardBatchSampler

if TYPE_CHECKING:
    from dali_fame.data.records import VideoRecord

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu")


# Why the file bytes are read by ``fn.io.file.read`` in DALI's C++ threads rather than by a
# parallel external source (``parallel=True``, Python worker processes):
# * the file bytes never pass through Python: no GIL, no copy into the external source's
#   buffers, no shared-memory chunks sized for the largest video of a batch (video files vary
#   from kB to hundreds of MB), no worker processes to start, pickle the records into, or
#   lose (a worker that dies takes the pipeline with it);
# * the reads run in the same pool as the decoder (``num_threads``), overlapped with the
#   decoding of the prefetched batches, from a memory-mapped file;
# * what stays on the training thread is the plan, a pure numpy function of (seed, epoch,
#   video): ~0.1 ms per video, ~1 ms per batch of 8 (see ``ClipSource``), and it keeps the
#   batch order, the substitutes and the ledger in one process, where the trainer can see them.
# A parallel source would only pay off for a plan that costs more than the decode; it does not.


def _dali_reason(error: BaseException) -> str:
    """The useful line of a DALI error ("Error in CPU operator `X` ... encountered: <why>").

    Returns:
        ``"DALI <operator>: <why>"`` (or the error's first line when it has another shape).
    """
    text = str(error).strip()
    operator = ""
    for line in text.splitlines():
        if line.startswith("Error in ") and "operator `" in line:
            operator = line.split("`")[1].removeprefix("nvidia.dali.fn.")
    if "encountered:" in text:
        why = [line.strip() for line in text.rsplit("encountered:", 1)[1].splitlines()]
        why = [line for line in why if line and not line.startswith(("C++ context",
                                                                     "Current pipeline"))]
        if why:
            return f"DALI {operator}: {why[0]}" if operator else f"DALI: {why[0]}"
    return text.splitlines()[0] if text else type(error).__name__


@dataclasses.dataclass(frozen=True)
class SampleFeed:
    """The arrays DALI receives for one video (one sample of a batch).

    Attributes:
        path: uint8 ``(L,)`` the file path, UTF-8 (what ``fn.io.file.read`` takes).
        frames: int32 ``(U,)`` the sorted unique frame numbers of all views (decoded in one
            pass, in this order).
        order: int32 ``(V, T)`` view ``v``'s frame ``t`` is ``frames[order[v, t]]``.
        extra: with a crop, float32 ``(V, 5)`` ``(y, x, h, w, flip)`` per view in source pixels;
            without one, int32 ``(V,)`` the flip flags.
    """

    path: np.ndarray
    frames: np.ndarray
    order: np.ndarray
    extra: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One place of a batch: the shard position it stands for and the video fed there."""

    position: int  # place in the rank's shard (seeds the substitutes)
    own: int  # the video the sampler scheduled there
    video: int  # the video fed (``own``, or a substitute when ``own`` is known to fail)
    feed: SampleFeed

    @property
    def replaced(self) -> bool:
        return self.video != self.own


@dataclasses.dataclass(frozen=True)
class _FedBatch:
    epoch: int
    positions: np.ndarray  # int64 (B,) shard positions, in batch order
    slots: tuple[_Slot, ...]


class ClipSource:
    """The external source: one call returns one batch's feed (lists, one entry per video).

    Four outputs per video, see :class:`SampleFeed`: the path bytes, the unique frame indices,
    the views' positions into them, and the crop boxes / flips. No file is opened here:
    ``fn.io.file.read`` and the decoder do that in DALI's threads. Raises StopIteration at the
    end of the epoch.

    A video the ledger knows to fail (or whose plan cannot be drawn) is not fed: its place gets
    the first substitute of :func:`substitute_candidates` not known to fail (the one the CPU
    loader would use if that one loads; when it does not, the loader's probe finds the next).
    Each fed batch is remembered in :attr:`fed` until the loader takes its output.

    Standalone use (timing the feed): ``ClipSource(records, sampler, plan_kwargs=...)``,
    ``.start_epoch(epoch)``, then each ``()`` returns one batch.

    Args:
        records: the videos (``records[i]`` is video ``i``).
        sampler: this rank's batch order.
        plan_kwargs: :func:`~dali_fame.data.plan.plan_sample`'s keyword arguments (``seed``,
            ``mode``, ``num_views``, ``clip_len``, ``stride``, ``eval_clips``, ``crop``,
            ``flip``).
        ledger: where failures are recorded (a new one by default).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        sampler: ShardBatchSampler,
        *,
        plan_kwargs: dict[str, Any],
        ledger: VideoLedger | None = None,
    ) -> None:
        self.records = list(records)
        self.sampler = sampler
        self.plan_kwargs = dict(plan_kwargs)
        self.ledger = ledger if ledger is not None else VideoLedger()
        self.fed: collections.deque[_FedBatch] = collections.deque()
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._epoch = 0
        self._shard = np.zeros(0, dtype=np.int64)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def shard(self) -> np.ndarray:
        """int64 ``(n,)`` this epoch's whole shard (``ShardBatchSampler.shard()``)."""
        return self._shard

    def start_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch=start_batch)
        self._epoch = int(epoch)
        self._shard = self.sampler.shard()
        self._pending = collections.deque(self.sampler.batches())
        self.fed.clear()

    def stop(self) -> None:
        """Feed nothing more this epoch."""
        self._pending.clear()
        self.fed.clear()

    def requeue(self) -> None:
        """Put the batches fed but not yet taken back in front, in order (the pipeline that
        held them is gone); they are planned again, so newly known failures are replaced."""
        self._pending.extendleft(reversed([fed.positions for fed in self.fed]))
        self.fed.clear()

    def sample_feed(self, video_index: int) -> SampleFeed:
        """Plan video ``video_index`` for this epoch.

        Raises:
            ValueError: the plan cannot be drawn (e.g. a record with no frames).
        """
        record = self.records[video_index]
        plan = plan_sample(record, video_index=video_index, epoch=self._epoch,
                           **self.plan_kwargs)
        unique, inverse = np.unique(plan.frame_indices.reshape(-1), return_inverse=True)
        views = plan.frame_indices.shape[0]
        if self.plan_kwargs.get("crop") is None:
            extra = np.array([bool(w and w.flip) for w in plan.windows], dtype=np.int32)
        else:
            extra = np.array([(w.y, w.x, w.h, w.w, float(w.flip)) for w in plan.windows],
                             dtype=np.float32)
        return SampleFeed(
            np.frombuffer(record.path.encode("utf-8"), dtype=np.uint8),
            unique.astype(np.int32),
            inverse.reshape(views, -1).astype(np.int32),
            extra,
        )

    def fail(self, video_index: int, reason: str) -> None:
        """Record that video ``video_index`` failed this epoch (warned once per file)."""
        self.ledger.fail(FailedVideo(video_index, self.records[video_index].path, reason,
                                     self._epoch))

    def candidates(self, position: int) -> Iterator[int]:
        """The substitutes for shard ``position``, in order, skipping known failures."""
        bad = self.ledger.bad_indices
        order = substitute_candidates(self._shard, seed=self.plan_kwargs["seed"],
                                      epoch=self._epoch, position=position)
        for video in order.tolist():
            if video not in bad:
                yield video
                bad = self.ledger.bad_indices  # a candidate may have failed meanwhile

    def no_healthy(self, position: int) -> NoHealthyVideoError:
        """The error when nothing of the shard can stand in for ``position`` any more."""
        shard = set(self._shard.tolist())
        return NoHealthyVideoError.for_shard(
            [f for f in self.ledger.failures if f.index in shard], rank=self.sampler.rank,
            world_size=self.sampler.world_size, epoch=self._epoch,
            video=int(self._shard[position]), shard_size=len(self._shard))

    def _slot(self, position: int, bad: set[int]) -> _Slot:
        own = video = int(self._shard[position])
        candidates: Iterator[int] | None = None
        while True:
            if video not in bad:
                try:
                    return _Slot(position, own, video, self.sample_feed(video))
                except ValueError as exc:
                    self.fail(video, f"cannot plan its clips: {exc}")
                    bad = self.ledger.bad_indices
            if candidates is None:
                candidates = self.candidates(position)
            video = next(candidates, None)
            if video is None:
                raise self.no_healthy(position)

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        if not self._pending:
            raise StopIteration
        positions = self._pending.popleft()
        bad = self.ledger.bad_indices
        slots = tuple(self._slot(int(p), bad) for p in positions)
        self.fed.append(_FedBatch(self._epoch, positions, slots))
        return ([s.feed.path for s in slots], [s.feed.frames for s in slots],
                [s.feed.order for s in slots], [s.feed.extra for s in slots])


class _ProbeSource:
    """The probe pipeline's source: the one sample put there before each run."""

    def __init__(self) -> None:
        self.item: SampleFeed | None = None

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        item = self.item
        if item is None:
            raise StopIteration
        return [item.path], [item.frames], [item.order], [item.extra]


def _crop_views_on_host(video: np.ndarray, order: np.ndarray, boxes: np.ndarray, *,
                        size: int) -> np.ndarray:
    """The views of one video on the CPU backend (a ``fn.python_function`` body, run by DALI's
    executor; torch's kernels release the GIL).

    Args:
        video: uint8 ``(U, H, W, 3)`` the decoded unique frames.
        order: int32 ``(V, T)`` view ``v``'s frame ``t`` is ``video[order[v, t]]``.
        boxes: float32 ``(V, 5)`` ``(y, x, h, w, flip)`` per view, source pixels.
        size: output side.

    Returns:
        uint8 ``(V, T, size, size, 3)``: each view gathered, cropped to its box, resized and
        flipped by :func:`~dali_fame.data.crop.crop_resize_flip`, as in the CPU loader.
    """
    from dali_fame.data.crop import crop_resize_flip
    from dali_fame.data.plan import CropWindow

    out = np.empty((*order.shape, size, size, 3), dtype=np.uint8)
    for v in range(order.shape[0]):
        y, x, h, w = (int(b) for b in boxes[v, :4])
        # Gather only the box of each frame (one copy), then resize it as the CPU loader does.
        box = video[order[v], y : y + h, x : x + w]
        out[v] = crop_resize_flip(box, CropWindow(0, 0, h, w, bool(boxes[v, 4])), size).numpy()
    return out


def clip_pipeline_fn(
    source: Callable[[], Any], *, num_views: int, clip_len: int, crop: int | None, device: str,
    build_index: bool = True, torch_crops: bool | None = None,
):
    """The graph of :func:`clip_pipeline` (undecorated, for reading and testing).

    Args:
        source: a batch callable returning :class:`SampleFeed`'s four arrays as four lists.
        num_views: ``V``; clip_len: ``T``.
        crop: output side, or None for full frames (flip only).
        device: ``"gpu"`` decodes with ``device="mixed"`` and runs the rest on the GPU.
        build_index: ``fn.decoders.video``'s frame index (faster seeks, one demux pass).
        torch_crops: crop, resize and flip with torch in a ``fn.python_function``
            (:func:`_crop_views_on_host`) instead of DALI's ops; default: on ``device="cpu"``
            (``False`` there runs the GPU graph's ops on the CPU backend, for tests).

    Returns:
        One DataNode: uint8 ``(V, T, crop, crop, 3)`` per sample, layout ``"VFHWC"`` (full
        frames when ``crop`` is None), on the GPU for ``device="gpu"``.
    """
    from nvidia.dali import fn, types

    paths, frames, order, extra = fn.external_source(
        source=source, num_outputs=4, batch=True,
        dtype=[types.UINT8, types.INT32, types.INT32,
               types.INT32 if crop is None else types.FLOAT],
    )
    encoded = fn.io.file.read(paths)
    # pad_mode="none": a requested frame past the end of the stream (a file cut short after
    # indexing) raises, where the default pads with black frames. The op's help says pad_mode
    # is "not relevant when using frames"; it is (DALI 2.4, tested with a truncated file).
    video = fn.decoders.video(
        encoded, frames=frames, pad_mode="none", build_index=build_index,
        device="mixed" if device == "gpu" else "cpu",
    )
    if torch_crops is None:
        torch_crops = device == "cpu"
    if torch_crops and device == "gpu":
        raise ValueError("torch_crops runs on the CPU backend only")
    if torch_crops and crop is not None:
        # DALI's CPU resize costs ~3.3 ms of CPU per 16-frame 112 x 112 clip, torch's uint8
        # antialiased kernel ~0.5 ms (and the slice, flip and stack copies go too): with DALI's
        # ops the crops took as long as decoding. torch also makes the clips bit-identical to
        # the CPU loader's. (On the GPU, DALI's own kernels below are the fast path.)
        return fn.python_function(
            video, order, extra, function=functools.partial(_crop_views_on_host, size=crop),
            output_layouts="VFHWC",
        )
    views = []
    for v in range(num_views):
        # order[v] is a CPU argument input (T,) per sample; sequence_rearrange takes it on
        # both backends and copies just this view's frames out of the decoded ones.
        clip = fn.sequence_rearrange(video, new_order=order[v])
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


def clip_pipeline(source: Callable[[], Any], *, num_views: int, clip_len: int,
                  crop: int | None, device: str, build_index: bool = True,
                  torch_crops: bool | None = None, **pipeline_kwargs):
    """Instantiate the ``@pipeline_def`` pipeline (``pipeline_kwargs``: batch_size,
    num_threads, device_id, prefetch_queue_depth, seed, ...)."""
    from nvidia.dali import pipeline_def

    defined = pipeline_def(clip_pipeline_fn)
    return defined(source, num_views=num_views, clip_len=clip_len, crop=crop, device=device,
                   build_index=build_index, torch_crops=torch_crops, **pipeline_kwargs)


class DaliClipLoader:
    """Iterates the DALI pipeline as plain torch batches (same dict as the CPU loader).

    Iterating yields ``dict(views=uint8 (B, V, T, crop, crop, 3), labels=int64 (B,),
    index=int64 (B,))`` (on ``cuda:device_id`` for ``device="gpu"``), exactly
    ``len(loader) - start_batch`` batches per epoch, every place filled (a failed video's place
    holds its substitute, under the substitute's index and label).

    When DALI raises for a batch, the batch is decoded again video by video in a probe
    pipeline (same graph, batch size 1, built on first need); each video that fails there is
    recorded and replaced by the first substitute that decodes, and the batch is assembled
    from the probe's outputs, in its place in the epoch. DALI declares a pipeline object
    invalid after an error ("Current pipeline object is no longer valid"), so the main pipeline
    is rebuilt and the batches it held are fed again (the probe likewise after each failure).

    Raises (while iterating):
        NoHealthyVideoError: a video failed and nothing of this rank's shard can replace it;
            the message names the rank, epoch and the files that failed.

    Attributes:
        ledger: the :class:`~dali_fame.data.ledger.VideoLedger` (failures and counts).
        failures: every :class:`~dali_fame.data.ledger.FailedVideo` so far (all epochs). A
            video is recorded when it fails; once known bad it is not fed again.
        stats: this epoch's ``visited``, ``delivered``, ``replaced`` and ``short`` counts
            (``visited == delivered + replaced``).
        pipe: the main DALI pipeline (replaced after an error).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        source: ClipSource,
        make_pipe: Callable[..., Any],
        device: str,
        device_id: int | None,
        clip_len: int,
        stride: int,
    ) -> None:
        self.records = list(records)
        self.source = source
        self.sampler = source.sampler
        self.ledger = source.ledger
        self.device = device
        self.device_id = device_id
        self.clip_len = clip_len
        self.stride = stride
        self._make_pipe = make_pipe
        self.pipe = make_pipe(source, probe=False)
        self._probe_source = _ProbeSource()
        self._probe = None
        self._epoch = 0
        self._start_batch = 0
        self._in_epoch = False
        self._needs_reset = False

    @property
    def stats(self) -> dict[str, int]:
        return self.ledger.stats

    @property
    def failures(self) -> list[FailedVideo]:
        return self.ledger.failures

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; iteration then starts at batch ``start_batch`` (resuming mid-epoch:
        the same batches as an uninterrupted epoch from there on, the skipped ones not fed)."""
        self.sampler.set_epoch(epoch, start_batch=start_batch)  # validates start_batch
        self._epoch, self._start_batch = int(epoch), int(start_batch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return len(self.sampler)

    # -- pipelines -----------------------------------------------------------------------

    def _rebuild(self) -> None:
        """A new main pipeline; what the old one held is fed again."""
        self.source.requeue()
        self.pipe = None  # release the old pipeline (its threads, buffers) before building
        self.pipe = self._make_pipe(self.source, probe=False)
        self._needs_reset = False

    def _probe_run(self, feed: SampleFeed) -> tuple[torch.Tensor | None, str | None]:
        """Decode one video alone.

        Returns:
            ``(uint8 (1, V, T, crop, crop, 3), None)`` or ``(None, reason)``.
        """
        if self._probe is None:
            self._probe = self._make_pipe(self._probe_source, probe=True)
        self._probe_source.item = feed
        try:
            (out,) = self._probe.run()
        except RuntimeError as exc:
            self._probe = None  # invalid after an error; rebuilt on next use
            return None, _dali_reason(exc)
        finally:
            self._probe_source.item = None
        return self._to_torch(out), None

    def _substitute(self, slot: _Slot) -> tuple[_Slot, torch.Tensor]:
        """The first candidate for ``slot``'s position that decodes, and its clips."""
        for video in self.source.candidates(slot.position):
            try:
                feed = self.source.sample_feed(video)
            except ValueError as exc:
                self.source.fail(video, f"cannot plan its clips: {exc}")
                continue
            out, reason = self._probe_run(feed)
            if out is not None:
                return _Slot(slot.position, slot.own, video, feed), out
            self.source.fail(video, reason)
        raise self.source.no_healthy(slot.position)

    def _repair(self, fed: _FedBatch, error: BaseException) -> tuple[tuple[_Slot, ...],
                                                                        torch.Tensor]:
        """Decode a batch DALI failed on video by video; replace the videos that fail."""
        slots, outs, blamed = [], [], 0
        for slot in fed.slots:
            out = None
            if slot.video not in self.ledger.bad_indices:  # (a substitute fed twice)
                out, reason = self._probe_run(slot.feed)
                if out is None:
                    self.source.fail(slot.video, reason)
            if out is None:
                blamed += 1
                slot, out = self._substitute(slot)
            slots.append(slot)
            outs.append(out)
        if not blamed:
            logger.warning(
                "DALI failed a batch of epoch %d whose videos all decode one by one (%s); "
                "it was decoded video by video and the pipeline rebuilt",
                fed.epoch, _dali_reason(error),
            )
        return tuple(slots), torch.cat(outs)

    # -- iteration -----------------------------------------------------------------------

    def _to_torch(self, tensor_list) -> torch.Tensor:
        """A pipeline output as one uint8 ``(B, V, T, H, W, 3)`` tensor."""
        dense = tensor_list.as_tensor()
        if self.device != "gpu":
            # Zero-copy: the DLPack capsule keeps DALI's buffer alive (the default executor
            # does not recycle an output buffer that is still referenced); a copy here cost
            # the training thread ~5 ms per batch of 8 x 2 x 16 x 112 x 112 x 3.
            return torch.from_dlpack(dense)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        # On the GPU, a device-to-device copy on torch's current stream (cheap, and the batch
        # then follows torch's stream semantics); run() already synchronised DALI's output.
        device = self._to_device()
        out = torch.empty(tuple(dense.shape()), dtype=torch.uint8, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out

    def _batch(self, slots: Sequence[_Slot], views: torch.Tensor) -> dict[str, torch.Tensor]:
        replaced = sum(slot.replaced for slot in slots)
        short = sum(
            is_short(int(self.records[s.video].segment_frames), clip_len=self.clip_len,
                     stride=self.stride)
            for s in slots
        )
        self.ledger.count(delivered=len(slots) - replaced, replaced=replaced, short=short)
        index = torch.tensor([s.video for s in slots], dtype=torch.int64)
        labels = torch.tensor([self.records[s.video].label for s in slots], dtype=torch.int64)
        if self.device == "gpu":
            index, labels = index.to(self._to_device()), labels.to(self._to_device())
        return {"views": views, "labels": labels, "index": index}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._in_epoch:
            # An epoch left unfinished (or ended by an error): drop what its pipeline holds.
            self.source.stop()
            self._rebuild()
        elif self._needs_reset:
            self.pipe.reset()
            self._needs_reset = False
        self.ledger.start_epoch()
        self.source.start_epoch(self._epoch, self._start_batch)
        self._in_epoch = True
        while True:
            try:
                (views,) = self.pipe.run()
            except StopIteration:
                break
            except NoHealthyVideoError:
                raise
            except RuntimeError as exc:  # DALI's error for the batch taken now
                if not self.source.fed:
                    raise
                fed = self.source.fed.popleft()
                self._rebuild()
                slots, out = self._repair(fed, exc)
            else:
                fed = self.source.fed.popleft()
                slots, out = fed.slots, self._to_torch(views)
            yield self._batch(slots, out)
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
    build_index: bool = True,
    torch_crops: bool | None = None,
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
        num_threads: DALI CPU worker threads (``data.workers``): file reads, CPU decoding and,
            on ``device="cpu"``, the crops and resizes.
        prefetch_queue_depth: batches DALI prepares ahead.
        build_index: let ``fn.decoders.video`` index each file's frames first.
        torch_crops: see :func:`clip_pipeline_fn` (default: True on ``device="cpu"``).

    Returns:
        :class:`DaliClipLoader` with batches ``views`` uint8 ``(B, V, T, crop, crop, 3)``,
        ``labels`` int64 ``(B,)``, ``index`` int64 ``(B,)``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be a positive number of pixels or None, got {crop}")
    sampler = ShardBatchSampler(
        len(records), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        shuffle=(mode == "train"), drop_last=drop_last,
    )
    plan_kwargs = {"seed": seed, "mode": mode, "num_views": num_views, "clip_len": clip_len,
                   "stride": stride, "eval_clips": eval_clips, "crop": crop, "flip": flip}
    source = ClipSource(records, sampler, plan_kwargs=plan_kwargs)
    views = num_views if mode == "train" else eval_clips
    device_id = local_rank if device == "gpu" else None

    def make_pipe(feed: Callable[[], Any], *, probe: bool):
        pipe = clip_pipeline(
            feed, num_views=views, clip_len=clip_len, crop=crop, device=device,
            build_index=build_index, torch_crops=torch_crops,
            batch_size=1 if probe else batch_size,
            num_threads=num_threads, device_id=device_id,
            prefetch_queue_depth=1 if probe else prefetch_queue_depth, seed=seed + 7919 * rank,
            # shard_id / num_shards are reader arguments in DALI; the external source shards
            # itself through ShardBatchSampler(rank, world_size) with exactly those values.
        )
        pipe.build()
        return pipe

    return DaliClipLoader(
        records, source=source, make_pipe=make_pipe, device=device, device_id=device_id,
        clip_len=clip_len, stride=stride,
    )

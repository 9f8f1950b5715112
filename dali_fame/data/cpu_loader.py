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

import collections
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter

from dali_fame.data import video_io

if TYPE_CHECKING:
    from dali_fame.data.records import VideoRecord

logger = logging.getLogger(__name__)

#: RandomResizedCrop area range (fraction of the frame) and aspect-ratio range (spec section 5)
CROP_SCALE: tuple[float, float] = (0.2, 1.0)
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

# Appended to the crop generator's seed words. numpy's SeedSequence treats trailing zero words
# as absent ([s, e, i] and [s, e, i, 0] give the same stream), so without a non-zero salt view
# 0's crop draws would replay the sampler's temporal draws for the same (seed, epoch, video).
_CROP_STREAM_SALT = 0x63726F70  # "crop"

MODES = ("train", "eval")
#: FrameDecoder's YUV -> RGB conversions (see its docstring)
RGB_MODES = ("exact", "fast")


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


# --------------------------------------------------------------------------------------------
# decoding


class _FrameTable(NamedTuple):
    pts: np.ndarray  # int64 (N,) presentation timestamps sorted: pts[i] is frame i's
    keyframes: np.ndarray  # int64 (K,) frame numbers of keyframes, sorted, starts with 0


def _frame_table(container: av.container.InputContainer, stream) -> _FrameTable | None:
    """Demux every packet (no decoding) to map frame number <-> pts and find the keyframes.

    Returns None when timestamps are missing or repeated; the caller then decodes sequentially.
    """
    stamps: list[int] = []
    keys: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        stamps.append(int(packet.pts))
        if packet.is_keyframe:
            keys.append(int(packet.pts))
    if not stamps:
        return None
    order = np.sort(np.asarray(stamps, dtype=np.int64))
    if np.any(np.diff(order) == 0):
        return None
    key_frames = np.searchsorted(order, np.asarray(keys, dtype=np.int64))
    return _FrameTable(order, np.union1d(key_frames, [0]).astype(np.int64))


class FrameDecoder:
    """Decodes selected frames of a file with PyAV: forward through short gaps, seeking to the
    keyframe before a frame only when that skips decoding.

    Frame ``i`` is the ``i``-th frame in presentation order, exactly as
    :func:`dali_fame.data.video_io.read_frames` counts them. From the start of a file frames are
    counted as they come out of the decoder; the first time a gap of more than ``seek_gap``
    frames lies ahead, the packets are demuxed (no decoding) to learn every frame's timestamp
    and the keyframes, and from then on decoded frames are identified by their timestamp, so
    seeking never changes which frame is which (variable-frame-rate files included). Files
    without usable timestamps are decoded sequentially. RGB conversion uses the same swscale
    flags as ``read_frames`` (bit-identical pixels) through one reused reformatter, ~3x faster
    than PyAV's ``to_ndarray(format="rgb24")``, which builds a converter per frame.

    One instance per worker process. It caches the demuxed timestamp tables of the last
    ``table_cache`` files (~8 bytes per frame each) so a later epoch need not demux again.

    Args:
        threads: FFmpeg decoding threads (1 is best when every core runs a worker).
        rgb: ``"exact"`` converts YUV -> RGB with :mod:`~dali_fame.data.video_io`'s swscale
            flags (bilinear chroma, accurate rounding): pixels bit-identical to ``read_frames``
            and to DALI's CPU decoder. ``"fast"`` uses FFmpeg's default SIMD path (what
            ``to_ndarray(format="rgb24")``, torchcodec and decord give): ~8x cheaper conversion
            (15 vs 119 us per 128 x 128 frame, ~35 % of a worker's time for 2 x 16-frame clips),
            but chroma is repeated rather than interpolated: vs "exact", mean |diff| ~1.4 on
            the synthetic world, up to ~50 at colour edges (more on edge-heavy content).
        seek_gap: decode straight through gaps of at most this many frames (a seek costs a
            demux pass, a decoder flush and the keyframe's decode).
        table_cache: timestamp tables kept.
    """

    def __init__(
        self, *, threads: int = 1, rgb: str = "exact", seek_gap: int = 16, table_cache: int = 1024
    ) -> None:
        if rgb not in RGB_MODES:
            raise ValueError(f"rgb must be one of {RGB_MODES}, got {rgb!r}")
        self.threads = int(threads)
        self.rgb = rgb
        # None = FFmpeg's default conversion flags
        self._flags = video_io.DECODE_INTERPOLATION if rgb == "exact" else None
        self.seek_gap = int(seek_gap)
        self.table_cache = int(table_cache)
        self._tables: collections.OrderedDict[tuple, _FrameTable | None] = (
            collections.OrderedDict()
        )
        self._reformatter = VideoReformatter()

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # "exact": the same flags as video_io.frame_to_rgb.
        return self._reformatter.reformat(
            frame, format="rgb24", interpolation=self._flags, threads=1
        ).to_ndarray()

    def _open(self, path: str):
        try:
            container = av.open(path, mode="r")
        except (av.error.FFmpegError, OSError) as exc:
            raise video_io.VideoDecodeError(path, f"cannot open: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise video_io.VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = self.threads
        if self.threads > 1:
            stream.thread_type = "AUTO"
        return container, stream

    def _table(self, path: str) -> _FrameTable | None:
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        container, stream = self._open(path)
        try:
            table = _frame_table(container, stream)
        finally:
            container.close()
        self._tables[key] = table
        while len(self._tables) > self.table_cache:
            self._tables.popitem(last=False)
        return table

    def decode(self, path: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames ``indices`` (any order, repeats allowed) of ``path``.

        Returns:
            uint8 ``(N, H, W, 3)`` RGB, channels-last, ``N = len(indices)``, in the given order.

        Raises:
            VideoDecodeError: the file cannot be opened or decoded, or a requested frame is past
                the frames it actually holds (e.g. a file truncated after it was indexed).
            ValueError: empty or negative indices.
        """
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size == 0 or wanted.min() < 0:
            raise ValueError(f"{path}: frame indices must be non-empty and >= 0")
        unique = np.unique(wanted)
        try:
            got = self._decode_runs(path, unique)
            if got is None:
                got = self._decode_sequential(path, unique)
        except av.error.FFmpegError as exc:
            raise video_io.VideoDecodeError(path, f"decoding failed: {exc}") from exc
        missing = [int(i) for i in unique if int(i) not in got]
        if missing:
            raise video_io.VideoDecodeError(
                path, f"frame {missing[0]} requested but only {len(got) and max(got) + 1} "
                "frames could be decoded"
            )
        return np.stack([got[int(i)] for i in wanted])

    def _decode_sequential(self, path: str, wanted: np.ndarray) -> dict[int, np.ndarray]:
        """Decode from the start through the last wanted frame, counting frames."""
        container, stream = self._open(path)
        want = set(wanted.tolist())
        stop = int(wanted[-1])
        got: dict[int, np.ndarray] = {}
        try:
            for count, frame in enumerate(container.decode(stream)):
                if count in want:
                    got[count] = self._rgb(frame)
                if count >= stop:
                    break
        finally:
            container.close()
        return got

    def _decode_runs(self, path: str, wanted: np.ndarray) -> dict[int, np.ndarray] | None:
        """Decode the sorted unique frames ``wanted`` run by run; None asks for the sequential
        fallback (no timestamps, an unmapped timestamp, a seek that overshot)."""
        gaps = np.flatnonzero(np.diff(wanted) > self.seek_gap) + 1
        runs = np.split(wanted, gaps)
        want = set(wanted.tolist())
        got: dict[int, np.ndarray] = {}
        container, stream = self._open(path)
        try:
            frames = container.decode(stream)
            position = 0  # number of the frame `frames` yields next
            table: _FrameTable | None = None
            frame_of: dict[int, int] | None = None  # pts -> frame number, once seeking
            for run in runs:
                first, last = int(run[0]), int(run[-1])
                if first - position > self.seek_gap or position > first:
                    table = table or self._table(path)
                    if table is None:
                        if position > first:
                            return None
                    else:
                        if last >= len(table.pts):
                            return None  # the sequential pass decides what really is there
                        key = int(table.keyframes[np.searchsorted(table.keyframes, first,
                                                                  "right") - 1])
                        if key > position or position > first:
                            container.seek(int(table.pts[key]), stream=stream, backward=True,
                                           any_frame=False)
                            frames = container.decode(stream)
                            frame_of = frame_of or {int(p): i for i, p in enumerate(table.pts)}
                            position = -1  # unknown until the first frame says
                reached = False
                for frame in frames:
                    if frame_of is None:
                        index = position
                    else:
                        index = frame_of.get(frame.pts) if frame.pts is not None else None
                        if index is None or (position == -1 and index > first):
                            return None
                    position = index + 1
                    if index in want:
                        got[index] = self._rgb(frame)
                    if index >= last:
                        reached = True
                        break
                if not reached:
                    return None  # the stream ended early: let the sequential pass count
            return got
        finally:
            container.close()


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
        epoch, video_index = key if isinstance(key, tuple) else (0, key)
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


class ShardBatchSampler(torch.utils.data.Sampler):
    """Yields batches of ``(epoch, video_index)`` keys from this rank's shard.

    The shard and its order are :func:`~dali_fame.data.sampler.shard_indices` (a pure function
    of ``(seed, epoch, rank, world_size)``); call :meth:`set_epoch` before each epoch, as with
    ``DistributedSampler``. With ``drop_last`` every rank yields the same number of batches,
    :func:`~dali_fame.data.sampler.steps_per_epoch` (DDP needs equal step counts; the few
    videos left over differ every epoch); without it, every video of the shard is visited.
    """

    def __init__(
        self, num_videos: int, *, batch_size: int, seed: int, rank: int = 0,
        world_size: int = 1, shuffle: bool = True, drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_videos = int(num_videos)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """int64 ``(n,)`` video indices this rank visits in the current epoch, in order."""
        from dali_fame.data.sampler import shard_indices

        shard = np.asarray(
            shard_indices(
                self.num_videos, epoch=self.epoch, seed=self.seed, rank=self.rank,
                world_size=self.world_size, shuffle=self.shuffle,
            ),
            dtype=np.int64,
        )
        if self.drop_last:
            shard = shard[: len(self) * self.batch_size]
        return shard

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches of video indices (the last may be short without drop_last)."""
        shard = self.indices()
        return [shard[i : i + self.batch_size] for i in range(0, len(shard), self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.batches():
            yield [(epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        from dali_fame.data.sampler import steps_per_epoch

        if self.drop_last:
            return steps_per_epoch(self.num_videos, world_size=self.world_size,
                                   batch_size=self.batch_size, drop_last=True)
        shard = math.ceil(max(self.num_videos - self.rank, 0) / self.world_size)
        return math.ceil(shard / self.batch_size)


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

"""``dali-fame check-decode``: do the decoders return exactly the frames that were asked for?

GPU and seeking decoders have shipped silent wrong-frame bugs (torchcodec issues 1704 and
1339: off-by-one or repeated frames after a seek, B-frame reordering); a training run would
never notice. This check writes small synthetic videos whose every frame carries its own number
in its pixels (:func:`stamp_frame`), decodes random-access clips from them through every loader
this machine can run, reads the numbers back (:func:`read_stamps`) and compares them with the
shared sample plan (:func:`dali_fame.data.plan.plan_sample`), frame by frame.

The videos (128 x 96, 25 fps, one set per codec, all the same size so that DALI can batch full
frames): two long ones (72 and 50 frames) and a short one (20 frames, fewer than the 31 one
16 x stride-2 clip spans, so its clips repeat the last frame), encoded as

* ``h264``: libx264 with 3 B-frames (``b-adapt=0``: always used, so presentation order differs
  from decode order) and a keyframe every 16 frames (every random access seeks), in MP4;
* ``vp9``: libvpx-vp9 (``deadline=good``, as offline encodes are) with a keyframe every 16
  frames, in WebM;
* ``mjpeg``: every frame a JPEG, in AVI.

Before any decoder is tested, each file is decoded sequentially with PyAV (:func:`read_frames`
counts frames in presentation order) and every stamp must read back as its frame number, and
the h264 files must really contain B-frames: otherwise the check itself is broken and says so.

The clips, per codec: train mode (2 views x 16 frames, stride 2, full frames, random
horizontal flips) for the first ``epochs`` epochs, plus the first epoch in which some video's
second view starts before its first (the decoder must go back) if none did; then eval mode (5
uniformly spaced clips per video). Every returned frame must carry the planned number and the
planned flip; every video must come back in every epoch.

The decoders (:data:`DECODERS`): the CPU loader (:func:`~dali_fame.data.cpu_loader.
build_cpu_loader`, its PyAV :class:`~dali_fame.data.frame_decoder.FrameDecoder` in the main
process), DALI's CPU decoder (VP9 and MJPEG only) and DALI's mixed (NVDEC) decoder when a CUDA
device exists, all through :func:`~dali_fame.data.dali_pipeline.build_dali_loader`. A decoder
that cannot run here is listed with the reason and does not fail the check
(``--require-gpu`` makes a missing mixed decoder a failure).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from dali_fame.data import video_io
from dali_fame.data.plan import plan_sample
from dali_fame.data.records import VideoRecord
from dali_fame.data.sampler import clip_span

# ------------------------------------------------------------------------------ the stamp

#: stamp grid: columns x rows of blocks covering the frame; rows 0-4 carry the stamp, row 5 a
#: moving texture (so the encoders see motion, as in real video)
GRID_COLUMNS, GRID_ROWS = 8, 6
#: bits of the frame number (numbers 0 .. 2**16 - 1)
STAMP_BITS = 16
#: a block pair is read as a bit only when the two means differ by more than this (0..255):
#: lossy coding moves a block mean by a few levels, never by half the range
_MIN_CONTRAST = 64.0

FRAME_WIDTH, FRAME_HEIGHT = 128, 96


def stamp_frame(number: int, *, height: int = FRAME_HEIGHT, width: int = FRAME_WIDTH
                ) -> np.ndarray:
    """A frame that carries ``number`` in big black and white blocks.

    Layout (an 8 x 6 grid of ``width / 8`` x ``height / 6`` pixel blocks): row 0 is the
    orientation mark (4 white blocks, then 4 black: a mirrored frame reads black first); rows 1-2
    hold the 16 bits of ``number``, least significant first, white = 1; rows 3-4 hold the same
    bits inverted, so every bit is read as the sign of a difference (no absolute threshold) and
    a frame that is not a stamp (grey, garbage, another frame's half) is detected; row 5 is a
    horizontal gradient that moves 5 levels per frame.

    Returns:
        uint8 ``(height, width, 3)`` RGB (grey levels).

    Raises:
        ValueError: ``number`` outside ``0 .. 2**16 - 1`` or a size the grid does not divide.
    """
    if not 0 <= int(number) < 2**STAMP_BITS:
        raise ValueError(f"stamp number must be in 0..{2**STAMP_BITS - 1}, got {number}")
    if width % GRID_COLUMNS or height % GRID_ROWS:
        raise ValueError(f"frame size {width}x{height}: width must be a multiple of "
                         f"{GRID_COLUMNS} and height of {GRID_ROWS}")
    bits = (int(number) >> np.arange(STAMP_BITS)) & 1
    grid = np.empty((GRID_ROWS - 1, GRID_COLUMNS), np.uint8)
    grid[0] = [255] * (GRID_COLUMNS // 2) + [0] * (GRID_COLUMNS // 2)
    grid[1:3] = (bits * 255).reshape(2, GRID_COLUMNS)
    grid[3:5] = ((1 - bits) * 255).reshape(2, GRID_COLUMNS)
    bh, bw = height // GRID_ROWS, width // GRID_COLUMNS
    gray = np.empty((height, width), np.uint8)
    gray[: bh * (GRID_ROWS - 1)] = grid.repeat(bh, 0).repeat(bw, 1)
    ramp = (np.arange(width) * 2 + 5 * int(number)) % 256
    gray[bh * (GRID_ROWS - 1):] = ramp[None, :]
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_stamps(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Read the numbers and orientations of stamped frames (see :func:`stamp_frame`).

    Each block is measured by the mean of its inner half (away from edges, where lossy coding
    rings and chroma bleeds), over the three channels.

    Args:
        frames: uint8 ``(N, H, W, 3)`` or ``(H, W, 3)`` RGB.

    Returns:
        ``numbers`` int64 ``(N,)``, -1 where the frame is not a readable stamp; ``mirrored``
        bool ``(N,)``, True where the frame is flipped left-right (meaningless where
        ``numbers`` is -1).
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {frames.shape}")
    n, height, width = frames.shape[:3]
    bh, bw = height // GRID_ROWS, width // GRID_COLUMNS
    if bh < 4 or bw < 4:
        raise ValueError(f"frames of {width}x{height} are too small for the stamp grid")
    my, mx = bh // 4, bw // 4
    blocks = frames[:, : bh * (GRID_ROWS - 1), : bw * GRID_COLUMNS].reshape(
        n, GRID_ROWS - 1, bh, GRID_COLUMNS, bw, 3
    )
    means = blocks[:, :, my: bh - my, :, mx: bw - mx].astype(np.float32).mean(axis=(2, 4, 5))
    half = GRID_COLUMNS // 2
    orientation = means[:, 0, :half].mean(axis=1) - means[:, 0, half:].mean(axis=1)
    mirrored = orientation < 0
    means = np.where(mirrored[:, None, None], means[:, :, ::-1], means)
    diff = (means[:, 1:3] - means[:, 3:5]).reshape(n, STAMP_BITS)
    readable = (np.abs(orientation) > _MIN_CONTRAST) & np.all(np.abs(diff) > _MIN_CONTRAST, axis=1)
    numbers = ((diff > 0).astype(np.int64) << np.arange(STAMP_BITS)).sum(axis=1)
    return np.where(readable, numbers, -1), mirrored


# ----------------------------------------------------------------------------- the videos

#: codec -> (encoder, pixel format, options, suffix): random-access-hostile settings, see the
#: module docstring
ENCODERS: dict[str, tuple[str, str, dict[str, str], str]] = {
    "h264": ("libx264", "yuv420p", {
        "crf": "18", "preset": "veryfast",
        "x264-params": "keyint=16:min-keyint=16:scenecut=0:bframes=3:b-adapt=0:b-pyramid=normal",
    }, ".mp4"),
    "vp9": ("libvpx-vp9", "yuv420p", {
        "crf": "20", "b": "0", "deadline": "good", "cpu-used": "4", "g": "16",
    }, ".webm"),
    "mjpeg": ("mjpeg", "yuvj444p", {"qmin": "2", "qmax": "2"}, ".avi"),
}
CODECS: tuple[str, ...] = tuple(ENCODERS)

#: name -> number of frames of the videos written per codec (the last one is shorter than a
#: 16 x stride-2 clip's span)
VIDEO_FRAMES: dict[str, int] = {"long": 72, "long2": 50, "short": 20}

FPS = 25


@dataclasses.dataclass(frozen=True)
class StampedVideo:
    """One written test video, checked: stamps read back in order, frame types counted.

    Attributes:
        record: what the loaders get (probed like the index does).
        name: ``"long"``, ``"long2"`` or ``"short"``.
        b_frames, keyframes: decoded B-frames and demuxed keyframe packets in the file.
    """

    record: VideoRecord
    name: str
    b_frames: int
    keyframes: int


def write_stamped_video(path: Path, num_frames: int, *, codec: str) -> None:
    """Encode frames ``0 .. num_frames - 1`` stamped with their numbers (constant frame rate:
    frame ``i`` at ``i / 25`` s)."""
    encoder, pix_fmt, options, _suffix = ENCODERS[codec]
    rate = Fraction(FPS)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=rate, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = FRAME_WIDTH, FRAME_HEIGHT, pix_fmt
        ctx = stream.codec_context
        ctx.time_base = 1 / rate
        ctx.color_range = 2 if pix_fmt.startswith("yuvj") else 1
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(stamp_frame(i), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = i
            frame.time_base = ctx.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _inspect(path: Path) -> tuple[np.ndarray, int, int]:
    """Sequential PyAV decode: stamps in presentation order, B-frames, keyframe packets."""
    b_frames = 0
    with av.open(str(path)) as container:
        stamps = []
        for frame in container.decode(video=0):
            b_frames += int(frame.pict_type) == int(av.video.frame.PictureType.B)
            stamps.append(read_stamps(video_io.frame_to_rgb(frame))[0][0])
    with av.open(str(path)) as container:
        keyframes = sum(p.is_keyframe for p in container.demux(video=0) if p.size)
    return np.asarray(stamps), b_frames, keyframes


def make_videos(root: Path, codecs: Iterable[str] = CODECS) -> dict[str, list[StampedVideo]]:
    """Write and verify the stamped videos of each codec under ``root``.

    Returns:
        codec -> the videos in :data:`VIDEO_FRAMES` order (their list position is the
        ``video_index`` the loaders and plans use).

    Raises:
        RuntimeError: a stamp did not survive encoding, or the h264 file has no B-frames (the
            check would not test what it claims).
    """
    out: dict[str, list[StampedVideo]] = {}
    for codec in codecs:
        if codec not in ENCODERS:
            raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
        videos = []
        for label, (name, frames) in enumerate(VIDEO_FRAMES.items()):
            path = root / f"{codec}_{name}{ENCODERS[codec][3]}"
            write_stamped_video(path, frames, codec=codec)
            stamps, b_frames, keyframes = _inspect(path)
            if not np.array_equal(stamps, np.arange(frames)):
                raise RuntimeError(f"{path}: the stamps did not survive encoding (read back "
                                   f"{stamps.tolist()}); the check cannot run")
            if codec == "h264" and b_frames == 0:
                raise RuntimeError(f"{path}: libx264 wrote no B-frames; the check cannot run")
            info = video_io.probe_video(path)
            if info.num_frames != frames:
                raise RuntimeError(f"{path}: demuxing counts {info.num_frames} frames, "
                                   f"{frames} were written")
            record = VideoRecord(
                path=str(path), label=label, video_id=path.stem, num_frames=info.num_frames,
                fps=info.fps, width=info.width, height=info.height, codec=info.codec,
            )
            videos.append(StampedVideo(record, name, b_frames, keyframes))
        out[codec] = videos
    return out


# ------------------------------------------------------------------------------- the plan

@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """What every decoder is asked for (the same for every codec: the videos have the same
    lengths in every codec).

    Attributes:
        plan_kwargs: :func:`plan_sample`'s keyword arguments (seed, views, clip, crop=None).
        train_epochs: epochs decoded in train mode.
        backward: (epoch, video_index) pairs whose view 1 starts before view 0.
        eval_clips: clips per video in eval mode.
    """

    plan_kwargs: dict[str, Any]
    train_epochs: tuple[int, ...]
    backward: tuple[tuple[int, int], ...]
    eval_clips: int


def make_plan(records: Sequence[VideoRecord], *, seed: int, epochs: int, num_views: int = 2,
              clip_len: int = 16, stride: int = 2, eval_clips: int = 5,
              search_epochs: int = 64) -> ClipPlan:
    """Choose the train epochs: ``0 .. epochs - 1``, plus the first later epoch in which some
    video's second view starts before its first when none of those has one."""
    kwargs = {"seed": seed, "num_views": num_views, "clip_len": clip_len, "stride": stride,
              "crop": None, "flip": True}

    def backward_in(epoch: int) -> list[tuple[int, int]]:
        out = []
        for i, record in enumerate(records):
            frames = plan_sample(record, video_index=i, epoch=epoch, mode="train",
                                 **kwargs).frame_indices
            if frames[1, 0] < frames[0, 0]:
                out.append((epoch, i))
        return out

    chosen = list(range(epochs))
    backward = [pair for e in chosen for pair in backward_in(e)]
    extra = epochs
    while not backward and extra < epochs + search_epochs:
        backward = backward_in(extra)
        if backward:
            chosen.append(extra)
        extra += 1
    return ClipPlan(kwargs, tuple(chosen), tuple(backward), eval_clips)


# --------------------------------------------------------------------------- the decoders

#: build(records, mode=..., batch_size=..., seed=..., num_views=..., clip_len=..., stride=...,
#: eval_clips=...) -> a loader: set_epoch(e), iteration yields dict(views uint8
#: (B, V, T, H, W, 3) (any device), index int64 (B,))
LoaderFactory = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """A decoder under test.

    Attributes:
        key: command-line name (``cpu``, ``dali-cpu``, ``dali-mixed``).
        name: report name.
        build: the :data:`LoaderFactory` (full frames, ``crop=None``).
        codecs: codecs it can read (others are reported as not applicable).
        unavailable: why it cannot run on this machine, or None (called at check time).
    """

    key: str
    name: str
    build: LoaderFactory
    codecs: tuple[str, ...] = CODECS
    unavailable: Callable[[], str | None] = lambda: None


def _build_cpu(records, **kwargs):
    from dali_fame.data.cpu_loader import build_cpu_loader

    return build_cpu_loader(records, crop=None, workers=0, drop_last=False, **kwargs)


def _dali_missing() -> str | None:
    # Only DALI itself: if dali_fame's own pipeline module fails to import, that is a bug to
    # report as a failure (the loader build raises), not a decoder missing from this machine.
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install's OSError
        text = str(exc).strip().splitlines()
        return f"DALI not importable ({type(exc).__name__}: {text[0][:100] if text else ''})"
    return None


def _cuda_missing() -> str | None:
    missing = _dali_missing()
    if missing:
        return missing
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _dali_factory(device: str) -> LoaderFactory:
    def build(records, **kwargs):
        from dali_fame.data.dali_pipeline import build_dali_loader

        return build_dali_loader(records, crop=None, device=device, drop_last=False, **kwargs)

    return build


#: every decoder the project has, in report order
DECODERS: tuple[DecoderSpec, ...] = (
    DecoderSpec("cpu", "CPU loader (PyAV)", _build_cpu),
    DecoderSpec("dali-cpu", "DALI cpu", _dali_factory("cpu"), codecs=("vp9", "mjpeg"),
                unavailable=_dali_missing),
    DecoderSpec("dali-mixed", "DALI mixed", _dali_factory("gpu"), unavailable=_cuda_missing),
)


# ------------------------------------------------------------------------------ the check

@dataclasses.dataclass
class CheckResult:
    """One decoder on one codec.

    Attributes:
        decoder, codec: what was checked (codec ``"-"`` when the decoder is unavailable).
        status: ``"pass"``, ``"FAIL"``, ``"n/a"`` (codec not read by this decoder) or
            ``"unavailable"``.
        frames: frames compared.
        wrong: frames that were not the planned frame (or not mirrored as planned).
        first_wrong: the first mismatch in words (wanted vs got), or the error.
        reason: why the decoder did not run (``n/a`` / ``unavailable``).
        seconds: time spent (loader build + decoding + comparing).
    """

    decoder: str
    codec: str
    status: str
    frames: int = 0
    wrong: int = 0
    first_wrong: str = ""
    reason: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _describe(number: int, mirrored: bool) -> str:
    if number < 0:
        return "no readable stamp"
    return f"frame {number}" + (" mirrored" if mirrored else "")


def _check_pass(loader, videos: Sequence[StampedVideo], *, mode: str, epoch: int,
                plan_kwargs: dict[str, Any], result: CheckResult) -> None:
    """Decode one epoch and compare every frame with its plan (updates ``result``)."""
    records = [v.record for v in videos]
    loader.set_epoch(epoch)
    delivered: list[int] = []
    where = f"{mode} epoch {epoch}" if mode == "train" else mode
    for batch in loader:
        views = batch["views"].cpu().numpy()
        for row, video_index in enumerate(batch["index"].tolist()):
            delivered.append(video_index)
            plan = plan_sample(records[video_index], video_index=video_index, epoch=epoch,
                               mode=mode, **plan_kwargs)
            want = plan.frame_indices
            got = views[row]
            name = videos[video_index].name
            if got.shape[:2] != want.shape:
                result.wrong += want.size
                result.first_wrong = result.first_wrong or (
                    f"{name} video, {where}: wanted {want.shape[0]} clips x {want.shape[1]} "
                    f"frames, got {got.shape[0]} x {got.shape[1]}")
                continue
            numbers, mirrored = read_stamps(got.reshape(-1, *got.shape[2:]))
            numbers, mirrored = numbers.reshape(want.shape), mirrored.reshape(want.shape)
            flips = np.array([bool(w.flip) if w is not None else False for w in plan.windows])
            bad = (numbers != want) | (mirrored != flips[:, None])
            result.frames += want.size
            result.wrong += int(bad.sum())
            if bad.any() and not result.first_wrong:
                v, t = (int(x) for x in np.argwhere(bad)[0])
                result.first_wrong = (
                    f"{name} video, {where}, clip {v} frame {t}: wanted "
                    f"{_describe(int(want[v, t]), bool(flips[v]))}, got "
                    f"{_describe(int(numbers[v, t]), bool(mirrored[v, t]))}")
    missing = sorted(set(range(len(records))) - set(delivered))
    extra = len(delivered) - len(set(delivered))
    if missing or extra:
        result.wrong += 1
        what = (f"{', '.join(videos[i].name for i in missing)} video(s) not delivered"
                if missing else f"{extra} video(s) delivered twice")
        reported = list(getattr(loader, "failures", None) or getattr(loader, "skipped", None)
                        or [])
        if reported and hasattr(reported[-1], "reason"):
            what += f" (the loader reports {reported[-1].path}: {reported[-1].reason})"
        result.first_wrong = result.first_wrong or f"{where}: {what}"


def check_decoder(spec: DecoderSpec, videos: Sequence[StampedVideo], *, codec: str,
                  plan: ClipPlan) -> CheckResult:
    """Run one decoder on one codec's videos: every train epoch of ``plan``, then eval."""
    result = CheckResult(spec.name, codec, "pass")
    start = time.perf_counter()
    records = [v.record for v in videos]
    common = {"batch_size": len(records), "seed": plan.plan_kwargs["seed"],
              "num_views": plan.plan_kwargs["num_views"],
              "clip_len": plan.plan_kwargs["clip_len"], "stride": plan.plan_kwargs["stride"]}
    check_kwargs = dict(plan.plan_kwargs)
    try:
        loader = spec.build(records, mode="train", **common)
        for epoch in plan.train_epochs:
            _check_pass(loader, videos, mode="train", epoch=epoch, plan_kwargs=check_kwargs,
                        result=result)
        del loader
        loader = spec.build(records, mode="eval", eval_clips=plan.eval_clips, **common)
        _check_pass(loader, videos, mode="eval", epoch=0,
                    plan_kwargs={**check_kwargs, "eval_clips": plan.eval_clips}, result=result)
        del loader
    except Exception as exc:  # noqa: BLE001 - a decoder that crashes fails the check, with why
        text = str(exc).strip().splitlines()
        result.wrong += 1
        result.first_wrong = (f"error: {type(exc).__name__}: {text[0][:200] if text else ''}"
                              + (f" (after {result.first_wrong})" if result.first_wrong else ""))
    if result.wrong:
        result.status = "FAIL"
    result.seconds = time.perf_counter() - start
    return result


@dataclasses.dataclass
class CheckReport:
    """Everything one check found: the videos, the plan, one result per decoder x codec."""

    videos: dict[str, list[StampedVideo]]
    plan: ClipPlan
    results: list[CheckResult]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.results)


def run_check(root: Path, *, codecs: Sequence[str] = CODECS,
              decoders: Sequence[DecoderSpec] = DECODERS, seed: int = 0, epochs: int = 3,
              progress: Callable[[CheckResult], None] | None = None) -> CheckReport:
    """Write the stamped videos under ``root`` and check every decoder on every codec.

    Args:
        root: an existing folder for the videos (files named ``<codec>_<name>.<ext>``).
        codecs: which codecs to write (:data:`CODECS`).
        decoders: the decoders to check (:data:`DECODERS`, or your own :class:`DecoderSpec`).
        seed: the sampling seed (which frames, which flips).
        epochs: train epochs to decode (one with a backward second view is added if needed).
        progress: called with each result as soon as it is known.
    """
    start = time.perf_counter()
    videos, plan = prepare(root, codecs=codecs, seed=seed, epochs=epochs)
    results = check_all(videos, plan, decoders=decoders, progress=progress)
    return CheckReport(videos, plan, results, time.perf_counter() - start)


def prepare(root: Path, *, codecs: Sequence[str] = CODECS, seed: int = 0, epochs: int = 3
            ) -> tuple[dict[str, list[StampedVideo]], ClipPlan]:
    """The first half of :func:`run_check`: write and verify the videos, choose the clips."""
    videos = make_videos(root, codecs)
    first = next(iter(videos.values()))
    return videos, make_plan([v.record for v in first], seed=seed, epochs=epochs)


def check_all(videos: dict[str, list[StampedVideo]], plan: ClipPlan, *,
              decoders: Sequence[DecoderSpec] = DECODERS,
              progress: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """The second half of :func:`run_check`: every decoder on every codec of ``videos``."""
    results: list[CheckResult] = []
    for spec in decoders:
        missing = spec.unavailable()
        if missing:
            todo = [CheckResult(spec.name, "-", "unavailable", reason=missing)]
        else:
            todo = [codec if codec in spec.codecs else
                    CheckResult(spec.name, codec, "n/a",
                                reason=f"reads {'/'.join(spec.codecs)} only")
                    for codec in videos]
        for item in todo:
            result = (item if isinstance(item, CheckResult)
                      else check_decoder(spec, videos[item], codec=item, plan=plan))
            results.append(result)
            if progress:
                progress(result)
    return results


# --------------------------------------------------------------------------------- report

_HEADER = f"{'decoder':<20} {'codec':<6} {'result':<11} {'frames':>6}  first wrong frame / note"


def format_result(r: CheckResult) -> str:
    frames = str(r.frames) if r.status in ("pass", "FAIL") else ""
    note = r.first_wrong if r.status == "FAIL" else r.reason
    if r.status == "FAIL" and r.wrong:
        note = f"{r.wrong} wrong; first: {note}"
    return f"{r.decoder:<20} {r.codec:<6} {r.status:<11} {frames:>6}  {note}".rstrip()


def format_header(report_videos: dict[str, list[StampedVideo]], plan: ClipPlan, root: Path
                  ) -> str:
    kw = plan.plan_kwargs
    span = clip_span(clip_len=kw["clip_len"], stride=kw["stride"])
    lines = [(f"dali-fame check-decode: frame-stamped videos in {root} "
              f"({FRAME_WIDTH}x{FRAME_HEIGHT}, {FPS} fps)")]
    for codec, videos in report_videos.items():
        sizes = ", ".join(f"{v.name} {v.record.num_frames}" for v in videos)
        extra = ""
        if codec == "h264":
            extra = f"; B-frames {sum(v.b_frames for v in videos)}"
        keys = sum(v.keyframes for v in videos)
        frames = sum(v.record.num_frames for v in videos)
        lines.append(f"  {codec:<6} {ENCODERS[codec][0]:<11} frames: {sizes} "
                     f"(keyframes {keys} of {frames}{extra})")
    short = [v for v in next(iter(report_videos.values())) if v.record.num_frames < span]
    lines.append(
        f"  clips: train {kw['num_views']} views x {kw['clip_len']} frames stride "
        f"{kw['stride']}, full frames, random flips, seed {kw['seed']}, epochs "
        f"{' '.join(map(str, plan.train_epochs))} ({len(plan.backward)} samples whose view 1 "
        f"starts before view 0); eval {plan.eval_clips} uniform clips"
    )
    if short:
        lines.append(f"  short video: {short[0].record.num_frames} frames < span {span} "
                     "(clips repeat its last frame)")
    return "\n".join(lines)


def format_footer(report: CheckReport) -> str:
    ran = [r for r in report.results if r.status in ("pass", "FAIL")]
    failed = [r for r in ran if r.failed]
    frames = sum(r.frames for r in ran)
    if failed:
        return (f"FAILED: {len(failed)} of {len(ran)} decoder/codec checks returned wrong "
                f"frames or errors ({report.seconds:.1f} s). Do not train with "
                f"{', '.join(sorted({r.decoder for r in failed}))} on this machine.")
    return (f"OK: {len(ran)} decoder/codec checks, {frames} frames, every one exactly the "
            f"requested frame ({report.seconds:.1f} s)")


# ------------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dali-fame check-decode``."""
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    parser.add_argument("--decoders", nargs="+", default=[d.key for d in DECODERS],
                        choices=[d.key for d in DECODERS])
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (frames and flips)")
    parser.add_argument("--epochs", type=int, default=3, help="train epochs to decode")
    parser.add_argument("--keep-dir", type=Path, default=None,
                        help="write the videos here and keep them (default: a temp dir)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail when the DALI mixed (GPU) decoder cannot run")


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when any decoder returned a wrong frame or failed (or, under
    ``--require-gpu``, when the mixed decoder could not run)."""
    decoders = [d for d in DECODERS if d.key in args.decoders]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="check_decode_") as tmp:
        root = args.keep_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            videos, plan = prepare(root, codecs=args.codecs, seed=args.seed, epochs=args.epochs)
        except RuntimeError as exc:
            print(f"dali-fame check-decode: error: {exc}", file=sys.stderr)
            return 2
        print(format_header(videos, plan, root))
        print()
        print(_HEADER, flush=True)
        results = check_all(videos, plan, decoders=decoders,
                            progress=lambda r: print(format_result(r), flush=True))
    report = CheckReport(videos, plan, results, time.perf_counter() - start)
    print()
    print(format_footer(report))
    failed = report.failed
    if args.require_gpu:
        mixed = [r for r in results if r.decoder == "DALI mixed"]
        if not mixed or any(r.status == "unavailable" for r in mixed):
            reason = mixed[0].reason if mixed else "not selected in --decoders"
            print(f"--require-gpu: DALI mixed did not run ({reason})")
            failed = True
    return 1 if failed else 0

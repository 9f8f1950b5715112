"""Encode, decode and probe video files with PyAV (which bundles its own FFmpeg).

Frames are always uint8 RGB, channels-last: ``(T, H, W, 3)`` for a clip (DALI's layout).

Codecs (the container follows the file suffix):

============  ==========================  =========================================
codec         containers                  encoder settings
============  ==========================  =========================================
``"h264"``    ``.mp4`` (also ``.mkv``)    libx264, yuv420p, CRF 12, preset veryfast
``"vp9"``     ``.webm`` (also ``.mkv``)   libvpx-vp9, yuv420p, CRF 12, b:v 0, realtime, cpu-used 8
``"mjpeg"``   ``.avi`` (also ``.mkv``)    mjpeg, yuvj444p, qscale 2 (qmin = qmax = 2)
============  ==========================  =========================================

All files are constant frame rate: frame ``i`` has presentation time ``i / fps``. Colour is
BT.601 (limited range for h264/vp9, full range for mjpeg's JPEG frames) and tagged so; h264
chroma is tagged as centred (where the RGB -> YUV step puts it). h264 and vp9 use 4:2:0 chroma,
so width and height must be even; mjpeg keeps full chroma (4:4:4, no size constraint).

Decoding converts YUV -> RGB with bilinear chroma upsampling and exact rounding
(:func:`frame_to_rgb`). On vp9 and mjpeg files this is bit-identical to DALI's CPU video decoder
(``fn.decoders.video`` / ``fn.experimental.readers.video`` with ``device="cpu"``), measured in
tests/data/test_video_io.py. The GPU (NVDEC) path has not been compared here.

Round-trip error, generator frames vs PyAV-decoded frames, measured on the synthetic world
(:mod:`dali_fame.data.synthetic`, 10 classes x 3 videos, with and without distractor and camera
shake), absolute error on 0..255, worst video:

=========  ==================  ==================  ====================
codec      mean, 64x64 x 12    mean, 128x128 x 32  99th pct (64 / 128)
=========  ==================  ==================  ====================
h264       3.2 (average 2.4)   2.5 (average 1.8)   36 / 28
vp9        3.0 (average 2.2)   2.6 (average 1.8)   35 / 27
mjpeg      2.8 (average 2.5)   2.7 (average 2.3)   12 / 11
=========  ==================  ==================  ====================

The 99th percentile is set by 4:2:0 chroma at the edges of saturated objects. The bounds the
tests and ``dali-fame synth --inspect`` enforce are :data:`CODEC_TOLERANCE`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

#: codec name -> (FFmpeg encoder, pixel format, encoder options, allowed suffixes; first = default)
_CODECS: dict[str, tuple[str, str, dict[str, str], tuple[str, ...]]] = {
    "h264": (
        "libx264",
        "yuv420p",
        # chromaloc=1 tags the chroma samples as centred, which is where the area-averaging RGB
        # -> YUV step puts them (H.264 otherwise implies left-sited chroma and decoders shift it).
        {"crf": "12", "preset": "veryfast", "x264-params": "chromaloc=1"},
        (".mp4", ".mkv"),
    ),
    "vp9": (
        "libvpx-vp9",
        "yuv420p",
        # b:v 0 makes crf a pure constant-quality target; realtime/cpu-used 8 keeps encoding fast.
        {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
        (".webm", ".mkv"),
    ),
    # mjpeg's quality is set by qscale; pinning qmin = qmax = 2 is ffmpeg's "-q:v 2".
    "mjpeg": ("mjpeg", "yuvj444p", {"qmin": "2", "qmax": "2"}, (".avi", ".mkv")),
}

#: the codec names write_video accepts
CODECS: tuple[str, ...] = tuple(_CODECS)

#: codec -> default file suffix
CODEC_SUFFIX: dict[str, str] = {name: spec[3][0] for name, spec in _CODECS.items()}

#: codec -> (max mean absolute error, max 99th-percentile absolute error) on 0..255 that the tests
#: allow between the frames written and the frames PyAV decodes (see the module docstring).
CODEC_TOLERANCE: dict[str, tuple[float, float]] = {
    "h264": (4.0, 48.0),
    "vp9": (4.0, 48.0),
    "mjpeg": (3.5, 16.0),
}

# RGB -> YUV: area-average the chroma (a plain subsample aliases colour edges).
_ENCODE_SCALING = Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
# YUV -> RGB: bilinear chroma upsampling with exact rounding. FFmpeg's default fast path repeats
# each chroma sample (mean error ~2x larger); these flags also make PyAV's output bit-identical
# to DALI's CPU video decoder (measured on vp9 and mjpeg files), so both loaders agree.
DECODE_INTERPOLATION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT

#: codecs whose pixel format subsamples chroma 2x2 (width and height must be even)
_EVEN_SIZE_CODECS = frozenset(name for name, spec in _CODECS.items() if spec[1].endswith("420p"))


class VideoDecodeError(ValueError):
    """A video file could not be opened, demuxed or decoded (or lacks the requested frames).

    Attributes:
        path: the file.
        reason: what went wrong, in words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers)
        return (type(self), (self.path, self.reason))


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found in a file.

    Attributes:
        num_frames: number of video frames, counted by demuxing every packet of the stream
            (or decoding every frame, ``decode=True``); container headers are not trusted.
        fps: frames per second (the stream's average rate; for a variable frame rate file,
            num_frames / duration).
        width, height: frame size in pixels.
        codec: FFmpeg decoder name, e.g. ``"h264"``, ``"vp9"``, ``"mjpeg"``.
        duration_s: presentation span in seconds, last frame's duration included.
        variable_frame_rate: True when the presentation timestamps are not evenly spaced.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration_s: float
    variable_frame_rate: bool


def codec_size_error(codec: str, width: int, height: int) -> str | None:
    """Why ``codec`` cannot encode ``width x height`` frames, or None when it can."""
    if codec not in _CODECS:
        return f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}"
    if width < 2 or height < 2:
        return f"frame size {width}x{height} is too small (need at least 2x2)"
    if codec in _EVEN_SIZE_CODECS and (width % 2 or height % 2):
        return (
            f"codec {codec!r} stores yuv420p (chroma subsampled 2x2), so width and height must "
            f"be even; got {width}x{height}"
        )
    return None


def _fps_fraction(fps: float) -> Fraction:
    # 1001 covers the NTSC rates (30000/1001, 24000/1001) as well as integer and .5 rates.
    return Fraction(fps).limit_denominator(1001)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    *,
    fps: float,
    codec: str,
    encoder_options: dict[str, str] | None = None,
) -> None:
    """Encode ``frames`` into a constant-frame-rate video file.

    Args:
        path: output file; its suffix must fit the codec (``.mp4`` for h264, ``.webm`` for vp9,
            ``.avi`` for mjpeg, or ``.mkv`` for any). Parent folders must exist.
        frames: uint8 ``(T, H, W, 3)`` RGB, channels-last, ``T >= 1``.
        fps: frames per second, > 0.
        codec: ``"h264"``, ``"vp9"`` or ``"mjpeg"``.
        encoder_options: FFmpeg encoder options that replace the codec's defaults key by key
            (the bias world's static clips: h264 intra-only at a fixed QP, so that every decoded
            frame is the same).

    Raises:
        ValueError: bad frames array, fps, codec, suffix or frame size (nothing is written).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 1:
        raise ValueError(
            f"write_video({path}): frames must be uint8 (T, H, W, 3) with T >= 1; "
            f"got {frames.dtype} {frames.shape}"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video({path}): fps must be a positive number, got {fps}")
    height, width = frames.shape[1:3]
    problem = codec_size_error(codec, width, height)
    if problem:
        raise ValueError(f"write_video({path}): {problem}")
    encoder, pix_fmt, options, suffixes = _CODECS[codec]
    if path.suffix.lower() not in suffixes:
        raise ValueError(
            f"write_video({path}): codec {codec!r} needs a file ending in {' or '.join(suffixes)}"
        )
    rate = _fps_fraction(fps)
    full_range = pix_fmt.startswith("yuvj")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            encoder, rate=rate, options={**options, **(encoder_options or {})}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        # One tick per frame: timestamps are exactly i / fps (constant frame rate).
        stream.codec_context.time_base = 1 / rate
        ctx = stream.codec_context
        ctx.colorspace = 6  # AVCOL_SPC_SMPTE170M: BT.601, what swscale uses by default
        ctx.color_primaries = 6  # AVCOL_PRI_SMPTE170M
        ctx.color_trc = 6  # AVCOL_TRC_SMPTE170M
        ctx.color_range = 2 if full_range else 1  # AVCOL_RANGE_JPEG / AVCOL_RANGE_MPEG
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=pix_fmt, interpolation=_ENCODE_SCALING, threads=1)
            frame.pts = i
            frame.time_base = ctx.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Convert one decoded PyAV frame to uint8 ``(H, W, 3)`` RGB the way :func:`read_frames` does.

    Use this in any PyAV decode loop (e.g. one that seeks) to get the same pixels as
    :func:`read_frames` and as DALI's CPU decoder.
    """
    return frame.reformat(format="rgb24", interpolation=DECODE_INTERPOLATION, threads=1).to_ndarray()


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoDecodeError(path, "no such file")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"cannot open: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container


def read_frames(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames of a video file with PyAV.

    Decoding runs sequentially from the first frame and stops after the last requested frame,
    so the frame numbers are exact (no seeking, no timestamp arithmetic).

    Args:
        path: the video file.
        indices: frame numbers to return, in the order given; they may repeat and need not be
            sorted. None returns every frame.

    Returns:
        uint8 ``(N, H, W, 3)`` RGB, channels-last; N = len(indices) or the number of frames.

    Raises:
        VideoDecodeError: the file cannot be opened or decoded, or an index is past the end.
        ValueError: a negative index.
    """
    path = Path(path)
    wanted: np.ndarray | None = None
    if indices is not None:
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size and wanted.min() < 0:
            raise ValueError(f"read_frames({path}): frame indices must be >= 0, got {wanted.min()}")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        if wanted is not None and wanted.size == 0:
            ctx = stream.codec_context
            return np.zeros((0, ctx.height, ctx.width, 3), np.uint8)
        stop = None if wanted is None else int(wanted.max()) + 1
        decoded: list[np.ndarray] = []
        keep = None if wanted is None else set(wanted.tolist())
        picked: dict[int, np.ndarray] = {}
        count = 0
        try:
            for frame in container.decode(stream):
                if keep is None:
                    decoded.append(frame_to_rgb(frame))
                elif count in keep:
                    picked[count] = frame_to_rgb(frame)
                count += 1
                if stop is not None and count >= stop:
                    break
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(path, f"decoding failed after {count} frames: {exc}") from exc
    finally:
        container.close()
    if wanted is None:
        if not decoded:
            raise VideoDecodeError(path, "no frames could be decoded")
        return np.stack(decoded)
    if stop is not None and count < stop:
        raise VideoDecodeError(
            path, f"frame {stop - 1} requested but the video has only {count} frames"
        )
    return np.stack([picked[int(i)] for i in wanted])


def probe_video(path: str | Path, *, decode: bool = False) -> VideoInfo:
    """Count frames and check timing by reading every packet of the first video stream.

    By default this demuxes (reads packet headers, no decoding): fast, and it does not trust the
    container's frame count, which is often missing or wrong. ``decode=True`` decodes every
    frame instead (slower, exact even for oddities such as AVI "packed B-frames", where demuxed
    packets and frames differ). A file is variable frame rate when the sorted presentation
    timestamps have steps that differ by more than one time-base tick and 0.5 % of the median
    step (rounding to e.g. milliseconds in WebM is not VFR).

    Raises:
        VideoDecodeError: the file cannot be opened, demuxed or decoded, or has no video frames.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height, codec = ctx.width, ctx.height, ctx.name
        time_base = stream.time_base
        stamps: list[int] = []
        durations: list[int] = []
        count = 0
        try:
            items = container.decode(stream) if decode else container.demux(stream)
            for item in items:
                if not decode and item.size == 0:  # the flush packet PyAV yields at the end
                    continue
                count += 1
                stamp = item.pts if item.pts is not None else getattr(item, "dts", None)
                if stamp is not None:
                    stamps.append(int(stamp))
                if item.duration:
                    durations.append(int(item.duration))
        except av.error.FFmpegError as exc:
            what = "decoding" if decode else "demuxing"
            raise VideoDecodeError(path, f"{what} failed after {count} frames: {exc}") from exc
        average_rate = stream.average_rate or stream.guessed_rate
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(path, "no video frames")
    variable = False
    span_s = None
    if len(stamps) >= 2 and time_base is not None:
        steps = np.diff(np.sort(np.asarray(stamps, np.int64)))
        median = float(np.median(steps))
        slack = max(1.0, 0.005 * median)
        variable = bool(np.any(np.abs(steps - median) > slack)) or median <= 0
        last = durations[-1] if durations else median
        span_s = float((int(steps.sum()) + last) * time_base)
    if average_rate and not variable:
        fps = float(average_rate)
    elif span_s:
        fps = count / span_s
    else:
        fps = float(average_rate or 0.0)
    if span_s is None:
        span_s = count / fps if fps > 0 else 0.0
    return VideoInfo(
        num_frames=count,
        fps=fps,
        width=int(width),
        height=int(height),
        codec=str(codec),
        duration_s=span_s,
        variable_frame_rate=variable,
    )

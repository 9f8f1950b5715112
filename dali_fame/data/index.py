"""Validated dataset index: probe every listed video once, cache the results, report bad files.

``build_index`` reads a split with :func:`dali_fame.data.readers.read_dataset`, probes each
video file (in worker processes, with a progress bar), and returns an :class:`IndexResult`:
the valid :class:`~dali_fame.data.records.VideoRecord` list that the loaders use, plus every
excluded file with its reason, so that nothing is dropped silently.

Each listed entry ends up in exactly one of these states (so the counts add up):

- excluded: ``missing``, ``zero-byte``, ``not a video`` (no known container and FFmpeg cannot
  open it, e.g. a text file named .mp4), ``unreadable`` (a video container that cannot be opened
  or whose first frame does not decode), ``truncated`` (the container's own structure says the
  file is cut, decoding fails mid-stream, or far fewer frames decode than the container claims),
  ``too short`` (fewer than 2 frames: no motion, no clip);
- kept, possibly with flags: ``short`` (fewer frames than one clip spans: the sampler repeats the
  last frame), ``unusual codec`` (not in :data:`COMMON_CODECS`; kept, warned), ``variable frame
  rate`` (kept, flagged: clips are frame-indexed, so their duration in seconds varies).

Probing (``mode="decode"``, default) demuxes every packet (:func:`video_io.probe_video`: frame
count, fps, size, codec, duration, variable frame rate) and then decodes every frame, because a
damaged file can demux fine and still fail to decode, and DALI's CPU decoder may return wrong
frames for such a file without an error. ``mode="demux"`` decodes only the first frame: much
faster on large datasets (Kinetics), but it cannot see damage in the middle of a stream.
FFmpeg conceals some bitstream errors without reporting them; no probe sees those.

Cache: one JSON file keyed by the path relative to the root, storing size and mtime (ns); a file
is probed again only when either changed, or the probe version changed, or a full decode is
asked for where only a demux was cached. It lives in
``ROOT/.dali_fame_index/probe_cache.json``, or in ``cache_dir`` when given, or in
``$XDG_CACHE_HOME/dali_fame/index`` (``~/.cache``) when the root is read-only. Train and test
splits of one root share it.

Distributed runs: index once before launching (``dali-fame index ROOT --format NAME``), or call
``build_index`` on the main process first: every later call only stats the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from dali_fame.data.readers import FORMATS, read_dataset
from dali_fame.data.records import DatasetSpec, VideoRecord
from dali_fame.data.sampler import clip_span

logger = logging.getLogger(__name__)

# exclusion reasons
MISSING = "missing"
ZERO_BYTE = "zero-byte"
NOT_A_VIDEO = "not a video"
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
TOO_SHORT = "too short"
EXCLUSION_REASONS: tuple[str, ...] = (
    MISSING,
    ZERO_BYTE,
    NOT_A_VIDEO,
    UNREADABLE,
    TRUNCATED,
    TOO_SHORT,
)
# flags on kept videos
SHORT = "short"
UNUSUAL_CODEC = "unusual codec"
VARIABLE_FRAME_RATE = "variable frame rate"
FLAGS: tuple[str, ...] = (SHORT, UNUSUAL_CODEC, VARIABLE_FRAME_RATE)

#: codecs common in action-recognition datasets; anything else is kept with a warning
COMMON_CODECS: frozenset[str] = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "mpeg1video", "mpeg2video"}
)
#: a file is truncated when fewer than (1 - this) x the frames its container claims decode
TRUNCATION_TOLERANCE = 0.1
#: bump when the probe's meaning changes, so old cache entries are probed again
PROBE_VERSION = 1
PROBE_MODES: tuple[str, ...] = ("decode", "demux")
_CACHE_DIRNAME = ".dali_fame_index"
_CACHE_FILENAME = "probe_cache.json"
_CACHE_SAVE_INTERVAL_S = 120.0


# ----------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class ProbeResult:
    """What probing one file found. ``reason`` is None when the file is a usable video.

    Attributes:
        reason: an exclusion reason (``NOT_A_VIDEO``, ``UNREADABLE``, ``TRUNCATED``) or None.
        detail: words for the report (what failed, or frame counts).
        num_frames: frames that decode (``mode="decode"``) or packets (``mode="demux"``).
        claimed_frames: the container's own frame count (header or duration x fps), 0 if none.
        fps, width, height, codec, duration_s, variable_frame_rate: as ``video_io.VideoInfo``.
    """

    reason: str | None
    detail: str = ""
    num_frames: int = 0
    claimed_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    duration_s: float = 0.0
    variable_frame_rate: bool = False


def probe_file(path: str, *, mode: str = "decode") -> ProbeResult:
    """Probe one video file; never raises for a bad file (the problem goes into ``reason``).

    Args:
        path: the file (must exist and be non-empty; ``build_index`` checks that first).
        mode: "decode" (decode every frame) or "demux" (count packets, decode the first frame).
    """
    import av

    from dali_fame.data.video_io import VideoDecodeError, probe_video

    if mode not in PROBE_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(PROBE_MODES)}")
    family = _container_family(path)
    structure = _structural_truncation(path, family)
    try:
        info = probe_video(path)
    except VideoDecodeError as exc:
        if structure is not None:
            return ProbeResult(TRUNCATED, f"{structure}; {exc.reason}")
        if family is None:
            return ProbeResult(NOT_A_VIDEO, f"no known video container; {exc.reason}")
        if exc.reason.startswith("demuxing failed after") and not exc.reason.startswith(
            "demuxing failed after 0 "
        ):
            return ProbeResult(TRUNCATED, exc.reason)
        return ProbeResult(UNREADABLE, f"{family} file: {exc.reason}")
    except Exception as exc:  # noqa: BLE001 (any FFmpeg/OS failure is reported, not raised)
        return ProbeResult(UNREADABLE, f"{type(exc).__name__}: {exc}")

    base = {
        "fps": float(info.fps),
        "width": int(info.width),
        "height": int(info.height),
        "codec": info.codec,
        "duration_s": float(info.duration_s),
        "variable_frame_rate": bool(info.variable_frame_rate),
    }
    if info.width <= 0 or info.height <= 0:
        return ProbeResult(UNREADABLE, f"frame size {info.width}x{info.height}", **base)
    decoded = 0
    error = None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            claimed = _claimed_frames(container, stream, info.fps)
            try:
                for _ in container.decode(stream):
                    decoded += 1
                    if mode == "demux":
                        break
            except av.error.FFmpegError as exc:
                error = str(exc)
    except Exception as exc:  # noqa: BLE001 (any FFmpeg/OS failure is reported, not raised)
        return ProbeResult(UNREADABLE, f"{type(exc).__name__}: {exc}", **base)
    counted = decoded if mode == "decode" else info.num_frames
    base.update(num_frames=counted, claimed_frames=claimed)
    if decoded == 0:
        why = f"decoding failed at the first frame: {error}" if error else "no frame decodes"
        if structure is not None:
            return ProbeResult(TRUNCATED, f"{structure}; {why}", **base)
        return ProbeResult(UNREADABLE, why, **base)
    if error is not None:
        return ProbeResult(TRUNCATED, f"decoding failed after {decoded} frames: {error}", **base)
    if mode == "decode" and decoded < (1.0 - TRUNCATION_TOLERANCE) * info.num_frames - 1:
        # packets that demux but do not decode: damage that the decoder skipped silently
        return ProbeResult(
            TRUNCATED, f"only {decoded} of {info.num_frames} packets decode to frames", **base
        )
    if claimed and counted < (1.0 - TRUNCATION_TOLERANCE) * claimed - 1:
        what = "decode" if mode == "decode" else "are in the file"
        return ProbeResult(
            TRUNCATED, f"only {counted} frames {what}, the container claims {claimed}", **base
        )
    if structure is not None and (not claimed or counted < claimed):
        return ProbeResult(TRUNCATED, f"{structure}; {counted} frames readable", **base)
    return ProbeResult(None, "", **base)


def _claimed_frames(container, stream, fps: float) -> int:
    """The frame count the container's headers announce (0 when they announce none)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    seconds = None
    tag = (stream.metadata or {}).get("DURATION")  # Matroska writes HH:MM:SS.nnnnnnnnn per stream
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif tag and tag.count(":") == 2:
        try:
            h, m, sec = tag.split(":")
            seconds = int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            seconds = None
    elif container.duration and len(container.streams) == 1:
        # the container's duration spans all streams: trust it only when video is all there is
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    if seconds and fps > 0:
        return round(seconds * fps)
    return 0


def _container_family(path: str) -> str | None:
    """Recognise a video container by its magic bytes ("mp4", "matroska", "avi", ...)."""
    with open(path, "rb") as f:
        head = f.read(189)
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x00\x00\x01\xba" or head[:4] == b"\x00\x00\x01\xb3":
        return "mpeg"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x30\x26\xb2\x75":
        return "asf"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:  # two 188-byte TS packets
        return "mpegts"
    return None


def _structural_truncation(path: str, family: str | None) -> str | None:
    """Words saying the container's own size fields reach past the end of the file, or None.

    Cheap and precise for cut downloads/copies: MP4 boxes, the Matroska Segment and the AVI
    RIFF chunk all state their length up front.
    """
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            if family == "mp4":
                return _mp4_truncation(f, size)
            if family == "matroska":
                return _matroska_truncation(f, size)
            if family == "avi":
                f.seek(4)
                (riff,) = struct.unpack("<I", f.read(4))
                if riff + 8 > size:
                    return f"AVI RIFF chunk needs {riff + 8} bytes, the file has {size}"
    except (OSError, struct.error):
        return None
    return None


def _mp4_truncation(f, size: int) -> str | None:
    pos, boxes = 0, set()
    while pos + 8 <= size:
        f.seek(pos)
        box_size, box_type = struct.unpack(">I4s", f.read(8))
        if box_size == 1:
            (box_size,) = struct.unpack(">Q", f.read(8))
        elif box_size == 0:  # "extends to the end of the file"
            box_size = size - pos
        if box_size < 8:
            return None  # not a box structure we can follow: leave it to FFmpeg
        name = box_type.decode("latin-1")
        boxes.add(name)
        if pos + box_size > size:
            return f"MP4 '{name}' box needs {pos + box_size} bytes, the file has {size}"
        pos += box_size
    if "moov" not in boxes:
        return "MP4 has no 'moov' box (the index written at the end is missing)"
    return None


def _ebml_vint(f, *, keep_marker: bool) -> tuple[int, int, bool]:
    """(value, length in bytes, all value bits set) of an EBML variable-length integer."""
    first = f.read(1)
    if not first:
        raise OSError("end of file")
    b0 = first[0]
    length = 1
    while length <= 8 and not b0 & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise OSError("bad EBML integer")
    rest = f.read(length - 1)
    value = b0 if keep_marker else b0 & ((0x80 >> (length - 1)) - 1)
    for b in rest:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, length, unknown


def _matroska_truncation(f, size: int) -> str | None:
    f.seek(0)
    _, _, _ = _ebml_vint(f, keep_marker=True)  # EBML header id
    header_size, _, _ = _ebml_vint(f, keep_marker=False)
    f.seek(f.tell() + header_size)
    seg_id, _, _ = _ebml_vint(f, keep_marker=True)
    if seg_id != 0x18538067:
        return None
    seg_size, _, unknown = _ebml_vint(f, keep_marker=False)
    if unknown:  # live-written files may leave the size open
        return None
    if f.tell() + seg_size > size:
        return f"Matroska Segment needs {f.tell() + seg_size} bytes, the file has {size}"
    return None


def _probe_job(job: tuple[str, str]) -> dict:
    path, mode = job
    try:
        return asdict(probe_file(path, mode=mode))
    except Exception as exc:  # noqa: BLE001 (a worker must never take the index down)
        return asdict(ProbeResult(UNREADABLE, f"{type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ExcludedVideo:
    """One listed video that the loaders will not see: its path, reason and details."""

    path: str
    video_id: str
    reason: str
    detail: str


@dataclass
class IndexResult:
    """The validated index of one split.

    Attributes:
        records: valid videos in annotation order (the position is the sampler's video_index).
        excluded: every listed video left out, with its reason (one of ``EXCLUSION_REASONS``).
        flagged: flag (one of ``FLAGS``) -> ``[(path, detail)]`` for kept videos.
        class_names: ``class_names[label]``.
        ignored: files a folder walk saw but did not list (e.g. ``.txt``), with the reason.
        num_listed: entries the annotations list: ``len(records) + len(excluded)``.
        probed: paths probed in this call.
        num_cached: files whose probe came from the cache.
        cache_path: the cache file used (None if it could not be written).
        root, format, split: what was indexed.
        clip_len, stride: the clip that ``short`` refers to.
        codecs: codec -> number of valid videos.
        seconds: wall time of this call.
    """

    records: list[VideoRecord]
    excluded: list[ExcludedVideo]
    flagged: dict[str, list[tuple[str, str]]]
    class_names: list[str]
    ignored: list[tuple[str, str]]
    num_listed: int
    probed: list[str]
    cache_path: str | None
    root: str
    format: str
    split: str
    clip_len: int
    stride: int
    codecs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    num_cached: int = 0

    def counts(self) -> dict[str, int]:
        """listed, valid, excluded, each exclusion reason, each flag (flags overlap)."""
        c = Counter(e.reason for e in self.excluded)
        out = {
            "listed": self.num_listed,
            "valid": len(self.records),
            "excluded": len(self.excluded),
        }
        out.update({r: c.get(r, 0) for r in EXCLUSION_REASONS})
        out.update({f: len(self.flagged.get(f, [])) for f in FLAGS})
        return out

    def summary(self, *, max_flagged: int = 20) -> str:
        """Human-readable table of the counts, every excluded file, and the flagged files
        (at most ``max_flagged`` per flag; the JSON report lists all)."""
        c = self.counts()
        span = clip_span(clip_len=self.clip_len, stride=self.stride)
        rows = [
            ("listed in the annotations", c["listed"]),
            ("valid (the loaders see these)", c["valid"]),
            (f"  short (< {span} frames: last frame repeated)", c[SHORT]),
            ("  unusual codec (kept)", c[UNUSUAL_CODEC]),
            ("  variable frame rate (kept)", c[VARIABLE_FRAME_RATE]),
            ("excluded", c["excluded"]),
        ] + [(f"  {r}", c[r]) for r in EXCLUSION_REASONS]
        width = max(len(name) for name, _ in rows)
        lines = [
            (
                f"dali-fame index: {self.root} (format {self.format}, split {self.split}, "
                f"{len(self.class_names)} classes)"
            ),
        ]
        lines += [f"  {name:<{width}}  {value:>8}" for name, value in rows]
        lines.append(
            f"  probed now: {len(self.probed)}, from cache: {self.num_cached}, "
            f"time {self.seconds:.1f} s; cache: {self.cache_path or 'not written'}"
        )
        if self.codecs:
            lines.append(
                "  codecs: " + ", ".join(f"{k} {v}" for k, v in sorted(self.codecs.items()))
            )
        if self.ignored:
            lines.append(f"  ignored (not listed, not videos): {len(self.ignored)} file(s)")
        if self.excluded:
            lines.append("excluded files:")
            lines += [f"  {e.path}: {e.reason} ({e.detail})" for e in self.excluded]
        for flag in FLAGS:
            items = self.flagged.get(flag, [])
            if items:
                lines.append(f"{flag}:")
                lines += [f"  {p}: {d}" for p, d in items[:max_flagged]]
                if len(items) > max_flagged:
                    lines.append(f"  ... and {len(items) - max_flagged} more (see the report)")
        for p, why in self.ignored[:max_flagged]:
            lines.append(f"ignored: {p}: {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready report: counts, excluded, flagged, ignored and the valid records."""
        return {
            "root": self.root,
            "format": self.format,
            "split": self.split,
            "clip_len": self.clip_len,
            "stride": self.stride,
            "class_names": self.class_names,
            "counts": self.counts(),
            "codecs": self.codecs,
            "excluded": [asdict(e) for e in self.excluded],
            "flagged": {
                k: [{"path": p, "detail": d} for p, d in v] for k, v in self.flagged.items()
            },
            "ignored": [{"path": p, "reason": r} for p, r in self.ignored],
            "records": [asdict(r) for r in self.records],
            "probed_now": len(self.probed),
            "from_cache": self.num_cached,
            "cache_path": self.cache_path,
            "seconds": round(self.seconds, 3),
        }

    def write_report(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")


# ----------------------------------------------------------------------------- cache


def _cache_location(root: str, cache_dir: str | os.PathLike | None) -> list[str]:
    """Cache files to try, in order: cache_dir (when given), next to the data, the user cache."""
    tag = (
        f"{os.path.basename(root.rstrip(os.sep)) or 'root'}-"
        + hashlib.sha1(root.encode()).hexdigest()[:12]
    )
    if cache_dir is not None:
        return [os.path.join(os.path.abspath(os.fspath(cache_dir)), f"{tag}.json")]
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [
        os.path.join(root, _CACHE_DIRNAME, _CACHE_FILENAME),
        os.path.join(user, "dali_fame", "index", f"{tag}.json"),
    ]


def _load_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != PROBE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(candidates: list[str], files: dict) -> str | None:
    """Write atomically to the first writable candidate; return its path (None if none)."""
    payload = {"version": PROBE_VERSION, "files": files}
    for path in candidates:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(payload, f, separators=(",", ":"))
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return path
        except OSError:
            continue
    return None


def _cache_key(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel.startswith(os.pardir) else rel.replace(os.sep, "/")


# ----------------------------------------------------------------------------- build_index


def build_index(
    root: str | os.PathLike,
    *,
    format: str,
    split: str = "train",
    split_id: int = 1,
    annotation_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    clip_len: int = 16,
    stride: int = 2,
    workers: int = 2,
    mode: str = "decode",
    progress: bool = True,
) -> IndexResult:
    """Read a split's annotations, probe every listed video (cached), and validate it.

    Args:
        root: dataset root (see :func:`read_dataset`).
        format: reader name (``readers.FORMATS``).
        split, split_id, annotation_dir: passed to :func:`read_dataset`.
        cache_dir: where to keep the probe cache (default: ``ROOT/.dali_fame_index``, or the user
            cache folder when the root is read-only).
        clip_len, stride: the clip used to flag short videos (they are kept).
        workers: probe processes (1 probes in this process).
        mode: "decode" (every frame decoded: catches damage mid-stream) or "demux" (faster).
        progress: show a tqdm progress bar while probing.

    The probe workers are spawned processes (a fork could copy a caller's torch/DALI threads
    mid-state), so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    Returns:
        IndexResult; ``records`` holds only valid videos, everything else is in ``excluded``.
    """
    start_time = time.perf_counter()
    if mode not in PROBE_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(PROBE_MODES)}")
    if workers < 1:
        raise ValueError(f"workers={workers}: expected >= 1")
    span = clip_span(clip_len=clip_len, stride=stride)
    spec = read_dataset(
        root, format=format, split=split, split_id=split_id, annotation_dir=annotation_dir
    )
    data_root = spec.root if os.path.isdir(spec.root) else os.path.dirname(spec.root)
    candidates = _cache_location(data_root, cache_dir)
    cache: dict = {}
    for c in candidates:
        cache = _load_cache(c)
        if cache:
            break

    # stat every distinct file; missing / zero-byte need no probe
    stats: dict[str, tuple[int, int] | str] = {}
    for entry in spec.entries:
        if entry.path in stats:
            continue
        try:
            st = os.stat(entry.path)
        except FileNotFoundError:
            stats[entry.path] = MISSING
            continue
        except OSError as exc:
            stats[entry.path] = f"stat failed: {exc}"
            continue
        if not os.path.isfile(entry.path):
            stats[entry.path] = "not a regular file"
        elif st.st_size == 0:
            stats[entry.path] = ZERO_BYTE
        else:
            stats[entry.path] = (st.st_size, st.st_mtime_ns)

    results: dict[str, ProbeResult] = {}
    to_probe: list[str] = []
    for path, st in stats.items():
        if isinstance(st, str):
            continue
        hit = cache.get(_cache_key(path, data_root))
        if (
            isinstance(hit, dict)
            and hit.get("size") == st[0]
            and hit.get("mtime_ns") == st[1]
            # a full decode answers a demux-only question too, not the other way round
            and hit.get("mode") in (mode, "decode")
        ):
            try:
                results[path] = ProbeResult(**hit["result"])
                continue
            except (KeyError, TypeError):
                pass
        to_probe.append(path)

    cache_path = None
    if to_probe:
        cache_path = _probe_all(
            to_probe,
            stats,
            results,
            cache,
            candidates,
            data_root,
            mode=mode,
            workers=workers,
            progress=progress,
        )
    else:
        cache_path = next((c for c in candidates if os.path.isfile(c)), None)

    result = _classify(spec, stats, results, span=span, clip_len=clip_len, stride=stride)
    result.probed = to_probe
    result.num_cached = len(results) - len(to_probe)
    result.cache_path = cache_path
    result.seconds = time.perf_counter() - start_time
    _log_result(result)
    return result


def _probe_all(
    paths: list[str],
    stats: dict,
    results: dict[str, ProbeResult],
    cache: dict,
    candidates: list[str],
    data_root: str,
    *,
    mode: str,
    workers: int,
    progress: bool,
) -> str | None:
    from tqdm.auto import tqdm

    def record(path: str, res: dict) -> None:
        results[path] = ProbeResult(**res)
        size, mtime = stats[path]
        cache[_cache_key(path, data_root)] = {
            "size": size,
            "mtime_ns": mtime,
            "mode": mode,
            "result": res,
        }

    jobs = [(p, mode) for p in paths]
    bar = tqdm(total=len(jobs), desc="probing videos", unit="video", disable=not progress)
    last_save = time.monotonic()
    cache_path = None
    try:
        if workers == 1 or len(jobs) < 4:  # a pool's start-up costs more than it saves
            outputs: Iterable[dict] = map(_probe_job, jobs)
            pool = None
        else:
            # spawn: the caller may hold threads (torch, DALI) that a fork would copy mid-state
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)),
                mp_context=multiprocessing.get_context("spawn"),
            )
            chunk = max(1, min(16, len(jobs) // (workers * 8)))
            outputs = pool.map(_probe_job, jobs, chunksize=chunk)
        try:
            for (path, _), res in zip(jobs, outputs):
                record(path, res)
                bar.update(1)
                if time.monotonic() - last_save > _CACHE_SAVE_INTERVAL_S:
                    # an interrupted run over a large dataset keeps what it probed
                    cache_path = _save_cache(candidates, cache)
                    last_save = time.monotonic()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    finally:
        bar.close()
    cache_path = _save_cache(candidates, cache)
    if cache_path is None:
        logger.warning("could not write the probe cache to any of %s", ", ".join(candidates))
    elif cache_path != candidates[0]:
        logger.warning("%s is not writable: probe cache written to %s", candidates[0], cache_path)
    return cache_path


def _classify(
    spec: DatasetSpec,
    stats: dict,
    results: dict[str, ProbeResult],
    *,
    span: int,
    clip_len: int,
    stride: int,
) -> IndexResult:
    records: list[VideoRecord] = []
    excluded: list[ExcludedVideo] = []
    flagged: dict[str, list[tuple[str, str]]] = {f: [] for f in FLAGS}
    codecs: Counter = Counter()
    for entry in spec.entries:
        st = stats[entry.path]
        if st == MISSING:
            excluded.append(ExcludedVideo(entry.path, entry.video_id, MISSING, "no such file"))
            continue
        if st == ZERO_BYTE:
            excluded.append(ExcludedVideo(entry.path, entry.video_id, ZERO_BYTE, "file is empty"))
            continue
        if isinstance(st, str):
            excluded.append(ExcludedVideo(entry.path, entry.video_id, UNREADABLE, st))
            continue
        probe = results[entry.path]
        if probe.reason is not None:
            excluded.append(ExcludedVideo(entry.path, entry.video_id, probe.reason, probe.detail))
            continue
        end = (
            probe.num_frames if entry.end_frame is None else min(entry.end_frame, probe.num_frames)
        )
        frames = end - entry.start_frame
        if frames < 2:
            if entry.start_frame or entry.end_frame is not None:
                what = (
                    f"segment [{entry.start_frame}, {entry.end_frame}) has {max(frames, 0)} "
                    f"of the video's {probe.num_frames} frames"
                )
            else:
                what = f"{probe.num_frames} frame(s)"
            excluded.append(
                ExcludedVideo(
                    entry.path, entry.video_id, TOO_SHORT, f"{what}; a clip needs at least 2"
                )
            )
            continue
        rec = VideoRecord(
            path=entry.path,
            label=entry.label,
            video_id=entry.video_id,
            num_frames=probe.num_frames,
            fps=probe.fps,
            width=probe.width,
            height=probe.height,
            codec=probe.codec,
            start_frame=entry.start_frame,
            end_frame=None if entry.end_frame is None else end,
        )
        records.append(rec)
        codecs[rec.codec] += 1
        if frames < span:
            flagged[SHORT].append(
                (
                    entry.path,
                    (
                        f"{frames} frames < {span} spanned by {clip_len} x stride {stride}: "
                        "last frame repeated"
                    ),
                )
            )
        if probe.codec not in COMMON_CODECS:
            flagged[UNUSUAL_CODEC].append((entry.path, f"codec {probe.codec}"))
        if probe.variable_frame_rate:
            flagged[VARIABLE_FRAME_RATE].append(
                (entry.path, f"uneven timestamps, average {probe.fps:.3f} fps")
            )
    return IndexResult(
        records=records,
        excluded=excluded,
        flagged=flagged,
        class_names=list(spec.class_names),
        ignored=list(spec.ignored),
        num_listed=len(spec.entries),
        probed=[],
        cache_path=None,
        root=spec.root,
        format=spec.format,
        split=spec.split,
        clip_len=clip_len,
        stride=stride,
        codecs=dict(codecs),
    )


def _log_result(result: IndexResult) -> None:
    c = result.counts()
    if result.excluded:
        reasons = ", ".join(f"{r} {c[r]}" for r in EXCLUSION_REASONS if c[r])
        logger.warning(
            "%s: %d of %d listed videos excluded (%s); first: %s (%s)",
            result.root,
            c["excluded"],
            c["listed"],
            reasons,
            result.excluded[0].path,
            result.excluded[0].reason,
        )
    if c[UNUSUAL_CODEC]:
        logger.warning(
            "%s: %d videos use an unusual codec (kept): %s",
            result.root,
            c[UNUSUAL_CODEC],
            ", ".join(sorted(set(result.codecs) - COMMON_CODECS)),
        )


# ----------------------------------------------------------------------------- CLI hook


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dali-fame index``."""
    parser.add_argument("root", metavar="ROOT", help="dataset root folder (csv: the CSV file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="annotation format")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--split-id", type=int, default=1, help="official split (UCF101/HMDB51)")
    parser.add_argument(
        "--annotation-dir", default=None, help="folder of the annotation files, when not under ROOT"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where to cache probe results (default ROOT/.dali_fame_index)",
    )
    parser.add_argument(
        "--report",
        default=None,
        metavar="FILE.json",
        help="write the full report (counts, excluded, flagged, records)",
    )
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="probe processes (default: all cores)",
    )
    parser.add_argument(
        "--mode",
        default="decode",
        choices=PROBE_MODES,
        help="decode every frame (default) or only demux packets (faster)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Index, print the summary table and the excluded files; exit 0 if any video is valid."""
    try:
        result = build_index(
            args.root,
            format=args.format,
            split=args.split,
            split_id=args.split_id,
            annotation_dir=args.annotation_dir,
            cache_dir=args.cache_dir,
            clip_len=args.clip_len,
            stride=args.stride,
            workers=args.workers,
            mode=args.mode,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"dali-fame index: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.report:
        result.write_report(args.report)
        print(f"report written to {args.report}")
    return 0 if result.records else 1

"""A synthetic video world whose classes are defined by motion, with a controllable scene bias.

Each video shows one textured foreground object moving over a textured static background.
The object's *motion* is the class (:data:`MOTIONS`); its shape, size, aspect, colours and
texture are drawn at random per video, so appearance does not give the class away. The
background is one of ``num_scenes`` scenes (a palette, a low-frequency colour field, a pattern
and fine grain; each video sees a slightly shifted crop of its scene). The scene correlates with
the class: a video of class ``c`` lies on scene ``c mod S`` with probability ``bias`` (set
separately for the train and test splits; 0 = never on its own scene), otherwise on one of the
other scenes chosen uniformly. A model that learns the background instead of the motion does
well when train and test biases match and poorly when they differ: this is the shortcut FAME and
BE are meant to remove. Options add a small distractor object with random motion and a mild
camera shake.

Output of :func:`generate_dataset` (``out_dir``)::

    videos/<class_name>/<video_id>.<ext>   encoded videos (h264 .mp4, vp9 .webm, mjpeg .avi)
    classInd.txt                           "1 horizontal_oscillation" ... (UCF101 style, 1-based)
    trainlist01.txt                        "<class_name>/<video_id>.<ext> <label 1-based>"
    testlist01.txt                         "<class_name>/<video_id>.<ext>"
                                           (split-file paths are relative to out_dir/videos)
    annotations.csv                        path,label,split,scene  (path relative to out_dir,
                                           e.g. videos/circle/circle_003.mp4; label 0-based;
                                           split train|test; scene 0-based)
    gt/<video_id>.npz                      class int64 (), scene int64 (), masks bool (T, H, W),
                                           distractor_masks bool (T, H, W), centers float32
                                           (T, 2) object centre (x, y) in pixels
    same_scene/                            every test video again, on its class's own scene
                                           (same object, trajectory, distractor and shake):
                                           the test split with the bias the training split
                                           has, next to the main test split's swapped scenes
      videos/<class_name>/<video_id>.<ext>
      classInd.txt, testlist01.txt         UCF101 style, paths relative to same_scene/videos
      gt/<video_id>.npz                    as gt/ (scene = the class's own)
    meta.json                              options, class names, per-video table, realised bias,
                                           the same-scene table

Everything is a pure function of the options: each video draws from its own
``np.random.Generator`` seeded by ``(seed, class, index)``, so the files do not depend on the
number of worker processes, and ``gt/*.npz`` and ``meta.json`` are byte-identical for the same
seed (the npz files are written with fixed zip timestamps).
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

#: the motion classes, in label order; ``num_classes`` takes the first N
MOTIONS: tuple[str, ...] = (
    "horizontal_oscillation",
    "vertical_oscillation",
    "circle",
    "diagonal_bounce",
    "grow_shrink",
    "rotate",
    "zigzag",
    "still",
    "figure_eight",
    "jump",
)

FORMAT_NAME = "dali_fame.synthetic"
#: 2: the same_scene/ test set. A cached dataset of another version is generated again
#: (see :func:`is_current`).
FORMAT_VERSION = 2
#: folder (under out_dir) of the test videos re-rendered on their class's own scene
SAME_SCENE_DIR = "same_scene"
#: the files and folders generate_dataset writes at the top of out_dir (overwrite removes these)
OWNED_ENTRIES = (
    "videos",
    "gt",
    "classInd.txt",
    "trainlist01.txt",
    "testlist01.txt",
    "annotations.csv",
    "meta.json",
    "preview.png",
    SAME_SCENE_DIR,
)
_MIN_SIZE = 16
_SCENE_PATTERNS = 6  # stripes, tiles, dots, waves, bricks, blotches
_FRAME_CHUNK = 32  # frames rendered per vectorised step (bounds memory for long videos)

# Distinct first words of the seed sequences keep the random streams independent.
_TAG_SCENE = 11  # a scene's canvas: (tag, seed, scene)
_TAG_VIDEO = 12  # a video's object and motion: (tag, seed, class, index)
_TAG_ASSIGN = 13  # a video's scene draw: (tag, seed, class, index)
_TAG_DISTRACTOR = 14
_TAG_SHAKE = 15
_TAG_SCENE_SET = 16  # per-seed rotation of scene hues and patterns: (tag, seed)


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(w) for w in words]))


# ----------------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class RenderedVideo:
    """The generator's own frames for one video (what the encoded file approximates).

    Attributes:
        frames: uint8 (T, H, W, 3) RGB, channels-last.
        masks: bool (T, H, W), True on the foreground (class) object.
        background: uint8 (T, H, W, 3), the same frames rendered without the foreground object
            (scene, camera shake and distractor included).
        distractor_masks: bool (T, H, W), visible pixels of the distractor (all False without).
        centers: float32 (T, 2), the foreground object's centre (x, y) in pixels per frame.
    """

    frames: np.ndarray
    masks: np.ndarray
    background: np.ndarray
    distractor_masks: np.ndarray
    centers: np.ndarray


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    """One row of the dataset (see :func:`generate_dataset`).

    Attributes:
        video_id: file stem, unique in the dataset, e.g. ``"circle_003"``.
        path: the video file relative to out_dir, e.g. ``"videos/circle/circle_003.mp4"``.
        label: 0-based class index into :data:`MOTIONS`.
        class_name: ``MOTIONS[label]``.
        index: the video's number within its class (0-based).
        split: ``"train"`` or ``"test"``.
        scene: 0-based background scene.
    """

    video_id: str
    path: str
    label: int
    class_name: str
    index: int
    split: str
    scene: int


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What :func:`generate_dataset` wrote.

    Attributes:
        out_dir: the dataset folder.
        class_names: one per label.
        num_scenes: number of background scenes.
        codec, suffix: video codec and file suffix.
        num_frames, height, width, fps: every video's frame count, size and rate.
        bias_train, bias_test: the requested probabilities of a video lying on its class's scene.
        videos: every video, in label then index order.
        seconds: wall time of the generation.
        same_scene: the same-scene test set (:func:`plan_same_scene`): one row per test video,
            path under ``same_scene/videos``, scene = the class's own.
    """

    out_dir: Path
    class_names: tuple[str, ...]
    num_scenes: int
    codec: str
    suffix: str
    num_frames: int
    height: int
    width: int
    fps: float
    bias_train: float
    bias_test: float
    videos: tuple[SyntheticVideo, ...]
    seconds: float
    same_scene: tuple[SyntheticVideo, ...] = ()

    def split_count(self, split: str) -> int:
        return sum(v.split == split for v in self.videos)

    def realised_bias(self, split: str) -> float:
        """Fraction of the split's videos that lie on their class's own scene (nan if empty)."""
        return _realised_bias(self.videos, self.num_scenes, split)


def _realised_bias(videos: Sequence[SyntheticVideo], num_scenes: int, split: str) -> float:
    rows = [v for v in videos if v.split == split]
    if not rows:
        return float("nan")
    return sum(v.scene == v.label % num_scenes for v in rows) / len(rows)


# ------------------------------------------------------------------------------- validation


def _normalise_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(f"size must be an int or a (height, width) pair of ints, got {size!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_render_options(
    *, num_frames: int, size: int | Sequence[int], fps: float, codec: str
) -> tuple[int, int]:
    """Validate the per-video options; return (height, width)."""
    from dali_fame.data import video_io

    if codec not in video_io.CODECS:
        raise ValueError(
            f"codec {codec!r} is not supported; choose one of {', '.join(video_io.CODECS)}"
        )
    if not _is_int(num_frames) or num_frames < 2:
        raise ValueError(
            f"num_frames must be an integer >= 2 (motion needs at least two frames), got {num_frames!r}"
        )
    height, width = _normalise_size(size)
    if min(height, width) < _MIN_SIZE:
        raise ValueError(
            f"size must be at least {_MIN_SIZE} pixels on each side, got {height}x{width} (HxW)"
        )
    problem = video_io.codec_size_error(codec, width, height)
    if problem:
        raise ValueError(f"size {height}x{width} (HxW) does not fit the codec: {problem}")
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.number))
        or not (math.isfinite(fps) and fps > 0)
    ):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return height, width


def _check_plan_options(
    *,
    num_classes: int,
    videos_per_class: int,
    num_scenes: int | None,
    bias_train: float,
    bias_test: float,
    test_fraction: float,
    seed: int,
) -> tuple[int, int]:
    """Validate the dataset-level options; return (num_scenes, test videos per class)."""
    for name, value in (("num_classes", num_classes), ("videos_per_class", videos_per_class)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_classes > len(MOTIONS):
        raise ValueError(
            f"num_classes must be at most {len(MOTIONS)} (the motions available: "
            f"{', '.join(MOTIONS)}), got {num_classes}"
        )
    scenes = num_classes if num_scenes is None else num_scenes
    if not _is_int(scenes) or scenes < 1:
        raise ValueError(
            f"num_scenes must be a positive integer (or None = num_classes), got {num_scenes!r}"
        )
    for name, value in (("bias_train", bias_train), ("bias_test", bias_test)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.number))
            or not (0.0 <= value <= 1.0)
        ):
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float, np.number))
        or not (0.0 <= test_fraction < 1.0)
    ):
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    num_test = (
        0 if test_fraction == 0 else max(1, math.floor(videos_per_class * test_fraction + 0.5))
    )
    if num_test >= videos_per_class:
        raise ValueError(
            f"test_fraction {test_fraction} leaves no training video with videos_per_class="
            f"{videos_per_class}; raise videos_per_class or lower test_fraction"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(scenes), num_test


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    if not out_dir.is_dir():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    foreign = [e for e in entries if e not in OWNED_ENTRIES]
    if foreign:
        raise ValueError(
            f"out_dir {out_dir} holds files that are not a synthetic dataset's ({', '.join(foreign[:5])}); "
            "choose an empty or new folder"
        )
    if not overwrite:
        raise ValueError(
            f"out_dir {out_dir} already holds a synthetic dataset; pass overwrite=True "
            "(--overwrite) to replace it"
        )


# ---------------------------------------------------------------------------------- drawing


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: int, channels: int
) -> np.ndarray:
    """float32 (height, width, channels) in [0, 1]: a random grid, smoothly interpolated."""
    grid = rng.random((cells + 1, cells + 1, channels), dtype=np.float32)
    ys = np.linspace(0.0, cells, height, dtype=np.float32)
    xs = np.linspace(0.0, cells, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    fy, fx = ys - y0, xs - x0
    fy = (fy * fy * (3 - 2 * fy))[:, None, None]  # smoothstep: no visible grid creases
    fx = (fx * fx * (3 - 2 * fx))[None, :, None]
    g00 = grid[y0[:, None], x0[None, :]]
    g01 = grid[y0[:, None], x0[None, :] + 1]
    g10 = grid[y0[:, None] + 1, x0[None, :]]
    g11 = grid[y0[:, None] + 1, x0[None, :] + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _scene_pad(height: int, width: int) -> tuple[int, int]:
    """(pad, max camera shake) in pixels: the scene canvas is pad larger on every side."""
    pad = max(3, round(0.1 * min(height, width)))
    return pad, max(1, pad // 3)


def render_scene(
    *, scene: int, height: int, width: int, seed: int, kinds: Sequence[int] | None = None
) -> np.ndarray:
    """The static background canvas of one scene.

    Args:
        kinds: the pattern kinds the scenes cycle through (0 stripes, 1 tiles, 2 dots, 3 waves,
            4 bricks, 5 blotches); None = all six (the dataset's scenes). The bias world keeps
            stripes out of its training scenes so that its unseen stripes are a new kind.

    Returns:
        float32 (height + 2 * pad, width + 2 * pad, 3) RGB on 0..255, pad from the frame size;
        a video shows a (height, width) crop of it.
    """
    pad, _ = _scene_pad(height, width)
    hc, wc = height + 2 * pad, width + 2 * pad
    rng = _rng(_TAG_SCENE, seed, scene)
    offsets = _rng(_TAG_SCENE_SET, seed).random(2)  # per-seed rotation of hues and patterns
    # Spread consecutive scenes over the colour wheel and the pattern kinds so they differ.
    hue = (offsets[0] + 0.381966 * scene + rng.uniform(-0.05, 0.05)) % 1.0
    if kinds is None:
        kind = (int(offsets[1] * _SCENE_PATTERNS) + scene) % _SCENE_PATTERNS
    else:
        if not kinds or any(not 0 <= int(k) < _SCENE_PATTERNS for k in kinds):
            raise ValueError(f"kinds must be a non-empty list of 0..{_SCENE_PATTERNS - 1}, got {kinds!r}")
        kind = int(kinds[(int(offsets[1] * len(kinds)) + scene) % len(kinds)])
    palette = [
        _hsv(hue, rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.9)),
        _hsv(hue + rng.uniform(0.06, 0.2), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.9)),
        _hsv(hue + rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.5), rng.uniform(0.35, 0.9)),
    ]
    mix = _smooth_noise(rng, hc, wc, int(rng.integers(2, 5)), 2)
    colour = palette[0] * (1 - mix[..., :1]) + palette[1] * mix[..., :1]
    colour = colour * (1 - 0.6 * mix[..., 1:]) + palette[2] * (0.6 * mix[..., 1:])
    # A luminance pattern gives the scene texture (chroma stays smooth, as in natural images).
    yy, xx = np.mgrid[0:hc, 0:wc].astype(np.float32)
    scale = min(height, width) / 128.0
    wavelength = rng.uniform(10.0, 26.0) * scale + 3.0
    angle = rng.uniform(0.0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    across = -xx * math.sin(angle) + yy * math.cos(angle)
    if kind == 0:  # stripes
        pattern = np.sin(2 * math.pi * along / wavelength)
    elif kind == 1:  # tiles
        pattern = ((np.floor(along / wavelength) + np.floor(across / wavelength)) % 2) * 2 - 1
    elif kind == 2:  # dots
        pattern = (
            np.sin(2 * math.pi * along / wavelength) * np.sin(2 * math.pi * across / wavelength)
            > 0.35
        ) * 2.0 - 1
    elif kind == 3:  # waves
        bend = rng.uniform(0.5, 2.0)
        pattern = np.sin(
            2 * math.pi * along / wavelength
            + bend * np.sin(2 * math.pi * across / (2.5 * wavelength))
        )
    elif kind == 4:  # bricks: rows of tiles, every other row shifted by half a tile
        row = np.floor(across / (0.5 * wavelength))
        col = np.floor(along / wavelength + 0.5 * (row % 2))
        mortar = (np.mod(across, 0.5 * wavelength) < 1.5) | (
            np.mod(along / wavelength + 0.5 * (row % 2), 1.0) * wavelength < 1.5
        )
        pattern = np.where(mortar, -1.0, 0.6 * ((row + col) % 3 - 1))
    else:  # blotches: mid-frequency smooth noise
        cells = max(3, round(max(hc, wc) / wavelength))
        pattern = _smooth_noise(rng, hc, wc, cells, 1)[..., 0] * 4 - 2
    amplitude = rng.uniform(0.12, 0.25)
    grain = rng.normal(0.0, 0.03, (hc, wc, 1)).astype(np.float32)
    canvas = colour * (1 + amplitude * pattern[..., None] + grain)
    return np.clip(canvas, 0, 255).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Sprite:
    """A textured object and its trajectory; all arrays have one entry per frame (T,)."""

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    radius: float
    aspect: float
    shape: int  # 0 ellipse, 1 rectangle, 2 diamond
    texture: int  # 0 stripes, 1 checker, 2 rings, 3 dots, 4 gradient
    frequency: float
    texture_angle: float
    colour_a: np.ndarray
    colour_b: np.ndarray


def _extent(shape: int, aspect: float) -> float:
    """Farthest point of the unit shape from its centre (in radii)."""
    return math.sqrt(1 + aspect * aspect) if shape == 1 else 1.0


def _appearance(rng: np.random.Generator, radius: float) -> dict:
    hue = rng.random()
    # Keep texture periods >= ~8 px: finer chroma patterns would be smeared by 4:2:0 coding.
    max_freq = max(1.5, min(4.0, radius / 4.0))
    return {
        "shape": int(rng.integers(0, 3)),
        "aspect": float(rng.uniform(0.5, 0.85)),
        "texture": int(rng.integers(0, 5)),
        "frequency": float(rng.uniform(1.5, max_freq)),
        "texture_angle": float(rng.uniform(0, math.pi)),
        # The two texture colours differ mostly in brightness (nearby hues): like real
        # surfaces, and what 4:2:0 video keeps (chroma has half the resolution of luma).
        "colour_a": _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0)),
        "colour_b": _hsv(
            hue + rng.uniform(-0.12, 0.12), rng.uniform(0.4, 1.0), rng.uniform(0.15, 0.45)
        ),
    }


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold x into [lo, hi] as a ball bouncing between two walls."""
    if hi <= lo:
        return np.full_like(x, (lo + hi) / 2)
    span = hi - lo
    phase = np.mod(x - lo, 2 * span)
    return lo + np.where(phase > span, 2 * span - phase, phase)


def _trajectory(
    motion: str, rng: np.random.Generator, t: np.ndarray, height: int, width: int, reach: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cx, cy, scale, extra angle), each float32 (T,), for the centre of an object whose
    farthest point lies ``reach`` pixels from its centre at scale 1.

    Every motion keeps the whole object inside the frame.
    """
    period = rng.uniform(20.0, 40.0)
    phase = rng.uniform(0, 2 * math.pi)
    omega = 2 * math.pi / period
    growth = rng.uniform(0.25, 0.4) if motion == "grow_shrink" else 0.0
    r = reach * (1 + growth) + 1.0
    lo_x, hi_x, lo_y, hi_y = r, width - 1 - r, r, height - 1 - r
    mid_x, mid_y = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    half_x, half_y = max(0.0, (hi_x - lo_x) / 2), max(0.0, (hi_y - lo_y) / 2)
    ones = np.ones_like(t)
    # A random resting point, for the motions that do not travel.
    px, py = rng.uniform(lo_x, max(lo_x, hi_x)), rng.uniform(lo_y, max(lo_y, hi_y))
    scale, angle = ones.copy(), np.zeros_like(t)
    speed = rng.uniform(1.2, 2.5) * min(height, width) / 128.0
    if motion == "horizontal_oscillation":
        cx, cy = mid_x + rng.uniform(0.6, 1.0) * half_x * np.sin(omega * t + phase), py * ones
    elif motion == "vertical_oscillation":
        cx, cy = px * ones, mid_y + rng.uniform(0.6, 1.0) * half_y * np.sin(omega * t + phase)
    elif motion == "circle":
        rho = rng.uniform(0.6, 1.0) * min(half_x, half_y)
        ox = rng.uniform(-1, 1) * (half_x - rho) if half_x > rho else 0.0
        oy = rng.uniform(-1, 1) * (half_y - rho) if half_y > rho else 0.0
        turn = rng.choice([-1.0, 1.0])
        cx = mid_x + ox + rho * np.cos(omega * t + phase)
        cy = mid_y + oy + turn * rho * np.sin(omega * t + phase)
    elif motion == "diagonal_bounce":
        sx, sy = rng.choice([-1.0, 1.0], size=2)
        fast = 1.6 * speed
        cx = _reflect(px + sx * fast * t, lo_x, hi_x)
        cy = _reflect(py + sy * fast * t, lo_y, hi_y)
    elif motion == "grow_shrink":
        cx, cy = px * ones, py * ones
        scale = 1 + growth * np.sin(omega * t + phase)
    elif motion == "rotate":
        cx, cy = px * ones, py * ones
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(2 * math.pi / 48, 2 * math.pi / 24) * t
    elif motion == "zigzag":
        # slow drift along one axis, fast triangle wave across it
        zig_period = rng.uniform(8.0, 14.0)
        tri = 2 * np.abs(np.mod(t / zig_period + phase / (2 * math.pi), 1.0) - 0.5)  # 0..1
        if rng.random() < 0.5:
            cx = _reflect(px + rng.choice([-1.0, 1.0]) * speed * t, lo_x, hi_x)
            cy = mid_y + rng.uniform(0.5, 0.9) * half_y * (2 * tri - 1)
        else:
            cy = _reflect(py + rng.choice([-1.0, 1.0]) * speed * t, lo_y, hi_y)
            cx = mid_x + rng.uniform(0.5, 0.9) * half_x * (2 * tri - 1)
    elif motion == "still":
        cx, cy = px * ones, py * ones
    elif motion == "figure_eight":
        ax, ay = rng.uniform(0.6, 1.0) * half_x, rng.uniform(0.6, 1.0) * half_y
        if rng.random() < 0.5:
            cx, cy = (
                mid_x + ax * np.sin(omega * t + phase),
                mid_y + ay * np.sin(2 * (omega * t + phase)),
            )
        else:
            cx, cy = (
                mid_x + ax * np.sin(2 * (omega * t + phase)),
                mid_y + ay * np.sin(omega * t + phase),
            )
    elif motion == "jump":
        hold = int(rng.integers(6, 11))
        # t may be scaled (render_video's time_scale): enough spots for its last time step.
        count = max(len(t) // hold, int(t[-1]) // hold) + 1
        spots_x = rng.uniform(lo_x, max(lo_x, hi_x), size=count)
        spots_y = rng.uniform(lo_y, max(lo_y, hi_y), size=count)
        which = (t // hold).astype(np.int64)
        cx, cy = spots_x[which], spots_y[which]
    else:  # pragma: no cover - MOTIONS and this function are kept in step
        raise ValueError(f"unknown motion {motion!r}")
    return (
        np.asarray(cx, np.float32),
        np.asarray(cy, np.float32),
        np.asarray(scale, np.float32),
        np.asarray(angle, np.float32),
    )


def _draw(sprite: _Sprite, height: int, width: int, frames: slice) -> tuple[np.ndarray, np.ndarray]:
    """Render frames[frames] of a sprite into a (height, width) view.

    Returns:
        inside: bool (t, height, width), the sprite's pixels;
        colour: uint8 (N, 3) RGB of those pixels, in ``inside``'s row-major order.
    """
    cx = sprite.cx[frames, None, None]
    cy = sprite.cy[frames, None, None]
    size = sprite.radius * sprite.scale[frames, None, None]
    # Only the box the sprite can reach in these frames needs the geometry.
    reach = float(size.max()) * _extent(sprite.shape, sprite.aspect) + 1.0
    y0 = int(np.clip(np.floor(cy.min() - reach), 0, height))
    y1 = int(np.clip(np.ceil(cy.max() + reach) + 1, 0, height))
    x0 = int(np.clip(np.floor(cx.min() - reach), 0, width))
    x1 = int(np.clip(np.ceil(cx.max() + reach) + 1, 0, width))
    inside = np.zeros((cx.shape[0], height, width), bool)
    if y1 <= y0 or x1 <= x0:
        return inside, np.zeros((0, 3), np.uint8)
    yy = np.arange(y0, y1, dtype=np.float32)[None, :, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, None, :]
    cos, sin = np.cos(sprite.angle[frames, None, None]), np.sin(sprite.angle[frames, None, None])
    dx, dy = xx - cx, yy - cy
    u = (dx * cos + dy * sin) / size
    v = (-dx * sin + dy * cos) / (size * sprite.aspect)
    if sprite.shape == 0:
        box = u * u + v * v <= 1.0
    elif sprite.shape == 1:
        box = np.maximum(np.abs(u), np.abs(v)) <= 1.0
    else:
        box = np.abs(u) + np.abs(v) <= 1.0
    inside[:, y0:y1, x0:x1] = box
    # Texture only where the sprite is (a small share of the frame).
    # Texture coordinates in radii on both axes (isotropic), so that a thin object keeps the
    # texture period >= ~8 px that 4:2:0 chroma needs; same row-major order as inside.
    u, v = u[box], v[box] * sprite.aspect
    f = sprite.frequency * math.pi
    ta = sprite.texture_angle
    if sprite.texture == 0:  # stripes
        p = 0.5 + 0.5 * np.sin(f * (u * math.cos(ta) + v * math.sin(ta)))
    elif sprite.texture == 1:  # checker
        p = (np.floor(sprite.frequency * u) + np.floor(sprite.frequency * v)) % 2
    elif sprite.texture == 2:  # rings
        p = 0.5 + 0.5 * np.cos(f * np.sqrt(u * u + v * v))
    elif sprite.texture == 3:  # dots
        p = (np.sin(f * u) * np.sin(f * v) > 0.25).astype(np.float32)
    else:  # gradient
        p = 0.5 + 0.5 * (u * math.cos(ta) + v * math.sin(ta))
    p = np.clip(p, 0, 1).astype(np.float32)[:, None]
    colour = sprite.colour_a + p * (sprite.colour_b - sprite.colour_a)
    return inside, np.rint(colour).clip(0, 255).astype(np.uint8)


def _shake(rng: np.random.Generator, num_frames: int, amplitude: int) -> np.ndarray:
    """int64 (T, 2) per-frame camera offsets (dy, dx) in [-amplitude, amplitude], smooth in time."""
    steps = rng.normal(size=(num_frames, 2))
    walk = np.zeros_like(steps)
    for i in range(num_frames):  # AR(1): a hand-held wobble rather than white jitter
        walk[i] = (0.7 * walk[i - 1] if i else 0) + steps[i]
    walk /= max(1e-6, float(np.abs(walk).max()))
    return np.rint(walk * amplitude).astype(np.int64)


def render_video(
    *,
    class_index: int,
    scene: int,
    video_index: int,
    num_frames: int,
    size: int | Sequence[int],
    seed: int,
    distractor: bool = False,
    camera_shake: bool = False,
    look: dict | None = None,
    radius_range: tuple[float, float] = (0.12, 0.18),
    time_scale: float = 1.0,
    canvas: np.ndarray | None = None,
) -> RenderedVideo:
    """Render one synthetic video exactly as :func:`generate_dataset` does before encoding.

    Args:
        class_index: the motion, an index into :data:`MOTIONS`.
        scene: the background scene (any non-negative int; the dataset uses 0..num_scenes-1).
        video_index: the video's number within its class (selects its random appearance).
        num_frames: T >= 2.
        size: frame size, an int (square) or (height, width).
        seed: the dataset seed.
        distractor: add a small object with random motion behind the foreground object.
        camera_shake: move the whole view by a few pixels per frame (smoothly).
        look: the object's appearance (a dict of :func:`_appearance`'s keys) instead of one
            drawn for this video; the bias world draws it from a small pool shared by all
            classes, so that appearance tells neither the class nor the instance.
        radius_range: the object's radius as a fraction of min(height, width), drawn uniformly.
        time_scale: motions run this many times faster (periods, speeds, spins, jump holds all
            scale by it), so that a period can fit in a short clip.
        canvas: float32 (height + 2 * pad, width + 2 * pad, 3) background canvas on 0..255 (the
            shape :func:`render_scene` returns) used instead of ``render_scene(scene=scene)``.

    Returns:
        :class:`RenderedVideo` with frames uint8 (T, H, W, 3) and masks bool (T, H, W).
        Appearance and motion depend only on (seed, class_index, video_index): the same video
        on another scene, or with a distractor, keeps its object and trajectory.
    """
    height, width = _normalise_size(size)
    if not 0 <= class_index < len(MOTIONS):
        raise ValueError(f"class_index must be in 0..{len(MOTIONS) - 1}, got {class_index}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    motion = MOTIONS[class_index]
    pad, shake_max = _scene_pad(height, width)
    if canvas is None:
        canvas = render_scene(scene=scene, height=height, width=width, seed=seed)
    elif canvas.shape != (height + 2 * pad, width + 2 * pad, 3):
        raise ValueError(
            f"canvas must be ({height + 2 * pad}, {width + 2 * pad}, 3) for a {height}x{width} "
            f"frame (pad {pad}), got {canvas.shape}"
        )
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
    lo, hi = radius_range
    if not 0 < lo <= hi < 0.5:
        raise ValueError(f"radius_range must satisfy 0 < low <= high < 0.5, got {radius_range!r}")
    t = np.arange(num_frames, dtype=np.float32)

    rng = _rng(_TAG_VIDEO, seed, class_index, video_index)
    radius = float(rng.uniform(lo, hi) * min(height, width))
    if look is None:
        look = _appearance(rng, radius)
    angle0 = rng.uniform(0, 2 * math.pi)
    base = rng.integers(shake_max, 2 * pad - shake_max + 1, size=2)  # crop origin in the scene
    reach = radius * _extent(look["shape"], look["aspect"]) + shake_max
    motion_t = t if time_scale == 1.0 else (t * np.float32(time_scale)).astype(np.float32)
    cx, cy, scale, spin = _trajectory(motion, rng, motion_t, height, width, reach)

    shake = (
        _shake(_rng(_TAG_SHAKE, seed, class_index, video_index), num_frames, shake_max)
        if camera_shake
        else np.zeros((num_frames, 2), np.int64)
    )
    offset = base[None, :] + shake  # (T, 2) crop origin (y, x) in the canvas
    # The camera moving by +d moves everything in view by -d.
    fg = _Sprite(
        cx=cx - shake[:, 1],
        cy=cy - shake[:, 0],
        scale=scale,
        angle=(angle0 + spin).astype(np.float32),
        radius=radius,
        **look,
    )
    sprites_behind: list[_Sprite] = []
    if distractor:
        drng = _rng(_TAG_DISTRACTOR, seed, class_index, video_index)
        d_radius = float(drng.uniform(0.05, 0.08) * min(height, width))
        d_look = _appearance(drng, d_radius)
        d_reach = d_radius * _extent(d_look["shape"], d_look["aspect"]) + shake_max + 1
        # A wandering path: velocity follows a smoothed random walk, bounced at the borders.
        accel = drng.normal(0.0, 0.35, size=(num_frames, 2)) * min(height, width) / 128.0
        velocity = np.cumsum(accel, axis=0) + drng.normal(0.0, 1.0, size=2)
        start = drng.uniform([d_reach, d_reach], [width - 1 - d_reach, height - 1 - d_reach])
        path = start + np.cumsum(velocity, axis=0) - velocity[0]
        dx_ = _reflect(path[:, 0], d_reach, width - 1 - d_reach) - shake[:, 1]
        dy_ = _reflect(path[:, 1], d_reach, height - 1 - d_reach) - shake[:, 0]
        sprites_behind.append(
            _Sprite(
                cx=dx_.astype(np.float32),
                cy=dy_.astype(np.float32),
                scale=np.ones(num_frames, np.float32),
                angle=(drng.uniform(0, 2 * math.pi) + np.zeros(num_frames)).astype(np.float32),
                radius=d_radius,
                **d_look,
            )
        )

    canvas_u8 = np.rint(canvas).astype(np.uint8)
    background = np.empty((num_frames, height, width, 3), np.uint8)
    for i, (oy, ox) in enumerate(offset):  # integer crops: plain copies, no interpolation
        background[i] = canvas_u8[oy : oy + height, ox : ox + width]
    frames = np.empty_like(background)
    masks = np.empty((num_frames, height, width), bool)
    d_masks = np.zeros((num_frames, height, width), bool)
    for first in range(0, num_frames, _FRAME_CHUNK):
        chunk = slice(first, min(num_frames, first + _FRAME_CHUNK))
        for sprite in sprites_behind:
            inside, colour = _draw(sprite, height, width, chunk)
            background[chunk][inside] = colour
            d_masks[chunk] |= inside
        inside, colour = _draw(fg, height, width, chunk)
        masks[chunk] = inside
        frames[chunk] = background[chunk]
        frames[chunk][inside] = colour
    d_masks &= ~masks
    return RenderedVideo(
        frames=frames,
        masks=masks,
        background=background,
        distractor_masks=d_masks,
        centers=np.stack([fg.cx, fg.cy], axis=1).astype(np.float32),
    )


# ------------------------------------------------------------------------------- dataset


def remove_entries(out_dir: Path, names: Sequence[str]) -> None:
    """Delete the files / folders ``out_dir/<name>`` that exist (a generator's own outputs)."""
    for name in names:
        entry = out_dir / name
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()


def save_npz_deterministic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-identical for identical arrays.

    np.savez stamps every zip member with the current time; this writes fixed timestamps, in
    the order given, and replaces ``path`` atomically. Load with ``np.load(path)``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def plan_videos(
    *,
    num_classes: int = 8,
    videos_per_class: int = 16,
    codec: str = "h264",
    num_scenes: int | None = None,
    bias_train: float = 0.9,
    bias_test: float = 0.0,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> list[SyntheticVideo]:
    """The rows :func:`generate_dataset` writes (split and scene of every video), without
    rendering anything. Same options and meaning as :func:`generate_dataset`.

    The last ``round(videos_per_class * test_fraction)`` videos of each class (at least one when
    test_fraction > 0) are the test split. Each video draws "on its own scene" with probability
    bias_train / bias_test from its own generator, seeded by (seed, class, index).

    Raises:
        ValueError: a bad option.
    """
    from dali_fame.data import video_io

    if codec not in video_io.CODECS:
        raise ValueError(
            f"codec {codec!r} is not supported; choose one of {', '.join(video_io.CODECS)}"
        )
    scenes, num_test = _check_plan_options(
        num_classes=num_classes,
        videos_per_class=videos_per_class,
        num_scenes=num_scenes,
        bias_train=bias_train,
        bias_test=bias_test,
        test_fraction=test_fraction,
        seed=seed,
    )
    suffix = video_io.CODEC_SUFFIX[codec]
    videos = []
    for label in range(num_classes):
        name = MOTIONS[label]
        own = label % scenes
        others = [s for s in range(scenes) if s != own]
        for index in range(videos_per_class):
            split = "test" if index >= videos_per_class - num_test else "train"
            bias = bias_train if split == "train" else bias_test
            rng = _rng(_TAG_ASSIGN, seed, label, index)
            on_own = rng.random() < bias
            pick = int(rng.integers(0, max(1, len(others))))
            scene = own if (on_own or not others) else others[pick]
            video_id = f"{name}_{index:03d}"
            videos.append(
                SyntheticVideo(
                    video_id=video_id,
                    path=f"videos/{name}/{video_id}{suffix}",
                    label=label,
                    class_name=name,
                    index=index,
                    split=split,
                    scene=scene,
                )
            )
    return videos


def plan_same_scene(videos: Sequence[SyntheticVideo], *, num_scenes: int) -> list[SyntheticVideo]:
    """The same-scene test set: every test video of ``videos`` moved onto its class's own scene.

    A row keeps the video's id, label and index (so :func:`render_video` draws the same object,
    trajectory, distractor and shake); its scene becomes ``label mod num_scenes`` and its path
    moves under :data:`SAME_SCENE_DIR` (``same_scene/videos/<class>/<video_id><suffix>``). With
    the default ``bias_test=0`` the main test split shows every motion on another class's scene
    and this set shows the very same clips on their own scene: a model that reads the scene
    scores high here and low there, one that reads the motion scores the same on both.
    """
    return [
        dataclasses.replace(v, path=f"{SAME_SCENE_DIR}/{v.path}", scene=v.label % num_scenes)
        for v in videos
        if v.split == "test"
    ]


def _render_planned(video: SyntheticVideo, opts: dict) -> RenderedVideo:
    """Re-render a planned video from the dataset options (num_frames, height, width, seed,
    distractor, camera_shake): the generator and ``--inspect`` must draw exactly the same frames."""
    return render_video(
        class_index=video.label,
        scene=video.scene,
        video_index=video.index,
        num_frames=opts["num_frames"],
        size=(opts["height"], opts["width"]),
        seed=opts["seed"],
        distractor=opts["distractor"],
        camera_shake=opts["camera_shake"],
    )


def _make_video(job: dict) -> str:
    """Worker: render one video, encode it and save its ground truth. Returns the video_id."""
    from dali_fame.data import video_io

    video: SyntheticVideo = job["video"]
    out_dir = Path(job["out_dir"])
    rendered = _render_planned(video, job)
    final = out_dir / video.path
    partial = final.with_name(final.stem + ".partial" + final.suffix)  # keeps the codec's suffix
    video_io.write_video(partial, rendered.frames, fps=job["fps"], codec=job["codec"])
    os.replace(partial, final)
    save_npz_deterministic(
        out_dir / job["gt_dir"] / f"{video.video_id}.npz",
        {
            "class": np.int64(video.label),
            "scene": np.int64(video.scene),
            "masks": rendered.masks,
            "distractor_masks": rendered.distractor_masks,
            "centers": rendered.centers,
        },
    )
    return video.video_id


def generate_dataset(
    out_dir: str | Path,
    *,
    num_classes: int = 8,
    videos_per_class: int = 16,
    num_frames: int = 64,
    size: int | tuple[int, int] = 128,
    fps: float = 25,
    codec: str = "h264",
    num_scenes: int | None = None,
    bias_train: float = 0.9,
    bias_test: float = 0.0,
    test_fraction: float = 0.25,
    distractor: bool = False,
    camera_shake: bool = False,
    seed: int = 0,
    progress: bool = True,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> DatasetInfo:
    """Write the synthetic motion-class dataset (layout in the module docstring).

    Args:
        out_dir: destination folder; created if missing. It must be empty, or hold a previous
            synthetic dataset and ``overwrite=True``.
        num_classes: motion classes, the first N of :data:`MOTIONS` (1..10).
        videos_per_class: videos per class (train + test).
        num_frames: frames per video, >= 2.
        size: frame size, an int (square) or (height, width); h264 and vp9 need even sides.
        fps: frame rate of the files (constant).
        codec: ``"h264"`` (.mp4), ``"vp9"`` (.webm) or ``"mjpeg"`` (.avi).
        num_scenes: background scenes S (None = num_classes); class c's own scene is c mod S.
        bias_train, bias_test: probability in [0, 1] that a train / test video lies on its
            class's own scene; otherwise a uniformly chosen other scene (with S = 1 every video
            is on scene 0).
        test_fraction: share of each class's videos in the test split (rounded half up, at
            least one when > 0); the last videos of each class are the test ones.
        distractor: add a small randomly wandering object behind the foreground object.
        camera_shake: mild smooth camera shake (a few pixels).
        seed: everything is a function of the seed and the options above.
        progress: show a tqdm progress bar.
        num_workers: worker processes (None: 1 for fewer than 16 videos, else min(2, CPUs)).
            The output does not depend on it.
        overwrite: replace a synthetic dataset already in out_dir.

    Raises:
        ValueError: a bad option (checked before anything is written).
    """
    started = time.perf_counter()
    height, width = _check_render_options(num_frames=num_frames, size=size, fps=fps, codec=codec)
    videos = plan_videos(
        num_classes=num_classes,
        videos_per_class=videos_per_class,
        codec=codec,
        num_scenes=num_scenes,
        bias_train=bias_train,
        bias_test=bias_test,
        test_fraction=test_fraction,
        seed=seed,
    )
    scenes = num_classes if num_scenes is None else int(num_scenes)
    same_scene = plan_same_scene(videos, num_scenes=scenes)
    if num_workers is not None and (not _is_int(num_workers) or num_workers < 1):
        raise ValueError(f"num_workers must be a positive integer or None, got {num_workers!r}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    from dali_fame.data import video_io

    suffix = video_io.CODEC_SUFFIX[codec]

    # Every option is valid: from here on, write.
    if out_dir.is_dir():
        remove_entries(out_dir, OWNED_ENTRIES)
    same_gt = f"{SAME_SCENE_DIR}/gt"
    for folder in ("gt", same_gt):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for name in MOTIONS[:num_classes]:
        for videos_dir in ("videos", f"{SAME_SCENE_DIR}/videos"):
            (out_dir / videos_dir / name).mkdir(parents=True, exist_ok=True)

    common = {
        "out_dir": str(out_dir),
        "num_frames": int(num_frames),
        "height": height,
        "width": width,
        "fps": float(fps),
        "codec": codec,
        "seed": int(seed),
        "distractor": bool(distractor),
        "camera_shake": bool(camera_shake),
    }
    jobs = [dict(common, video=v, gt_dir="gt") for v in videos]
    jobs += [dict(common, video=v, gt_dir=same_gt) for v in same_scene]
    workers = num_workers or (1 if len(jobs) < 16 else max(1, min(2, os.cpu_count() or 1)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                _make_video(job)
                bar.update()
        else:
            import multiprocessing

            # fork on Linux: spawn would re-import the caller's __main__, which breaks scripts that
            # call generate_dataset without an `if __name__ == "__main__"` guard. The workers only
            # run numpy and FFmpeg (no OpenMP, no CUDA), so locks held by the parent's other
            # threads at fork time are never touched in the child.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for future in as_completed([pool.submit(_make_video, job) for job in jobs]):
                    future.result()
                    bar.update()
    finally:
        bar.close()

    class_names = MOTIONS[:num_classes]
    _write_annotations(out_dir, class_names, videos, same_scene)
    options = {
        "num_classes": int(num_classes),
        "videos_per_class": int(videos_per_class),
        "num_frames": int(num_frames),
        "height": height,
        "width": width,
        "fps": float(fps),
        "codec": codec,
        "num_scenes": scenes,
        "bias_train": float(bias_train),
        "bias_test": float(bias_test),
        "test_fraction": float(test_fraction),
        "distractor": bool(distractor),
        "camera_shake": bool(camera_shake),
        "seed": int(seed),
    }
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "options": options,
        "class_names": list(class_names),
        "suffix": suffix,
        "num_videos": len(videos),
        "splits": {s: sum(v.split == s for v in videos) for s in ("train", "test")},
        # null for an empty split (strict JSON has no NaN)
        "bias_realised": {
            s: None if math.isnan(b) else b
            for s in ("train", "test")
            for b in [_realised_bias(videos, scenes, s)]
        },
        "files": {
            "videos": "videos/<class_name>/<video_id><suffix>",
            "class_index": "classInd.txt (1-based labels)",
            "split_files": "trainlist01.txt, testlist01.txt (paths relative to videos/, labels 1-based)",
            "annotations": "annotations.csv (path relative to this folder, label 0-based, split, scene)",
            "ground_truth": "gt/<video_id>.npz: class, scene, masks bool (T,H,W), distractor_masks, centers",
            "same_scene": (
                f"{SAME_SCENE_DIR}/: the test videos on their class's own scene; videos/, gt/, "
                "classInd.txt, testlist01.txt (paths relative to its videos/)"
            ),
        },
        "videos": [dataclasses.asdict(v) for v in videos],
        "same_scene": [dataclasses.asdict(v) for v in same_scene],
    }
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n"
    (out_dir / "meta.json").write_text(text)
    return DatasetInfo(
        out_dir=out_dir,
        class_names=tuple(class_names),
        num_scenes=scenes,
        codec=codec,
        suffix=suffix,
        num_frames=int(num_frames),
        height=height,
        width=width,
        fps=float(fps),
        bias_train=float(bias_train),
        bias_test=float(bias_test),
        videos=tuple(videos),
        seconds=time.perf_counter() - started,
        same_scene=tuple(same_scene),
    )


def _write_annotations(
    out_dir: Path,
    class_names: Sequence[str],
    videos: Sequence[SyntheticVideo],
    same_scene: Sequence[SyntheticVideo],
) -> None:
    class_index = "".join(f"{i + 1} {n}\n" for i, n in enumerate(class_names))
    (out_dir / "classInd.txt").write_text(class_index)
    rel = [v.path.removeprefix("videos/") for v in videos]
    (out_dir / "trainlist01.txt").write_text(
        "".join(f"{r} {v.label + 1}\n" for r, v in zip(rel, videos) if v.split == "train")
    )
    (out_dir / "testlist01.txt").write_text(
        "".join(f"{r}\n" for r, v in zip(rel, videos) if v.split == "test")
    )
    # The same-scene set is a UCF101-style dataset of its own (a test list only), so an
    # evaluation reads it with the reader that reads the main split: root same_scene/.
    same_dir = out_dir / SAME_SCENE_DIR
    (same_dir / "classInd.txt").write_text(class_index)
    (same_dir / "testlist01.txt").write_text(
        "".join(f"{v.path.removeprefix(f'{SAME_SCENE_DIR}/videos/')}\n" for v in same_scene)
    )
    with open(out_dir / "annotations.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "split", "scene"])
        for v in videos:
            writer.writerow([v.path, v.label, v.split, v.scene])


# ------------------------------------------------------------------------------- inspect


def _gt_path(out_dir: Path, video: SyntheticVideo) -> Path:
    """gt/<video_id>.npz, or same_scene/gt/<video_id>.npz for a same-scene row."""
    same = video.path.startswith(f"{SAME_SCENE_DIR}/")
    return out_dir / (f"{SAME_SCENE_DIR}/gt" if same else "gt") / f"{video.video_id}.npz"


def is_current(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a complete dataset of this generator's :data:`FORMAT_VERSION`.

    meta.json is written last, so a dataset whose generation was interrupted has none; a cache
    written by an older version (e.g. without ``same_scene/``) is not current and is generated
    again by :func:`dali_fame.engine.data.ensure_synthetic`.
    """
    path = Path(out_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == FORMAT_NAME and meta.get("version") == FORMAT_VERSION


def load_meta(out_dir: str | Path) -> dict:
    """Read and check ``out_dir/meta.json``; raises ValueError if it is not a synthetic dataset."""
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: {out_dir} is not a generated synthetic dataset")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    return meta


def inspect_dataset(out_dir: str | Path, *, videos_to_check: int = 1) -> dict:
    """Check a generated dataset: counts, realised bias, files, and decoded pixels.

    For ``videos_to_check`` videos per class it probes and decodes the file with PyAV, re-renders
    the generator's frames from meta.json, and compares (mean and 99th percentile absolute error
    on 0..255 against the codec's tolerance), and checks the ground-truth masks (shape, area,
    motion energy inside vs outside the object's path).

    Returns:
        a dict: ``meta`` (meta.json), ``counts`` {class: {train, test, own_train, own_test}},
        ``scenes`` {scene: videos}, ``missing`` (files listed but absent), ``checks`` (one dict per
        decoded video) and ``problems`` (list of strings; empty when everything is fine).
    """
    from dali_fame.data import video_io

    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    opts = meta["options"]
    scenes = opts["num_scenes"]
    videos = [SyntheticVideo(**v) for v in meta["videos"]]
    same_scene = [SyntheticVideo(**v) for v in meta.get("same_scene", [])]
    problems: list[str] = []
    if meta.get("version") != FORMAT_VERSION:
        problems.append(
            f"format version {meta.get('version')} is not {FORMAT_VERSION} (this generator's): "
            "generate the dataset again (--overwrite)"
        )
    expected = plan_same_scene(videos, num_scenes=scenes)
    if same_scene != expected:
        problems.append(
            f"the same-scene table lists {len(same_scene)} videos; the test split asks for "
            f"{len(expected)} (one per test video, on its class's scene)"
        )
    counts: dict[str, dict[str, int]] = {}
    for name in meta["class_names"]:
        counts[name] = {"train": 0, "test": 0, "own_train": 0, "own_test": 0}
    scene_use = {s: 0 for s in range(scenes)}
    missing = []
    for v in videos:
        row = counts[v.class_name]
        row[v.split] += 1
        row[f"own_{v.split}"] += int(v.scene == v.label % scenes)
        scene_use[v.scene] += 1
    for v in videos + same_scene:
        for path in (out_dir / v.path, _gt_path(out_dir, v)):
            if not path.is_file():
                missing.append(str(path))
    if missing:
        problems.append(f"{len(missing)} files missing, e.g. {missing[0]}")
    with open(out_dir / "annotations.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    if len(csv_rows) != len(videos):
        problems.append(
            f"annotations.csv has {len(csv_rows)} rows, meta.json lists {len(videos)} videos"
        )

    max_mean, max_p99 = video_io.CODEC_TOLERANCE[opts["codec"]]
    checks = []
    for name in meta["class_names"]:
        picked = [v for v in videos if v.class_name == name][:videos_to_check]
        picked += [v for v in same_scene if v.class_name == name][:videos_to_check]
        for v in picked:
            path = out_dir / v.path
            if not path.is_file():
                continue
            split = "same" if v in same_scene else v.split
            check: dict = {"video_id": v.video_id, "split": split, "scene": v.scene}
            try:
                info = video_io.probe_video(path)
                decoded = video_io.read_frames(path)
            except video_io.VideoDecodeError as exc:
                problems.append(str(exc))
                continue
            rendered = _render_planned(v, opts)
            with np.load(_gt_path(out_dir, v)) as gt:
                masks = gt["masks"]
                gt_class, gt_scene = int(gt["class"]), int(gt["scene"])
            check.update(
                frames=info.num_frames,
                fps=info.fps,
                vfr=info.variable_frame_rate,
                codec=info.codec,
                size=(info.height, info.width),
            )
            if decoded.shape != rendered.frames.shape:
                problems.append(
                    f"{v.video_id}: decoded {decoded.shape}, generator made {rendered.frames.shape}"
                )
                checks.append(check)
                continue
            err = np.abs(decoded.astype(np.int16) - rendered.frames.astype(np.int16))
            check.update(mean_err=float(err.mean()), p99_err=float(np.percentile(err, 99)))
            if check["mean_err"] > max_mean or check["p99_err"] > max_p99:
                problems.append(
                    f"{v.video_id}: decode error mean {check['mean_err']:.2f} / p99 {check['p99_err']:.0f} "
                    f"exceeds the {opts['codec']} tolerance {max_mean} / {max_p99}"
                )
            if masks.shape != rendered.masks.shape or not np.array_equal(masks, rendered.masks):
                problems.append(f"{v.video_id}: gt masks differ from the generator's")
            if (gt_class, gt_scene) != (v.label, v.scene):
                problems.append(
                    f"{v.video_id}: gt class/scene {gt_class}/{gt_scene} != {v.label}/{v.scene}"
                )
            if info.variable_frame_rate or abs(info.fps - opts["fps"]) > 1e-3 * opts["fps"]:
                problems.append(
                    f"{v.video_id}: frame rate {info.fps} (vfr={info.variable_frame_rate})"
                )
            # Motion energy of the decoded video inside vs outside the object's path.
            motion = np.abs(np.diff(decoded.astype(np.float32), axis=0)).mean(axis=(0, 3))
            path_mask = masks.any(axis=0)
            check.update(
                mask_area=float(masks.mean()),
                motion_in=float(motion[path_mask].mean()) if path_mask.any() else 0.0,
                motion_out=float(motion[~path_mask].mean()) if (~path_mask).any() else 0.0,
            )
            checks.append(check)
    return {
        "meta": meta,
        "counts": counts,
        "same_scene": len(same_scene),
        "scenes": scene_use,
        "missing": missing,
        "checks": checks,
        "problems": problems,
    }


def format_report(report: dict) -> str:
    """Human-readable text of :func:`inspect_dataset`'s result."""
    meta = report["meta"]
    o = meta["options"]
    lines = [
        (
            f"{meta['num_videos']} videos ({meta['splits']['train']} train / {meta['splits']['test']} test), "
            f"{o['num_classes']} classes, {o['num_scenes']} scenes, {o['codec']} ({meta['suffix']}), "
            f"{o['num_frames']} frames {o['width']}x{o['height']} (WxH) @ {o['fps']:g} fps, seed {o['seed']}, "
            f"distractor {'on' if o['distractor'] else 'off'}, camera shake {'on' if o['camera_shake'] else 'off'}"
        ),
        "",
        f"{'class':<24}{'train':>6}{'test':>6}   own scene: train   test",
    ]
    for name, c in report["counts"].items():
        lines.append(
            f"{name:<24}{c['train']:>6}{c['test']:>6}   {c['own_train']:>10}/{c['train']:<4}"
            f"{c['own_test']:>4}/{c['test']}"
        )
    br = {k: float("nan") if v is None else v for k, v in meta["bias_realised"].items()}
    lines += [
        "",
        "videos per scene: " + ", ".join(f"{s}: {n}" for s, n in report["scenes"].items()),
        (
            f"same-scene test set ({SAME_SCENE_DIR}/): {report['same_scene']} videos, the test "
            "videos on their class's own scene"
        ),
        (
            f"bias realised (share on own scene): train {br['train']:.3f} (asked {o['bias_train']:g}), "
            f"test {br['test']:.3f} (asked {o['bias_test']:g})"
        ),
        "",
        (
            "decoded check (PyAV vs the generator's frames; error on 0..255; motion = mean |frame diff| "
            "inside / outside the object's path):"
        ),
        (
            f"  {'video':<28}{'split':<6}{'frames':>7}{'fps':>7}{'vfr':>5}{'mean err':>10}{'p99 err':>9}"
            f"{'mask area':>11}{'motion in/out':>16}"
        ),
    ]
    for c in report["checks"]:
        lines.append(
            f"  {c['video_id']:<28}{c['split']:<6}{c['frames']:>7}{c['fps']:>7.2f}{'yes' if c['vfr'] else 'no':>5}"
            f"{c.get('mean_err', float('nan')):>10.2f}{c.get('p99_err', float('nan')):>9.0f}"
            f"{100 * c.get('mask_area', float('nan')):>10.1f}%"
            f"{c.get('motion_in', float('nan')):>9.2f} / {c.get('motion_out', float('nan')):.2f}"
        )
    lines.append("")
    if report["problems"]:
        lines.append(f"PROBLEMS ({len(report['problems'])}):")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("all checks passed")
    return "\n".join(lines)


def save_preview(out_dir: str | Path, png: str | Path) -> Path:
    """Save a contact sheet: per class, first / middle / last frame, the middle mask and the
    union of the masks over time (the object's path). Decodes the first video of each class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dali_fame.data import video_io

    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    videos = [SyntheticVideo(**v) for v in meta["videos"]]
    firsts = [next(v for v in videos if v.class_name == n) for n in meta["class_names"]]
    cols = ["frame 0", "middle frame", "last frame", "mask (middle)", "path (mask union)"]
    fig, axes = plt.subplots(
        len(firsts), len(cols), figsize=(2.0 * len(cols), 2.0 * len(firsts)), squeeze=False
    )
    for row, v in zip(axes, firsts):
        frames = video_io.read_frames(out_dir / v.path)
        with np.load(out_dir / "gt" / f"{v.video_id}.npz") as gt:
            masks = gt["masks"]
        mid = len(frames) // 2
        panels = [frames[0], frames[mid], frames[-1], masks[mid], masks.any(axis=0)]
        for ax, img, title in zip(row, panels, cols):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if ax is row[0]:
                ax.set_ylabel(f"{v.class_name}\nscene {v.scene}", fontsize=7)
        if row is axes[0]:
            for ax, title in zip(row, cols):
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# ----------------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> int | tuple[int, int]:
    """'128' -> 128; '160x120' (WIDTHxHEIGHT, as in ffmpeg) -> (120, 160) = (height, width)."""
    try:
        if "x" in text.lower():
            w, h = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size must be N or WIDTHxHEIGHT, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dali-fame synth``."""
    parser.add_argument("--out", required=True, type=Path, help="dataset folder")
    parser.add_argument(
        "--classes", type=int, default=8, help=f"motion classes (max {len(MOTIONS)})"
    )
    parser.add_argument("--videos-per-class", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64, help="frames per video (>= 2)")
    parser.add_argument(
        "--size", type=_parse_size, default=128, help="N or WIDTHxHEIGHT (default 128)"
    )
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--codec", default="h264", help="h264 (.mp4), vp9 (.webm) or mjpeg (.avi)")
    parser.add_argument(
        "--scenes", type=int, default=None, help="background scenes (default: = classes)"
    )
    parser.add_argument(
        "--bias-train", type=float, default=0.9, help="P(train video on its class's scene)"
    )
    parser.add_argument(
        "--bias-test", type=float, default=0.0, help="P(test video on its class's scene)"
    )
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument(
        "--distractor", action="store_true", help="add a randomly moving distractor"
    )
    parser.add_argument("--camera-shake", action="store_true", help="add mild camera shake")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in --out"
    )
    parser.add_argument(
        "--inspect",
        action="store_true",
        help="do not generate: check the dataset in --out (counts, bias, decoded pixels, masks)",
    )
    parser.add_argument(
        "--preview", type=Path, default=None, help="also save a contact sheet PNG here"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate (or with --inspect, check) the dataset; print a summary. Returns the exit code."""
    if args.inspect:
        try:
            report = inspect_dataset(args.out)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        print(f"dataset {args.out}:")
        print(format_report(report))
        if args.preview:
            print(f"preview: {save_preview(args.out, args.preview)}")
        return 1 if report["problems"] else 0
    try:
        info = generate_dataset(
            args.out,
            num_classes=args.classes,
            videos_per_class=args.videos_per_class,
            num_frames=args.frames,
            size=args.size,
            fps=args.fps,
            codec=args.codec,
            num_scenes=args.scenes,
            bias_train=args.bias_train,
            bias_test=args.bias_test,
            test_fraction=args.test_fraction,
            distractor=args.distractor,
            camera_shake=args.camera_shake,
            seed=args.seed,
            progress=not args.no_progress,
            num_workers=args.workers,
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    out = info.out_dir
    print(
        f"wrote {len(info.videos)} videos ({info.split_count('train')} train / {info.split_count('test')} test) "
        f"of {len(info.class_names)} classes on {info.num_scenes} scenes: {info.num_frames} frames "
        f"{info.width}x{info.height} @ {info.fps:g} fps, {info.codec} ({info.suffix}), in {info.seconds:.1f} s"
    )
    print(f"  videos:       {out / 'videos'}/<class>/<video_id>{info.suffix}")
    print(f"  splits:       {out / 'classInd.txt'}, trainlist01.txt, testlist01.txt (UCF101 style)")
    print(f"  annotations:  {out / 'annotations.csv'} (path,label,split,scene)")
    print(f"  ground truth: {out / 'gt'}/<video_id>.npz (class, scene, masks bool (T,H,W))")
    print(
        f"  same scene:   {out / SAME_SCENE_DIR} ({len(info.same_scene)} test videos on their "
        "class's own scene: videos/, gt/, classInd.txt, testlist01.txt)"
    )
    print(
        f"  bias realised (share on own scene): train {info.realised_bias('train'):.3f} "
        f"(asked {info.bias_train:g}), test {info.realised_bias('test'):.3f} (asked {info.bias_test:g})"
    )
    if args.preview:
        print(f"  preview:      {save_preview(out, args.preview)}")
    print(f"  check it:     dali-fame synth --out {out} --inspect --preview {out / 'preview.png'}")
    return 0

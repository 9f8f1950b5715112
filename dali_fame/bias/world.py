"""The synthetic world of the background-bias benchmark (issue #13): motion classes on scenes.

Every video shows one textured object whose *motion* is the class, over a static scene. What
makes it a bias benchmark rather than a classification toy:

- the object's look (shape, aspect, texture, colours) comes from a small pool
  (``appearance_pool`` looks) shared by all classes and drawn per foreground independently of
  the class: appearance tells neither the class nor, for MoCo's instance discrimination, the
  video (two views of one video share a look with 1 / pool of the negatives);
- the scenes are a strong shortcut: class c lies on its own known scene (c mod num_known) with
  probability ``bias`` in the pretraining set; each known scene has its own hue and pattern
  (tiles, dots, bricks, blotches from :func:`dali_fame.data.synthetic.render_scene`);
- the same foreground (look + trajectory, one ``instance`` id) is rendered on its own scene
  (test_same), on another class's scene (test_swapped), on a scene of a kind never seen in
  training (test_unseen: high-contrast two-colour stripes, colour patchworks, multi-hue noise,
  SCUBA-like) and as that unseen clip's middle frame repeated (test_static, SCUFO-like: a motion
  model should be at chance there). Pixels of the object are identical across the three moving
  renderings (before encoding); only the background differs;
- motions run ``time_scale`` times faster than the dataset generator's, so that one 8-frame clip
  at stride 2 (15 frames) sees about one period (oscillation periods 10-20 frames at 2x).

Files (the contract shared with dali_fame.bias.evaluate and the bench)::

    <world>/videos/<set>/<class_name>/<video_id>.mp4  h264 yuv420p CFR (CRF 12)
    <world>/manifest.csv     path,set,label,scene,scene_kind,instance,static
    <world>/lists/<set>.csv  path,label,split (paths relative to lists/; split train|test)
    <world>/lists/supervised_balanced.csv, supervised_biased.csv
                             train rows = train_balanced / train_biased, test rows = test_swapped
    <world>/lists/by_set/<set>/<set>.csv
                             each set's list alone in a folder (eval.extra_test_sets takes folders)
    <world>/meta.json        options, class names, scenes, counts, realised bias, foreground
                             share, generator version (no timings: byte-identical per options)

Everything is a pure function of :class:`WorldOptions`: each foreground draws from generators
seeded by (seed, instance), so the output does not depend on the number of workers; generating
again with the same options into the same folder is a no-op (:func:`generate_world`). The
manifest, lists, meta.json and the rendered frames are byte-identical from run to run; the
encoded files are not quite (libx264 through PyAV writes one of two streams for the same input:
decoded frames then differ by ~1.6 levels on average).

Presets (``WorldOptions.preset``) and why:

=========================  =======  =====  =====================================================
option                     cpu      ci     why
=========================  =======  =====  =====================================================
size                       32       32     the tiny encoder's cost is ~1.2 ms per clip forward +
                                           backward at 8 x 32 x 32 on one core (2.6 ms at 48): a
                                           MoCo run of ~40 epochs over 384 videos fits in a minute
num_frames                 32       16     two 15-frame views can be far apart in time
motions                    6        4      horizontal / vertical oscillation, circle, diagonal
                                           bounce, grow-shrink, rotate (no "still": its static
                                           clip would equal the clip)
appearance_pool            4        4      small and shared by all classes
radius_range               .18-.24  same   object 11% of the frame (the dataset's: ~4%), 17-33%
                                           swept over an 8 x 2 clip by motion (measured on the
                                           cpu test set; meta.json's ``foreground``), with 9-19
                                           px of travel left over a clip on a 32-px frame
time_scale                 2        2      a period fits in one 8 x 2 clip
bias                       0.9      0.9    the issue's pretraining bias
train_biased_per_class     64       6      pretraining + biased probe
train_balanced_per_class   64       6      balanced probe and reference (scenes cycled per
                                           class); as many as train_biased, so that the two
                                           supervised references differ only in the scenes
test_per_class             24       3      cpu: 144 foregrounds per test set (>= 128: one video
                                           < 1 point)
num_unseen_scenes          6        3      two of each unseen kind
=========================  =======  =====  =====================================================

Generation: the cpu world (1344 videos, 12 MB) takes 10-13 s with 2 workers, the ci world
(96 videos) about a second.

Evidence that the bias is real and motion learnable (cpu preset, seed 0 world; 2026-12-01):
the two supervised references of issue #13, ``train/finetune.py --pretrained none`` with the
tiny backbone on lists/supervised_{balanced,biased}.csv (384 training videos each; test rows =
test_swapped; test_same scored beside it through ``eval.extra_test_sets``), 8 x 2 clips, crop 32,
batch 16, SGD lr 0.05 cosine, 34 epochs, dropout 0.5, eval.color_augment false, 10 test clips:

======================  ====  =========  ============  ======================================
reference               seed  test_same  test_swapped  reading
======================  ====  =========  ============  ======================================
supervised_balanced     0     84.7       84.7          motion is learnable, the scene unused
supervised_balanced     1     86.1       84.7
supervised_biased       0     100.0      0.0           the scene is a total shortcut: it
supervised_biased       1     100.0      0.0           predicts the scene's class every time
======================  ====  =========  ============  ======================================

(chance 16.7%). All four test sets, one more run per reference (seed 0, the world generated
again: its files differ from the first by x264's run-to-run noise, see above):

======================  =========  ============  ===========  ===========
reference               test_same  test_swapped  test_unseen  test_static
======================  =========  ============  ===========  ===========
supervised_balanced     81.2       82.6          38.9         17.4
supervised_biased       100.0      4.2           17.4         16.7
======================  =========  ============  ===========  ===========

Unseen scene kinds cost even the scene-balanced encoder more than half its accuracy (SCUBA's
point: scene-balanced training is not scene-agnostic features), and the static clips put both
at chance, as a motion classifier should be (SCUFO). Recipe matters: with the finetune default colour augmentation and lr 0.025
step decay at epoch 12 (finetune_demo.yaml's), the balanced reference stays near its initial
loss (top-1 38.9 swapped / 43.8 same, with the earlier 32-per-class balanced set); with half the
training videos (32 per class) and the recipe above it reached 74.3 / 78.5 and 47.2 / 54.9 over
two seeds, hence train_balanced as large as train_biased. To rerun one reference (W: a world
made by ``generate_world(W, options=WorldOptions.preset("cpu"))``; ~2-5 min on 2 cores)::

    accelerate launch --cpu train/finetune.py --config configs/finetune_demo.yaml \
        --pretrained none --data-root W/lists/supervised_balanced.csv --dataset-format csv \
        --output-dir runs/ref_balanced --seed 0 --set data.crop=32 --set model.backbone=tiny \
        --set data.loader=cpu --set data.workers=1 --set optim.lr=0.05 \
        --set optim.schedule=cosine --set train.epochs=34 --set eval.color_augment=false \
        --set eval.eval_every=0 --set eval.test_name=swapped \
        --set "eval.extra_test_sets={same: W/lists/by_set/test_same}"
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from dali_fame.data import synthetic as syn

FORMAT_NAME = "dali_fame.bias_world"
#: bump when the same options would render different videos
GENERATOR_VERSION = 1

#: the sets, in manifest order (names are part of the contract)
SETS: tuple[str, ...] = (
    "train_biased",
    "train_balanced",
    "test_same",
    "test_swapped",
    "test_unseen",
    "test_static",
)
TRAIN_SETS = SETS[:2]
TEST_SETS = SETS[2:]
MANIFEST_COLUMNS = ("path", "set", "label", "scene", "scene_kind", "instance", "static")
#: the files and folders generate_world writes at the top of the world (overwrite removes these)
OWNED_ENTRIES = ("videos", "lists", "manifest.csv", "meta.json")
SUPERVISED_LISTS = {"supervised_balanced": "train_balanced", "supervised_biased": "train_biased"}

#: known scenes use these render_scene kinds (tiles, dots, bricks, blotches): no stripes or
#: waves, so that the unseen stripes are a new kind
KNOWN_SCENE_KINDS = (1, 2, 4, 5)
UNSEEN_SCENE_KINDS = ("stripes", "patchwork", "noise")

_CODEC = "h264"
_SUFFIX = ".mp4"
#: static clips: x264 refines a repeated frame in its P-frames (decoded frames then differ by up
#: to 40 levels); intra-only coding at a fixed QP codes identical frames identically. QP 12 is
#: about the moving clips' CRF 12 quality.
_STATIC_ENCODING = {"crf": "-1", "qp": "12", "x264-params": "chromaloc=1:keyint=1"}
#: the clip the foreground statistics are measured on (the bench's 8 frames at stride 2)
_STAT_CLIP = (8, 2)

# First words of the seed sequences (distinct from synthetic.py's 11..16).
_TAG_POOL = 21  # one pool look: (tag, seed, k)
_TAG_LOOK = 22  # a foreground's pool index: (tag, seed, instance)
_TAG_SCENE_DRAW = 23  # a train_biased foreground's scene: (tag, seed, instance)
_TAG_UNSEEN = 24  # an unseen scene's canvas: (tag, seed, scene)
_TAG_OFFSET = 25  # per (set, class) offsets of the cycled scene assignments: (tag, seed, set, class)

#: horizontal / vertical oscillation, circle, diagonal bounce, grow-shrink, rotate (not "still":
#: its static clip would equal the clip)
_DEFAULT_MOTIONS = syn.MOTIONS[:6]


# ---------------------------------------------------------------------------------- options


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.number))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclasses.dataclass(frozen=True)
class WorldOptions:
    """Every setting of a world; validated at construction (ValueError naming the option).

    Attributes:
        size: frame side in pixels (square, even for h264 4:2:0, >= 16).
        num_frames: frames per video (>= 2).
        fps: frame rate of the files.
        motions: the classes, names from :data:`dali_fame.data.synthetic.MOTIONS` (not "still").
        num_known_scenes: training scenes; None = one per class. Class c's own scene is
            c mod num_known_scenes (>= 2: a swapped scene must exist).
        num_unseen_scenes: test-only scenes (ids num_known .. num_known + n - 1), cycling through
            :data:`UNSEEN_SCENE_KINDS`.
        bias: P(a train_biased video lies on its class's own scene); else another known scene,
            uniformly.
        train_biased_per_class, train_balanced_per_class, test_per_class: foregrounds per class
            (a test foreground is rendered once in each of the four test sets).
        appearance_pool: number of object looks shared by all classes.
        radius_range: the object's radius as a fraction of the frame side, drawn uniformly.
        time_scale: motion speed relative to the dataset generator (periods / time_scale).
        seed: everything is a function of the options and the seed.
    """

    size: int = 32
    num_frames: int = 32
    fps: float = 25.0
    motions: tuple[str, ...] = _DEFAULT_MOTIONS
    num_known_scenes: int | None = None
    num_unseen_scenes: int = 6
    bias: float = 0.9
    train_biased_per_class: int = 64
    train_balanced_per_class: int = 64
    test_per_class: int = 24
    appearance_pool: int = 4
    radius_range: tuple[float, float] = (0.18, 0.24)
    time_scale: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists (from JSON or YAML) become tuples, so that options compare and hash.
        for name in ("motions", "radius_range"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if not _is_int(self.size) or self.size < 16 or self.size % 2:
            raise ValueError(f"WorldOptions.size must be an even integer >= 16, got {self.size!r}")
        if not _is_int(self.num_frames) or self.num_frames < 2:
            raise ValueError(
                f"WorldOptions.num_frames must be an integer >= 2, got {self.num_frames!r}"
            )
        if not _is_number(self.fps) or self.fps <= 0:
            raise ValueError(f"WorldOptions.fps must be a positive number, got {self.fps!r}")
        m = self.motions
        if not isinstance(m, tuple) or len(m) < 2 or any(not isinstance(x, str) for x in m):
            raise ValueError(
                f"WorldOptions.motions must be at least two motion names, got {m!r}"
            )
        unknown = [x for x in m if x not in syn.MOTIONS]
        if unknown:
            raise ValueError(
                f"WorldOptions.motions: unknown {unknown}; choose from {', '.join(syn.MOTIONS)}"
            )
        if "still" in m:
            raise ValueError(
                "WorldOptions.motions: 'still' does not move, so its static clip would equal "
                "its clip; leave it out"
            )
        if len(set(m)) != len(m):
            raise ValueError(f"WorldOptions.motions has duplicates: {m!r}")
        known = self.num_known_scenes
        if known is not None and (not _is_int(known) or known < 2):
            raise ValueError(
                "WorldOptions.num_known_scenes must be an integer >= 2 (a swapped test scene "
                f"must exist) or None (= one per class), got {known!r}"
            )
        for name in (
            "num_unseen_scenes",
            "train_biased_per_class",
            "train_balanced_per_class",
            "test_per_class",
            "appearance_pool",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"WorldOptions.{name} must be a positive integer, got {value!r}")
        if not _is_number(self.bias) or not 0.0 <= self.bias <= 1.0:
            raise ValueError(f"WorldOptions.bias must be a probability in [0, 1], got {self.bias!r}")
        r = self.radius_range
        if (
            not isinstance(r, tuple)
            or len(r) != 2
            or not all(_is_number(x) for x in r)
            or not 0 < r[0] <= r[1] <= 0.3
        ):
            raise ValueError(
                "WorldOptions.radius_range must be (low, high) with 0 < low <= high <= 0.3 (a "
                f"larger object has no room to move), got {r!r}"
            )
        if not _is_number(self.time_scale) or self.time_scale <= 0:
            raise ValueError(
                f"WorldOptions.time_scale must be a positive number, got {self.time_scale!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"WorldOptions.seed must be a non-negative integer, got {self.seed!r}")

    @property
    def num_classes(self) -> int:
        return len(self.motions)

    @property
    def known_scenes(self) -> int:
        """The number of known (training) scenes."""
        return self.num_classes if self.num_known_scenes is None else int(self.num_known_scenes)

    @property
    def unseen_scene_ids(self) -> tuple[int, ...]:
        return tuple(range(self.known_scenes, self.known_scenes + self.num_unseen_scenes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorldOptions:
        """Options from :meth:`to_dict` (or a config section); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(values) - names)
        if extra:
            raise ValueError(f"WorldOptions: unknown option(s) {extra}; known: {sorted(names)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WorldOptions:
        """The named preset (see the module docstring), with some options overridden.

        ``"cpu"``: the full CPU benchmark (144 foregrounds per test set). ``"ci"``: a tiny world
        for the test suite (96 videos).
        """
        presets = {
            "cpu": {},
            "ci": {
                "num_frames": 16,
                "motions": _DEFAULT_MOTIONS[:4],
                "num_unseen_scenes": 3,
                "train_biased_per_class": 6,
                "train_balanced_per_class": 6,
                "test_per_class": 3,
            },
        }
        if name not in presets:
            raise ValueError(f"unknown world preset {name!r}; choose one of {', '.join(presets)}")
        return cls.from_dict({**presets[name], **overrides})


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class WorldVideo:
    """One manifest row.

    Attributes:
        path: relative to the world folder, e.g. ``videos/test_same/circle/test_same_circle_00412.mp4``.
        set: one of :data:`SETS`.
        label: 0-based class (index into ``WorldOptions.motions``).
        scene: scene id (known 0..num_known-1, unseen >= num_known).
        scene_kind: ``"known"`` or ``"unseen"``.
        instance: the foreground's id (look + trajectory), shared by its test renderings.
        static: 1 for a one-frame-repeated clip, else 0.
    """

    path: str
    set: str
    label: int
    scene: int
    scene_kind: str
    instance: int
    static: int

    @property
    def video_id(self) -> str:
        return Path(self.path).stem


def _cycled(seed: int, set_index: int, label: int, choices: list[int], count: int) -> list[int]:
    """count picks cycling through ``choices`` from a seeded offset: each choice is used
    count / len(choices) times (+-1), so the assignment is balanced, not just uniform in law."""
    offset = int(syn._rng(_TAG_OFFSET, seed, set_index, label).integers(0, len(choices)))
    return [choices[(offset + i) % len(choices)] for i in range(count)]


def plan_world(options: WorldOptions) -> list[WorldVideo]:
    """Every video of the world (set, class, scene, instance) without rendering anything.

    Instances are numbered train_biased, then train_balanced, then the test foregrounds, each
    class by class. Scenes: train_biased draws "own scene" with probability bias per foreground
    (else a uniformly drawn other known scene); train_balanced cycles through all known scenes
    and test_swapped through the other classes' scenes, from a seeded offset per class;
    test_unseen cycles through the unseen scenes; test_static uses its test_unseen scene.
    """
    o = options
    known = o.known_scenes
    names = o.motions
    rows: list[WorldVideo] = []

    def add(set_name: str, label: int, instance: int, scene: int, static: int = 0) -> None:
        video_id = f"{set_name}_{names[label]}_{instance:05d}"
        rows.append(
            WorldVideo(
                path=f"videos/{set_name}/{names[label]}/{video_id}{_SUFFIX}",
                set=set_name,
                label=label,
                scene=scene,
                scene_kind="known" if scene < known else "unseen",
                instance=instance,
                static=static,
            )
        )

    instance = 0
    for label in range(o.num_classes):
        own = label % known
        others = [s for s in range(known) if s != own]
        for _ in range(o.train_biased_per_class):
            rng = syn._rng(_TAG_SCENE_DRAW, o.seed, instance)
            on_own = rng.random() < o.bias
            pick = others[int(rng.integers(0, len(others)))]
            add("train_biased", label, instance, own if on_own else pick)
            instance += 1
    for label in range(o.num_classes):
        scenes = _cycled(o.seed, 1, label, list(range(known)), o.train_balanced_per_class)
        for scene in scenes:
            add("train_balanced", label, instance, scene)
            instance += 1
    test: list[tuple[int, int, int, int]] = []  # (label, instance, swapped scene, unseen scene)
    for label in range(o.num_classes):
        own = label % known
        others = [s for s in range(known) if s != own]
        swapped = _cycled(o.seed, 3, label, others, o.test_per_class)
        unseen = _cycled(o.seed, 4, label, list(o.unseen_scene_ids), o.test_per_class)
        for k in range(o.test_per_class):
            test.append((label, instance, swapped[k], unseen[k]))
            instance += 1
    for label, inst, swapped_scene, unseen_scene in test:
        add("test_same", label, inst, label % known)
    for label, inst, swapped_scene, unseen_scene in test:
        add("test_swapped", label, inst, swapped_scene)
    for label, inst, swapped_scene, unseen_scene in test:
        add("test_unseen", label, inst, unseen_scene)
    for label, inst, swapped_scene, unseen_scene in test:
        add("test_static", label, inst, unseen_scene, static=1)
    return rows


def realised_bias(videos: list[WorldVideo], set_name: str, num_known: int) -> float | None:
    """Share of a set's videos on their class's own scene (None for an empty set)."""
    rows = [v for v in videos if v.set == set_name]
    if not rows:
        return None
    return sum(v.scene == v.label % num_known for v in rows) / len(rows)


# ------------------------------------------------------------------------------- rendering


def appearance_pool(options: WorldOptions) -> list[dict]:
    """The ``appearance_pool`` object looks (dicts of synthetic._appearance's keys)."""
    radius = 0.5 * sum(options.radius_range) * options.size
    return [
        syn._appearance(syn._rng(_TAG_POOL, options.seed, k), radius)
        for k in range(options.appearance_pool)
    ]


def look_index(options: WorldOptions, instance: int) -> int:
    """The pool look of one foreground: uniform over the pool, independent of the class."""
    return int(syn._rng(_TAG_LOOK, options.seed, instance).integers(0, options.appearance_pool))


def render_unseen_scene(*, scene: int, size: int, seed: int, kind: str) -> np.ndarray:
    """A test-only background of a kind the known scenes never show.

    Args:
        scene: the scene id (selects its random draws).
        size: frame side; the canvas is padded like :func:`synthetic.render_scene`'s.
        seed: the world seed.
        kind: ``"stripes"`` (two contrasting colours, soft square wave, random angle and period),
            ``"patchwork"`` (Voronoi cells of random colours) or ``"noise"`` (three independent
            smooth colour fields with fine grain: no single hue).

    Returns:
        float32 (size + 2 * pad, size + 2 * pad, 3) RGB on 0..255.
    """
    pad, _ = syn._scene_pad(size, size)
    n = size + 2 * pad
    rng = syn._rng(_TAG_UNSEEN, seed, scene)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if kind == "stripes":
        hue = rng.random()
        light = syn._hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.8, 1.0))
        dark = syn._hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.5, 1.0), rng.uniform(0.1, 0.35))
        # Periods >= 6 px survive 4:2:0 coding; a soft square wave (tanh) keeps edges sharp.
        wavelength = rng.uniform(0.18, 0.35) * size
        angle = rng.uniform(0.0, math.pi)
        along = xx * math.cos(angle) + yy * math.sin(angle)
        w = (0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * math.pi * along / wavelength)))[..., None]
        canvas = dark * (1 - w) + light * w
    elif kind == "patchwork":
        cells = int(rng.integers(8, 14))
        centres = rng.uniform(0, n, size=(cells, 2)).astype(np.float32)
        colours = np.stack(
            [syn._hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)) for _ in range(cells)]
        )
        dist = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
        canvas = colours[np.argmin(dist, axis=-1)]
    elif kind == "noise":
        field = syn._smooth_noise(rng, n, n, int(rng.integers(3, 6)), 3)
        canvas = 40.0 + 200.0 * field
    else:
        raise ValueError(f"unknown unseen scene kind {kind!r}; choose from {UNSEEN_SCENE_KINDS}")
    grain = rng.normal(0.0, 0.03, (n, n, 1)).astype(np.float32)
    return np.clip(canvas * (1 + grain), 0, 255).astype(np.float32)


def unseen_kind(options: WorldOptions, scene: int) -> str:
    """The kind of an unseen scene id (they cycle through :data:`UNSEEN_SCENE_KINDS`)."""
    return UNSEEN_SCENE_KINDS[(scene - options.known_scenes) % len(UNSEEN_SCENE_KINDS)]


@functools.lru_cache(maxsize=64)
def _canvas(options: WorldOptions, scene: int) -> np.ndarray:
    if scene < options.known_scenes:
        canvas = syn.render_scene(
            scene=scene, height=options.size, width=options.size, seed=options.seed,
            kinds=KNOWN_SCENE_KINDS,
        )
    else:
        canvas = render_unseen_scene(
            scene=scene, size=options.size, seed=options.seed, kind=unseen_kind(options, scene)
        )
    canvas.setflags(write=False)  # shared by every video on this scene
    return canvas


def render_world_video(
    options: WorldOptions, *, label: int, instance: int, scene: int, static: bool = False
) -> syn.RenderedVideo:
    """The generator's frames of one world video (what its encoded file approximates).

    The look and the trajectory depend only on (options, label, instance): renderings of one
    foreground on different scenes have identical object pixels and masks.

    Args:
        label: class index into ``options.motions``.
        instance: the foreground id.
        scene: known (< num_known) or unseen scene id.
        static: repeat the middle frame (frames, masks, background, centers) for every frame.

    Returns:
        :class:`dali_fame.data.synthetic.RenderedVideo`: frames uint8 (T, H, W, 3) RGB, masks
        bool (T, H, W), background uint8 (T, H, W, 3), centers float32 (T, 2).
    """
    if not 0 <= label < options.num_classes:
        raise ValueError(f"label must be in 0..{options.num_classes - 1}, got {label}")
    if not 0 <= scene < options.known_scenes + options.num_unseen_scenes:
        raise ValueError(
            f"scene must be in 0..{options.known_scenes + options.num_unseen_scenes - 1}, got {scene}"
        )
    video = syn.render_video(
        class_index=syn.MOTIONS.index(options.motions[label]),
        scene=scene,
        video_index=instance,
        num_frames=options.num_frames,
        size=options.size,
        seed=options.seed,
        look=appearance_pool(options)[look_index(options, instance)],
        radius_range=options.radius_range,
        time_scale=options.time_scale,
        canvas=_canvas(options, scene),
    )
    if not static:
        return video
    mid = options.num_frames // 2
    t = options.num_frames
    return syn.RenderedVideo(
        frames=np.repeat(video.frames[mid : mid + 1], t, axis=0),
        masks=np.repeat(video.masks[mid : mid + 1], t, axis=0),
        background=np.repeat(video.background[mid : mid + 1], t, axis=0),
        distractor_masks=np.zeros_like(video.distractor_masks),
        centers=np.repeat(video.centers[mid : mid + 1], t, axis=0),
    )


def _foreground_stats(masks: np.ndarray) -> tuple[float, float]:
    """(mean share of pixels inside the object per frame, share covered at least once by the
    object over the first stat clip: 8 frames at stride 2) of bool masks (T, H, W)."""
    length, stride = _STAT_CLIP
    clip = masks[: (length - 1) * stride + 1 : stride]
    return float(masks.mean()), float(clip.any(axis=0).mean())


def _make_foreground(job: dict) -> list[tuple[str, float, float]]:
    """Worker: render, encode and place every video of one foreground.

    Returns (set, frame share, clip-swept share) per video written.
    """
    from dali_fame.data import video_io

    options: WorldOptions = job["options"]
    out_dir = Path(job["out_dir"])
    stats = []
    for row in job["rows"]:
        video = render_world_video(
            options, label=row.label, instance=row.instance, scene=row.scene, static=bool(row.static)
        )
        final = out_dir / row.path
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.stem + ".partial" + final.suffix)
        video_io.write_video(
            partial, video.frames, fps=options.fps, codec=_CODEC,
            encoder_options=_STATIC_ENCODING if row.static else None,
        )
        os.replace(partial, final)
        stats.append((row.set, *_foreground_stats(video.masks)))
    return stats


# ---------------------------------------------------------------------------------- world


@dataclasses.dataclass(frozen=True)
class WorldInfo:
    """A generated world (see the module docstring for its files).

    Attributes:
        out_dir: the world folder.
        options: the options it was generated with.
        class_names: ``options.motions``, one per label.
        num_known_scenes: known scene ids are 0..num_known_scenes-1.
        unseen_scenes: the unseen scene ids.
        videos: every manifest row, in manifest order.
        meta: meta.json's content.
        seconds: wall time of the generate_world call (0 when the world was already there).
    """

    out_dir: Path
    options: WorldOptions
    class_names: tuple[str, ...]
    num_known_scenes: int
    unseen_scenes: tuple[int, ...]
    videos: tuple[WorldVideo, ...]
    meta: dict
    seconds: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rows(self, set_name: str) -> list[WorldVideo]:
        """The manifest rows of one set, in manifest order."""
        if set_name not in SETS:
            raise ValueError(f"unknown set {set_name!r}; choose one of {', '.join(SETS)}")
        return [v for v in self.videos if v.set == set_name]

    def list_csv(self, name: str) -> Path:
        """lists/<name>.csv: a set of :data:`SETS` or a key of :data:`SUPERVISED_LISTS`."""
        if name not in SETS and name not in SUPERVISED_LISTS:
            raise ValueError(
                f"unknown list {name!r}; choose one of {', '.join(SETS + tuple(SUPERVISED_LISTS))}"
            )
        return self.out_dir / "lists" / f"{name}.csv"

    def set_folder(self, name: str) -> Path:
        """lists/by_set/<name>/: a folder holding only <name>.csv, the form of a dataset that
        ``eval.extra_test_sets`` takes (e.g. test_same beside a finetune run's test_swapped)."""
        if name not in SETS:
            raise ValueError(f"unknown set {name!r}; choose one of {', '.join(SETS)}")
        return self.out_dir / "lists" / "by_set" / name

    def path(self, video: WorldVideo) -> Path:
        return self.out_dir / video.path


def _write_lists(out_dir: Path, videos: list[WorldVideo]) -> None:
    lists = out_dir / "lists"
    lists.mkdir(parents=True, exist_ok=True)

    def write(path: Path, rows: list[WorldVideo]) -> None:
        up = "../" * (len(path.relative_to(out_dir).parts) - 1)  # paths relative to the CSV
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "label", "split"])
            for v in rows:
                split = "train" if v.set in TRAIN_SETS else "test"
                writer.writerow([f"{up}{v.path}", v.label, split])

    for name in SETS:
        write(lists / f"{name}.csv", [v for v in videos if v.set == name])
        # the same list alone in a folder: what eval.extra_test_sets takes (a dataset folder)
        (lists / "by_set" / name).mkdir(parents=True, exist_ok=True)
        write(lists / "by_set" / name / f"{name}.csv", [v for v in videos if v.set == name])
    for name, train_set in SUPERVISED_LISTS.items():
        write(lists / f"{name}.csv", [v for v in videos if v.set in (train_set, "test_swapped")])
    with open(out_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for v in videos:
            writer.writerow([getattr(v, c) for c in MANIFEST_COLUMNS])


def _read_manifest(path: Path) -> list[WorldVideo]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(
                f"{path}: header {reader.fieldnames} is not {','.join(MANIFEST_COLUMNS)}"
            )
        return [
            WorldVideo(
                path=r["path"], set=r["set"], label=int(r["label"]), scene=int(r["scene"]),
                scene_kind=r["scene_kind"], instance=int(r["instance"]), static=int(r["static"]),
            )
            for r in reader
        ]


def load_world(out_dir: str | Path) -> WorldInfo:
    """Read a generated world (meta.json + manifest.csv).

    Raises:
        ValueError: not a world (naming the missing or foreign file), or a world of another
            generator version.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} not found: {out_dir} is not a generated bias world")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    if meta.get("version") != GENERATOR_VERSION:
        raise ValueError(
            f"{meta_path}: generator version {meta.get('version')} != {GENERATOR_VERSION}; "
            "generate the world again (overwrite=True)"
        )
    options = WorldOptions.from_dict(meta["options"])
    manifest = out_dir / "manifest.csv"
    if not manifest.is_file():
        raise ValueError(f"{manifest} not found: the world in {out_dir} is incomplete")
    return WorldInfo(
        out_dir=out_dir,
        options=options,
        class_names=tuple(meta["class_names"]),
        num_known_scenes=int(meta["num_known_scenes"]),
        unseen_scenes=tuple(meta["unseen_scenes"]),
        videos=tuple(_read_manifest(manifest)),
        meta=meta,
    )


def _existing(out_dir: Path, options: WorldOptions) -> WorldInfo | None:
    """The world already in out_dir when it has these options and all its files, else None."""
    try:
        info = load_world(out_dir)
    except (ValueError, OSError, KeyError, json.JSONDecodeError):
        return None
    if info.options != options or not all(info.path(v).is_file() for v in info.videos):
        return None
    if not all((out_dir / "lists" / f"{n}.csv").is_file() for n in SETS + tuple(SUPERVISED_LISTS)):
        return None
    if not all((info.set_folder(n) / f"{n}.csv").is_file() for n in SETS):
        return None
    return info


def generate_world(
    out_dir: str | Path,
    *,
    options: WorldOptions,
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = False,
) -> WorldInfo:
    """Write the world (layout in the module docstring), or return it if it is already there.

    Args:
        out_dir: the world folder; created if missing. A world with the same options and all its
            files is returned as is (no-op). A folder with another world (other options, an older
            generator, missing files) needs ``overwrite=True``; an interrupted generation (no
            meta.json yet) is redone; a folder holding anything else is refused.
        options: the world's settings.
        overwrite: replace another world in out_dir.
        workers: rendering + encoding processes (the output does not depend on it).
        progress: show a tqdm progress bar.

    Raises:
        ValueError: a bad argument, or a folder that cannot be written (nothing is written then).
    """
    started = time.perf_counter()
    if not isinstance(options, WorldOptions):
        raise TypeError(f"options must be a WorldOptions, got {type(options).__name__}")
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"world folder {out_dir} exists and is not a folder")
    existing = _existing(out_dir, options) if out_dir.is_dir() else None
    if existing is not None:
        return existing
    if out_dir.is_dir():
        entries = sorted(p.name for p in out_dir.iterdir())
        foreign = [e for e in entries if e not in OWNED_ENTRIES]
        if foreign:
            raise ValueError(
                f"world folder {out_dir} holds files that are not a bias world's "
                f"({', '.join(foreign[:5])}); choose an empty or new folder"
            )
        # meta.json is written last: without it the folder holds an interrupted generation
        # of ours, which is simply done again.
        if entries and not overwrite and (out_dir / "meta.json").exists():
            raise ValueError(
                f"world folder {out_dir} holds a world with other options (or an incomplete or "
                "older one); pass overwrite=True to replace it"
            )
        syn.remove_entries(out_dir, OWNED_ENTRIES)
    out_dir.mkdir(parents=True, exist_ok=True)

    videos = plan_world(options)
    by_instance: dict[int, list[WorldVideo]] = {}
    for v in videos:
        by_instance.setdefault(v.instance, []).append(v)
    jobs = [{"options": options, "out_dir": str(out_dir), "rows": rows} for rows in by_instance.values()]
    from tqdm.auto import tqdm

    stats: list[tuple[str, float, float]] = []
    bar = tqdm(total=len(videos), desc="bias world", unit="video", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                stats += _make_foreground(job)
                bar.update(len(job["rows"]))
        else:
            import multiprocessing

            # fork (as synthetic.generate_dataset): the workers run numpy and FFmpeg only.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_make_foreground, job): job for job in jobs}
                for future in as_completed(futures):
                    stats += future.result()
                    bar.update(len(futures[future]["rows"]))
    finally:
        bar.close()

    _write_lists(out_dir, videos)
    known = options.known_scenes
    share = {
        s: {
            "frame": float(np.mean([a for name, a, _ in stats if name == s])),
            "clip_swept": float(np.mean([b for name, _, b in stats if name == s])),
        }
        for s in SETS
    }
    meta = {
        "format": FORMAT_NAME,
        "version": GENERATOR_VERSION,
        "options": options.to_dict(),
        "class_names": list(options.motions),
        "num_known_scenes": known,
        "unseen_scenes": list(options.unseen_scene_ids),
        "unseen_scene_kinds": {str(s): unseen_kind(options, s) for s in options.unseen_scene_ids},
        "counts": {s: sum(v.set == s for v in videos) for s in SETS},
        "test_foregrounds": options.num_classes * options.test_per_class,
        # None where the set has no "own scene" notion (the unseen scenes belong to no class)
        "realised_bias": {
            s: (None if s in ("test_unseen", "test_static") else realised_bias(videos, s, known))
            for s in SETS
        },
        # mean share of pixels on the object per frame, and swept by it over an 8 x 2 clip
        "foreground": {s: {k: round(v, 6) for k, v in d.items()} for s, d in share.items()},
        "files": {
            "videos": "videos/<set>/<class_name>/<video_id>.mp4",
            "manifest": "manifest.csv (" + ",".join(MANIFEST_COLUMNS) + ")",
            "lists": "lists/<set>.csv, lists/supervised_{balanced,biased}.csv (path,label,split)",
        },
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    info = load_world(out_dir)
    return dataclasses.replace(info, seconds=time.perf_counter() - started)

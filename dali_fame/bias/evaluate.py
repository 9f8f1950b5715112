"""The background-bias metrics of one encoder on a bias world (issue #13, point 2).

What a world is (written by :mod:`dali_fame.bias.world`): ``<world>/manifest.csv`` (one row per
video: path, set, motion label, scene, scene kind, foreground instance, static flag),
``<world>/lists/<set>.csv`` (the loader's view of each set) and ``<world>/meta.json`` (class
names, number of known scenes). Six sets: ``train_biased``, ``train_balanced`` and the four
renderings of the same test foregrounds ``test_same``, ``test_swapped``, ``test_unseen``,
``test_static``.

The protocol (:func:`evaluate_encoder`):

1. **Features, once per video.** Every video of every set goes through the real CPU loader in
   eval mode (``num_clips`` uniformly spaced ``clip_len x stride`` clips, short side resized to
   ``crop``, centre crop) in one pass, so each file is decoded once per encoder and one worker
   pool serves all sets. A video's feature is the mean of its clips' L2-normalised pooled
   backbone features, L2-normalised again: float32 (N, D).
2. **Probes** (:mod:`dali_fame.bias.probe`: deterministic multinomial logistic regression with
   fixed hyper-parameters), each fitted once and reused for every test set:
   the motion probe on ``train_balanced`` (scene independent of the class, so the probe
   cannot gain from the scene and the numbers measure the *encoder's* bias, not the probe's);
   the old-setting motion probe on ``train_biased``; the scene probe on ``train_balanced``.
3. **Metrics**, percent (0-100), keys :data:`METRIC_KEYS`:

   ================================  ============================================================
   ``same_top1``                     balanced probe on ``test_same`` (foreground on its class's scene)
   ``swapped_top1``                  ... on ``test_swapped`` (another class's known scene)
   ``unseen_top1``                   ... on ``test_unseen`` (scenes never seen: SCUBA-like)
   ``static_top1``                   ... on ``test_static`` (one frame repeated: SCUFO-like; a
                                     motion model scores chance, a scene/appearance model more)
   ``biased_probe_swapped_top1``     probe trained on ``train_biased``, on ``test_swapped``
   ``biased_probe_same_top1``        the same probe on ``test_same`` (with the one above: how far
                                     a scene-biased probe falls when the scene changes)
   ``scene_decode_top1``             scene probe on ``test_swapped``'s scenes (chance 1/known).
                                     Caveat: there the scene is *another class's* scene, so any
                                     motion information the scene probe picked up votes against
                                     the truth: a motion-only encoder can score below chance
                                     (measured: 3% on a 2-class world, 16.0% against 16.7% at 6).
   ``contrasted_acc``                ALBAR (ICLR 2025): % of test foregrounds (paired by
                                     ``instance``) predicted correctly on ``test_unseen`` AND
                                     differently on ``test_static``
   ``retrieval_r1``                  ``test_swapped`` queries the ``train_balanced`` gallery by
                                     cosine (each set centred by its own mean, then L2-normalised,
                                     as :mod:`dali_fame.eval.retrieval`): nearest video of the class
   ``retrieval_scene_at1``           ... nearest video on the query's scene
   ================================  ============================================================

:func:`chance` gives each key's chance level on a world (exact expectations of a guesser that
ignores the video), :func:`metrics_from_features` the metrics of given feature tensors (the part
the tests pin by hand), :func:`load_backbone` an encoder from a pretraining or finetuning run.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dali_fame.bias.probe import INVERSE_REGULARISATION, fit_probe
from dali_fame.bias.world import MANIFEST_COLUMNS, SETS, TEST_SETS
from dali_fame.data.records import VideoRecord

logger = logging.getLogger(__name__)

# Seeded random init swaps torch's global generator state for the construction; the bench
# loads encoders from several threads, which would otherwise interleave their draws.
_INIT_LOCK = threading.Lock()

#: the keys :func:`evaluate_encoder` returns, in table order
METRIC_KEYS: tuple[str, ...] = (
    "same_top1", "swapped_top1", "unseen_top1", "static_top1",
    "biased_probe_swapped_top1", "biased_probe_same_top1", "scene_decode_top1",
    "contrasted_acc", "retrieval_r1", "retrieval_scene_at1",
)


# --------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class SetLabels:
    """What the metrics know about the videos of one set, one entry per video, in one order.

    Attributes:
        labels: int64 (N,) motion class.
        scenes: int64 (N,) scene id (known scenes ``0 .. num_known - 1``, unseen ones above).
        instances: int64 (N,) foreground id, shared by a foreground's four test renderings.
        paths: N absolute file paths (for error messages; may be empty in hand-made tests).
    """

    labels: torch.Tensor
    scenes: torch.Tensor
    instances: torch.Tensor
    paths: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class WorldTables:
    """A world's manifest, read and checked (no video is opened).

    Attributes:
        root: the world directory.
        class_names: motion classes, ``class_names[label]``.
        num_known_scenes: scenes ``0 .. num_known_scenes - 1`` appear in training.
        sets: set name -> :class:`SetLabels` in manifest order.
    """

    root: Path
    class_names: tuple[str, ...]
    num_known_scenes: int
    sets: Mapping[str, SetLabels]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def world_root(world) -> Path:
    """The directory of ``world``: a path, or a :class:`~dali_fame.bias.world.WorldInfo`."""
    if isinstance(world, (str, os.PathLike)):
        return Path(world)
    out_dir = getattr(world, "out_dir", None)
    if isinstance(out_dir, (str, os.PathLike)):
        return Path(out_dir)
    raise TypeError(f"world must be a world directory or a WorldInfo; got {type(world).__name__}")


def read_world(world) -> WorldTables:
    """Read ``<world>/manifest.csv`` and ``<world>/meta.json``.

    Raises:
        ValueError: a missing file, a missing column or set, a malformed row (``FILE:LINE: ...``),
            or test sets whose foregrounds are not the same four times.
    """
    root = world_root(world)
    manifest, meta_file = root / "manifest.csv", root / "meta.json"
    for f in (manifest, meta_file):
        if not f.is_file():
            raise ValueError(f"{f} not found: {root} is not a bias world (make one with "
                             f"dali_fame.bias.world.generate_world)")
    meta = json.loads(meta_file.read_text())
    try:
        class_names = tuple(str(c) for c in meta["class_names"])
        num_known = int(meta["num_known_scenes"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_file}: needs class_names (list) and num_known_scenes (int): "
                         f"{type(err).__name__}: {err}") from None
    columns: dict[str, dict[str, list]] = {s: {"path": [], "label": [], "scene": [], "instance": []}
                                           for s in SETS}
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{manifest}: missing column(s) {missing}; header must be "
                             f"{','.join(MANIFEST_COLUMNS)}")
        for row in reader:
            where = f"{manifest}:{reader.line_num}"
            name = row["set"]
            if name not in columns:
                raise ValueError(f"{where}: set {name!r} is not one of {', '.join(SETS)}")
            try:
                label, scene, instance = int(row["label"]), int(row["scene"]), int(row["instance"])
            except ValueError:
                raise ValueError(f"{where}: label, scene and instance must be integers") from None
            if not 0 <= label < len(class_names):
                raise ValueError(f"{where}: label {label} outside 0..{len(class_names) - 1}")
            col = columns[name]
            col["path"].append(os.path.normpath(root / row["path"]))
            col["label"].append(label)
            col["scene"].append(scene)
            col["instance"].append(instance)
    sets = {}
    for name, col in columns.items():
        if not col["path"]:
            raise ValueError(f"{manifest}: no video of set {name!r}")
        sets[name] = SetLabels(labels=torch.tensor(col["label"], dtype=torch.int64),
                               scenes=torch.tensor(col["scene"], dtype=torch.int64),
                               instances=torch.tensor(col["instance"], dtype=torch.int64),
                               paths=tuple(col["path"]))
    reference = sorted(sets["test_unseen"].instances.tolist())
    for name in TEST_SETS:
        if sorted(sets[name].instances.tolist()) != reference:
            raise ValueError(f"{manifest}: set {name!r} does not hold the same foreground instances "
                             f"as test_unseen (each test foreground appears once per test set)")
    return WorldTables(root=root, class_names=class_names, num_known_scenes=num_known, sets=sets)


def index_world(tables: WorldTables, *, clip_len: int, stride: int,
                workers: int = 1) -> dict[str, tuple[list[VideoRecord], SetLabels]]:
    """Validated loader records of every set, with their labels in the records' order.

    Each ``<world>/lists/<set>.csv`` goes through the project's index
    (:func:`dali_fame.data.index.build_index`, demux probe, cached next to the lists: a second
    encoder on the same world opens no file here).

    Raises:
        ValueError: a listed video is excluded by the index (named with its reason), or a list
            and the manifest disagree (a video missing from one, another label).
    """
    from dali_fame.data.index import build_index

    out = {}
    for name in SETS:
        listing = tables.root / "lists" / f"{name}.csv"
        if not listing.is_file():
            raise ValueError(f"{listing} not found: the world {tables.root} is incomplete")
        split = "train" if name.startswith("train") else "test"
        result = build_index(listing, format="csv", split=split, clip_len=clip_len, stride=stride,
                             workers=workers, mode="demux", progress=False)
        if result.excluded:
            bad = "; ".join(f"{e.path}: {e.reason} ({e.detail})" for e in result.excluded[:5])
            raise ValueError(f"{listing}: {len(result.excluded)} video(s) unusable: {bad}")
        labels = tables.sets[name]
        row_of = {p: i for i, p in enumerate(labels.paths)}
        rows = []
        for rec in result.records:
            i = row_of.get(os.path.normpath(rec.path))
            if i is None:
                raise ValueError(f"{listing}: {rec.path} is not a {name!r} video of "
                                 f"{tables.root / 'manifest.csv'}")
            if int(labels.labels[i]) != rec.label:
                raise ValueError(f"{listing}: {rec.path} has label {rec.label}, the manifest "
                                 f"says {int(labels.labels[i])}")
            rows.append(i)
        if sorted(rows) != list(range(len(labels))):
            raise ValueError(f"{listing} lists {len(rows)} videos, the manifest {len(labels)} "
                             f"for set {name!r} (or lists one twice)")
        order = torch.tensor(rows, dtype=torch.int64)
        out[name] = (list(result.records),
                     SetLabels(labels=labels.labels[order], scenes=labels.scenes[order],
                               instances=labels.instances[order],
                               paths=tuple(labels.paths[i] for i in rows)))
    return out


# ------------------------------------------------------------------------------ the metrics


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``pred`` int64 (N,) equal to ``labels`` int64 (N,)."""
    if pred.shape != labels.shape or pred.numel() == 0:
        raise ValueError(f"top1: pred {tuple(pred.shape)} and labels {tuple(labels.shape)} "
                         f"must be equal non-empty (N,)")
    return float((pred == labels).double().mean() * 100)


def contrasted_accuracy(pred_unseen: torch.Tensor, unseen: SetLabels,
                        pred_static: torch.Tensor, static: SetLabels) -> float:
    """ALBAR's contrasted accuracy, percent.

    A foreground counts when its ``test_unseen`` clip is classified correctly AND its
    ``test_static`` clip (the same clip, one frame repeated) gets a different prediction: a
    right answer that vanishes when the motion is removed. Clips are paired by ``instance``.

    Args:
        pred_unseen: int64 (N,) predictions on the unseen-scene clips, in ``unseen``'s order.
        unseen: their labels and instances.
        pred_static: int64 (N,) predictions on the static clips, in ``static``'s order.
        static: their instances (labels must agree with ``unseen``'s).

    Raises:
        ValueError: instances repeated within a set, or not the same in both sets.
    """
    u_inst, s_inst = unseen.instances.tolist(), static.instances.tolist()
    if len(set(u_inst)) != len(u_inst) or len(set(s_inst)) != len(s_inst) or set(u_inst) != set(s_inst):
        raise ValueError("contrasted_accuracy: test_unseen and test_static must hold each "
                         "foreground instance exactly once")
    where = {inst: i for i, inst in enumerate(s_inst)}
    order = torch.tensor([where[i] for i in u_inst], dtype=torch.int64)
    if not torch.equal(static.labels[order], unseen.labels):
        raise ValueError("contrasted_accuracy: an instance has different labels in test_unseen "
                         "and test_static")
    paired_static = pred_static[order]
    hit = (pred_unseen == unseen.labels) & (paired_static != pred_unseen)
    return float(hit.double().mean() * 100)


def retrieval_at1(queries: torch.Tensor, query: SetLabels,
                  gallery: torch.Tensor, gallery_labels: SetLabels) -> tuple[float, float]:
    """Nearest-neighbour retrieval: ``(R@1, scene@1)`` in percent.

    ``queries`` float (Q, D) and ``gallery`` float (G, D) are video features; each set is
    centred by its own mean and L2-normalised (:func:`dali_fame.eval.retrieval.center_and_normalize`),
    then every query takes its most cosine-similar gallery video. R@1: that video has the
    query's class; scene@1: it has the query's scene.
    """
    from dali_fame.eval.retrieval import center_and_normalize, nearest_neighbors, recall_at_k

    _, idx = nearest_neighbors(center_and_normalize(queries), center_and_normalize(gallery), k=1)
    r1 = recall_at_k(gallery_labels.labels[idx], query.labels, ks=(1,))["R@1"]
    scene1 = recall_at_k(gallery_labels.scenes[idx], query.scenes, ks=(1,))["R@1"]
    return r1, scene1


def metrics_from_features(features: Mapping[str, torch.Tensor], sets: Mapping[str, SetLabels], *,
                          num_classes: int, num_known_scenes: int,
                          inverse_regularisation: float = INVERSE_REGULARISATION) -> dict[str, float]:
    """Every metric of :data:`METRIC_KEYS` from per-video features.

    Args:
        features: set name -> float (N_set, D), rows in the order of ``sets[name]``.
        sets: set name -> :class:`SetLabels`, for every name of :data:`SETS`.
        num_classes: motion classes (the motion probes' outputs).
        num_known_scenes: the scene probe's outputs; ``train_balanced`` scenes must lie below it.
        inverse_regularisation: the probes' C (:func:`~dali_fame.bias.probe.fit_probe`); keep
            the default but for a sensitivity check.

    Returns:
        ``{key: percent}``. Three probes are fitted, each once (balanced motion, biased motion,
        balanced scene), and applied to every test set they score.
    """
    for name in SETS:
        if name not in features or name not in sets:
            raise ValueError(f"metrics_from_features: set {name!r} missing")
        if features[name].shape[0] != len(sets[name]):
            raise ValueError(f"metrics_from_features: {features[name].shape[0]} features but "
                             f"{len(sets[name])} videos in {name!r}")
    balanced, biased = sets["train_balanced"], sets["train_biased"]
    if int(balanced.scenes.max()) >= num_known_scenes or int(balanced.scenes.min()) < 0:
        raise ValueError(f"train_balanced holds scenes outside the {num_known_scenes} known ones")
    c = {"inverse_regularisation": inverse_regularisation}
    motion = fit_probe(features["train_balanced"], balanced.labels, num_classes=num_classes, **c)
    old = fit_probe(features["train_biased"], biased.labels, num_classes=num_classes, **c)
    scene = fit_probe(features["train_balanced"], balanced.scenes, num_classes=num_known_scenes, **c)

    pred = {name: motion.predict(features[name]) for name in TEST_SETS}
    swapped = sets["test_swapped"]
    out = {f"{name[len('test_'):]}_top1": top1(pred[name], sets[name].labels) for name in TEST_SETS}
    out["biased_probe_swapped_top1"] = top1(old.predict(features["test_swapped"]), swapped.labels)
    out["biased_probe_same_top1"] = top1(old.predict(features["test_same"]), sets["test_same"].labels)
    out["scene_decode_top1"] = top1(scene.predict(features["test_swapped"]), swapped.scenes)
    out["contrasted_acc"] = contrasted_accuracy(pred["test_unseen"], sets["test_unseen"],
                                                pred["test_static"], sets["test_static"])
    r1, scene1 = retrieval_at1(features["test_swapped"], swapped, features["train_balanced"], balanced)
    out["retrieval_r1"], out["retrieval_scene_at1"] = r1, scene1
    return {key: out[key] for key in METRIC_KEYS}


def _match_rate(query: torch.Tensor, gallery: torch.Tensor) -> float:
    """Percent chance that a uniformly drawn gallery entry equals a query's value, averaged
    over the queries: ``100 * sum_v p_query(v) * p_gallery(v)``."""
    values = torch.cat([query, gallery]).unique()
    pq = (query[:, None] == values).double().mean(dim=0)
    pg = (gallery[:, None] == values).double().mean(dim=0)
    return float((pq * pg).sum() * 100)


def chance(world) -> dict[str, float]:
    """The chance level of every metric of :data:`METRIC_KEYS` on ``world``, percent.

    Exact expectations for an encoder whose features carry nothing (a uniform guess over the
    classes, or a uniformly drawn gallery video): ``100 / C`` for the motion accuracies,
    ``100 / num_known_scenes`` for scene decoding, ``100 * (1/C) * (1 - 1/C)`` for contrasted
    accuracy (right on the unseen clip, another guess on the static one), and for retrieval
    the probability that a random ``train_balanced`` video shares the query's class / scene.
    A probe that puts all static clips in one class scores ``100 * (that class's share)`` on
    ``static_top1``: ``100 / C`` on the balanced test sets of a world.
    """
    tables = world if isinstance(world, WorldTables) else read_world(world)
    c = tables.num_classes
    swapped, gallery = tables.sets["test_swapped"], tables.sets["train_balanced"]
    out = {key: 100.0 / c for key in ("same_top1", "swapped_top1", "unseen_top1", "static_top1",
                                     "biased_probe_swapped_top1", "biased_probe_same_top1")}
    out["scene_decode_top1"] = 100.0 / tables.num_known_scenes
    out["contrasted_acc"] = 100.0 * (1.0 / c) * (1.0 - 1.0 / c)
    out["retrieval_r1"] = _match_rate(swapped.labels, gallery.labels)
    out["retrieval_scene_at1"] = _match_rate(swapped.scenes, gallery.scenes)
    return {key: out[key] for key in METRIC_KEYS}


# ----------------------------------------------------------------------------- the features


def extract_features(
    backbones: Sequence[nn.Module],
    records: list[VideoRecord],
    *,
    clip_len: int,
    stride: int,
    crop: int,
    num_clips: int,
    batch_size: int,
    workers: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """Video features of every backbone from one decoding pass: float32 (N, D_k) on the CPU each.

    The real CPU loader in eval mode (``num_clips`` uniform clips, short side -> ``crop``, centre
    crop) decodes each video once; every batch of clips goes through each backbone (float
    (B, 3, T, H, W) normalised -> (B, feature_dim)) in eval mode under ``torch.no_grad``. A
    video's feature is the mean of its clips' L2-normalised features, L2-normalised; row i is
    ``records[i]``. The backbones' train/eval modes are restored afterwards.

    Raises:
        ValueError: a backbone's output width is not its ``feature_dim``, or a video failed to
            decode (the loader would have put another video in its place; a benchmark must
            not), naming the files.
    """
    from dali_fame.data.cpu_loader import build_cpu_loader
    from dali_fame.eval.inference import multiclip_pass

    if not backbones:
        raise ValueError("extract_features: no backbone given")
    dims = [int(b.feature_dim) for b in backbones]
    bounds = torch.tensor([0] + dims).cumsum(0).tolist()

    def forward(x: torch.Tensor) -> torch.Tensor:
        # Each backbone's clip features are L2-normalised here, so that "mean" over the clips
        # below is multiclip_pass's "l2" reduction for every backbone's block at once.
        outs = []
        for backbone, dim in zip(backbones, dims):
            f = backbone(x)
            if f.ndim != 2 or f.shape[1] != dim:
                raise ValueError(f"{type(backbone).__name__} returned {tuple(f.shape)}; expected "
                                 f"(clips, feature_dim={dim})")
            outs.append(F.normalize(f.float(), dim=1))
        return torch.cat(outs, dim=1)

    loader = build_cpu_loader(records, batch_size=batch_size, crop=crop, clip_len=clip_len,
                              stride=stride, workers=workers, seed=seed, mode="eval",
                              eval_clips=num_clips, drop_last=False, flip=False, pin_memory=False)
    modes = [b.training for b in backbones]
    for b in backbones:
        b.eval()
    try:
        out = multiclip_pass(forward, loader, device=device, reduce="mean", progress=False)
    finally:
        for b, mode in zip(backbones, modes):
            b.train(mode)
    if loader.failures:
        bad = "; ".join(f"{f.path}: {f.reason}" for f in loader.failures[:5])
        raise ValueError(f"{len(loader.failures)} video(s) failed to decode: {bad}")
    index = out["index"].cpu()
    if not torch.equal(index.sort().values, torch.arange(len(records))):
        raise ValueError(f"the feature pass returned {index.numel()} rows for {len(records)} videos")
    features = torch.empty_like(out["outputs"].cpu())
    features[index] = out["outputs"].cpu()
    return [F.normalize(features[:, lo:hi], dim=1) for lo, hi in itertools.pairwise(bounds)]


def evaluate_encoders(
    backbones: Mapping[str, nn.Module],
    world,
    *,
    clip_len: int,
    stride: int,
    crop: int,
    num_clips: int,
    batch_size: int = 16,
    workers: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """All bias metrics of several encoders on ``world``, from one decoding pass.

    Decoding is most of the cost of a small encoder (tiny, 2 clips of 8 x 32 x 32: ~3.3 CPU ms of
    decoding per video against ~1.1 ms of forward; benchmarks/results/bias_eval.md: 4 encoders
    in one pass 2.9x faster than 4 calls), so a benchmark that scores many checkpoints passes
    them here together: the world is decoded once, memory stays one batch of clips. Same arguments as :func:`evaluate_encoder`; returns ``{name: metrics}``.
    """
    if not backbones:
        raise ValueError("evaluate_encoders: no backbone given")
    tables = read_world(world)
    indexed = index_world(tables, clip_len=clip_len, stride=stride)
    records = [rec for name in SETS for rec in indexed[name][0]]
    names = list(backbones)
    features = extract_features([backbones[n] for n in names], records, clip_len=clip_len,
                                stride=stride, crop=crop, num_clips=num_clips,
                                batch_size=batch_size, workers=workers, seed=seed, device=device)
    labels = {name: indexed[name][1] for name in SETS}
    results = {}
    for name, feats in zip(names, features):
        per_set, start = {}, 0
        for set_name in SETS:
            n = len(indexed[set_name][0])
            per_set[set_name] = feats[start:start + n]
            start += n
        results[name] = metrics_from_features(per_set, labels, num_classes=tables.num_classes,
                                              num_known_scenes=tables.num_known_scenes)
    return results


def evaluate_encoder(
    backbone: nn.Module,
    world,
    *,
    clip_len: int,
    stride: int,
    crop: int,
    num_clips: int,
    batch_size: int = 16,
    workers: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """All bias metrics of ``backbone`` on ``world`` (a directory or ``WorldInfo``), percent.

    Args:
        backbone: float (B, 3, T, H, W) normalised clips -> pooled features (B, feature_dim);
            it runs in eval mode and is left in the mode it came in.
        world: the world directory (``manifest.csv``, ``lists/``, ``meta.json``) or its WorldInfo.
        clip_len, stride, crop, num_clips: the eval clips (use the pretraining run's clip_len,
            stride and crop).
        batch_size: videos per loader batch (``batch_size * num_clips`` clips per forward).
        workers: decoding processes of the loader (0: in this process).
        seed: the loader's seed (eval clips and crops are deterministic: no effect today).
        device: where the backbone runs (move it there first: :func:`load_backbone` returns it
            on the CPU); features come back to the CPU for the probes.

    Returns:
        ``{key: percent}`` for :data:`METRIC_KEYS` (see the module docstring; chance levels
        from :func:`chance`). Several encoders: :func:`evaluate_encoders` (one decoding pass).
    """
    return evaluate_encoders({"encoder": backbone}, world, clip_len=clip_len, stride=stride,
                             crop=crop, num_clips=num_clips, batch_size=batch_size,
                             workers=workers, seed=seed, device=device)["encoder"]


# ------------------------------------------------------------------------------ the encoder


def load_backbone(checkpoint: str | os.PathLike | None, *, backbone: str,
                  seed: int | None = None, **model_kwargs) -> nn.Module:
    """The encoder to evaluate, in eval mode: ``backbone`` built with ``model_kwargs``.

    Args:
        checkpoint: a pretraining run's ``checkpoints/`` folder (or the run folder, or one
            ``step_XXXXXXXX`` folder: its newest checkpoint that verifies), a finetuning run's
            (its ``backbone.*`` weights; the classifier is ignored), a state-dict file, or None
            for a randomly initialised backbone.
        backbone: registry name (:func:`dali_fame.models.list_backbones`); must match the
            backbone the checkpoint was trained with when it records one.
        seed: for random init, draw the weights under ``torch.manual_seed(seed)``, leaving the
            global generator as it was (None: from the global generator as it stands). Safe
            from several threads at once (the seeded construction holds a lock).
        model_kwargs: the backbone's options (e.g. ``width`` of ``tiny``).

    Raises:
        ValueError (``WeightLoadError``, ``CheckpointError``): a damaged or missing checkpoint,
            another backbone, or any backbone key missing / unexpected (strict key accounting
            of :mod:`dali_fame.eval.weights`).
    """
    from dali_fame.eval.weights import (
        check_load,
        choose_backbone,
        load_pretrained,
        read_checkpoint_config,
        resolve_pretrained,
    )
    from dali_fame.models import build_backbone

    path = None if checkpoint is None else resolve_pretrained(checkpoint)
    choose_backbone(requested=backbone, checkpoint_config=read_checkpoint_config(path), fallback=backbone)
    if seed is None:
        model = build_backbone(backbone, **model_kwargs)
    else:
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_backbone(backbone, **model_kwargs)
    report = load_pretrained(model, path, prefix="")
    check_load(report)  # a bare backbone: nothing may be missing or unexpected
    logger.info("bias eval weights: %s", report.summary())
    return model.eval()

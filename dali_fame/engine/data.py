"""From a ``DataConfig`` to the loader the trainer iterates: dataset, index, decoder choice.

The built-in synthetic dataset is generated once (by the main process) into the cache
directory, so ``accelerate launch train/pretrain.py`` and the evaluation scripts run out of the
box on a fresh machine. Real datasets go through the validated index (cached; files bad at indexing
are reported and left out, never fatal; files that go bad later are replaced by the loaders,
see :mod:`dali_fame.data.ledger`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dali_fame.backends import select_loader
from dali_fame.config import DataConfig

logger = logging.getLogger(__name__)

#: parameters of the built-in dataset (the synth defaults: 8 classes x 16 videos, 64 frames)
SYNTHETIC_DEFAULTS = dict(num_classes=8, videos_per_class=16, num_frames=64, size=128, seed=0)


def default_cache_dir() -> Path:
    """``$DALI_FAME_CACHE`` or ``$XDG_CACHE_HOME/dali_fame`` (``~/.cache/dali_fame``)."""
    env = os.environ.get("DALI_FAME_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dali_fame"


def synthetic_root(data: DataConfig) -> Path:
    """Where the built-in synthetic dataset for this config lives (one folder per codec)."""
    base = Path(data.cache_dir) if data.cache_dir else default_cache_dir()
    return base / f"synthetic_{data.synthetic_codec}"


def ensure_synthetic(data: DataConfig, *, is_main: bool, wait) -> Path:
    """Generate the built-in dataset if missing or of an older format version (main process
    only; others wait). Returns its root."""
    from dali_fame.data.synthetic import generate_dataset, is_current

    root = synthetic_root(data)
    if is_main and not is_current(root):
        logger.info("generating the built-in synthetic dataset into %s (once)", root)
        generate_dataset(root, codec=data.synthetic_codec, overwrite=root.exists(), **SYNTHETIC_DEFAULTS)
    wait()
    return root


@dataclass
class SplitData:
    """The validated videos of one split and where they came from."""

    records: list
    class_names: list[str]
    root: Path
    format: str
    index: object  #: dali_fame.data.index.IndexResult (its report lists every excluded file)


def load_split(data: DataConfig, *, split: str, is_main: bool, wait, progress: bool = True) -> SplitData:
    """Index ``split`` of the configured dataset (synthetic: generated first).

    Only the main process reads the dataset (probing files, or its index cache); the others
    receive its result (``broadcast_object_list``; the identity in one process). So every rank
    holds the very same record list in the same order, and no rank probes the dataset again
    with one worker (hours on Kinetics-400) or misses a cache that lives on the main node's
    local disk. An indexing error on the main process reaches every rank as the same error.
    """
    from accelerate.utils import broadcast_object_list

    from dali_fame.data.index import build_index

    if data.format == "synthetic":
        out = ensure_synthetic(data, is_main=is_main, wait=wait)
        root, fmt, ann = out / "videos", "ucf101", out
    else:
        root, fmt, ann = Path(data.root), data.format, data.annotation_dir
    kwargs = dict(
        format=fmt, split=split, split_id=data.split_id, annotation_dir=ann,
        cache_dir=data.cache_dir and Path(data.cache_dir) / "index",
        clip_len=data.clip_len, stride=data.stride,
    )
    shared: list = [None, None]  # (IndexResult, error message) from the main process
    if is_main:
        try:
            result = build_index(root, workers=max(1, min(2, os.cpu_count() or 1)), progress=progress,
                                 **kwargs)
            for item in result.excluded:
                logger.warning("excluded %s: %s", item.path, item.reason)
            shared[0] = result
        except (OSError, ValueError) as err:  # e.g. no such folder, malformed annotations
            shared[1] = f"{type(err).__name__}: {err}"
    result, error = broadcast_object_list(shared)
    if error is not None:
        raise ValueError(error)
    if not result.records:
        raise ValueError(f"no valid videos in {root} ({fmt}, split {split}): see the index report above")
    return SplitData(list(result.records), list(result.class_names), Path(root), fmt, result)


def build_loader(
    records: list,
    data: DataConfig,
    *,
    batch_size: int,
    mode: str,
    seed: int,
    rank: int,
    world_size: int,
    local_rank: int,
    num_views: int = 2,
    eval_clips: int = 10,
    drop_last: bool = True,
):
    """The selected loader (``data.loader``: auto | cpu | dali) for this rank.

    Returns an iterable with ``__len__`` and ``set_epoch`` whose batches hold ``views`` uint8
    (B, V, T, crop, crop, 3), ``labels`` int64 (B,), ``index`` int64 (B,); ``B = batch_size``
    is the per-process batch.
    """
    choice = select_loader(data.loader)
    common = dict(
        batch_size=batch_size, crop=data.crop, num_views=num_views, clip_len=data.clip_len,
        stride=data.stride, seed=seed, rank=rank, world_size=world_size, mode=mode,
        eval_clips=eval_clips, drop_last=drop_last,
    )
    if choice.name == "dali":
        import torch

        from dali_fame.data.dali_pipeline import build_dali_loader

        device = "gpu" if torch.cuda.is_available() else "cpu"
        loader = build_dali_loader(records, local_rank=local_rank, device=device, num_threads=max(1, data.workers), **common)
    else:
        from dali_fame.data.cpu_loader import build_cpu_loader

        loader = build_cpu_loader(records, workers=data.workers, **common)
    logger.info("loader: %s (%s)", choice.name, choice.reason)
    return loader, choice

"""What the figures read: clips of a dataset through the real loader, encoders from checkpoints.

Both go through the same code as the evaluations: :func:`dali_fame.engine.data.load_split` and
:func:`~dali_fame.engine.data.build_loader` (the validated index, the CPU or DALI loader, the
evaluation clip: short side resized to ``data.crop`` and centre-cropped) and
:mod:`dali_fame.eval.weights` (every ``--pretrained`` the evaluations accept, strict key
accounting, errors naming the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dali_fame.config import DataConfig
from dali_fame.engine.data import build_loader, load_split
from dali_fame.eval.weights import (
    RANDOM_INIT,
    LoadReport,
    check_load,
    choose_backbone,
    find_pretrained,
    load_pretrained,
    read_checkpoint_config,
)
from dali_fame.models import build_backbone

__all__ = ["Clips", "Encoder", "load_clips", "load_encoder", "spread"]


@dataclass
class Clips:
    """One evaluation clip per video.

    Attributes:
        clips: uint8 (N, T, H, W, 3) RGB channels-last (T = data.clip_len, H = W = data.crop).
        records: the N :class:`~dali_fame.data.records.VideoRecord` they come from, in order.
        class_names: class names of the split (``record.label`` indexes them).
    """

    clips: torch.Tensor
    records: list
    class_names: list[str]


@dataclass
class Encoder:
    """A backbone in eval mode with where its weights came from."""

    name: str  #: the label the figure shows (``NAME=`` or the path)
    backbone_name: str  #: registry name (dali_fame.models)
    model: nn.Module
    report: LoadReport


def spread(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``0 .. total - 1`` (all of them when fewer): picks
    videos from several classes of a class-ordered split instead of the first class only."""
    if count < 1:
        raise ValueError(f"--clips must be >= 1, got {count}")
    if count >= total:
        return list(range(total))
    return [i * total // count for i in range(count)]


def load_clips(data: DataConfig, *, split: str, count: int, seed: int) -> Clips:
    """The centred evaluation clip of ``count`` videos of ``split``, spread over the split.

    Raises ValueError (naming the dataset / split) when the data cannot be indexed or holds no
    valid video.
    """
    result = load_split(data, split=split, is_main=True, wait=lambda: None, progress=False)
    chosen = [result.records[i] for i in spread(len(result.records), count)]
    loader, _ = build_loader(chosen, data, batch_size=len(chosen), mode="eval", eval_clips=1,
                             drop_last=False, seed=seed, rank=0, world_size=1, local_rank=0)
    views, index = [], []
    for batch in loader:
        views.append(batch["views"][:, 0])  # (B, T, H, W, 3): the single centred eval clip
        index.append(batch["index"])
    order = torch.cat(index).tolist()
    return Clips(clips=torch.cat(views).contiguous(), records=[chosen[i] for i in order],
                 class_names=list(result.class_names))


def load_encoder(source: str | None, *, backbone: str | None, fallback: str,
                 name: str | None = None, seed: int = 0) -> Encoder:
    """A backbone with the weights of ``source``, in eval mode on the CPU.

    Args:
        source: anything ``--pretrained`` of the evaluations accepts (checkpoint folder, a run's
            ``checkpoints/``, a state-dict file), or None / "none" / "random" for random init.
        backbone: registry name; None takes the checkpoint's (its stored config), else ``fallback``.
        fallback: backbone of a random init or of a file without a stored config.
        name: the label; default the source.
        seed: the random initialisation's seed (drawn in a forked RNG: the caller's is untouched).

    Raises:
        ValueError: a missing path, a damaged checkpoint, a backbone that contradicts the
            checkpoint's, or keys that do not fit (WeightLoadError, naming the file).
    """
    ckpt: Path | None = None
    if source is not None and source.lower() not in RANDOM_INIT:
        ckpt, _notes = find_pretrained(source)
    config = read_checkpoint_config(ckpt) if ckpt is not None and ckpt.is_dir() else None
    backbone_name = choose_backbone(requested=backbone, checkpoint_config=config, fallback=fallback)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(backbone_name)
    report = load_pretrained(model, ckpt, prefix="")
    check_load(report, allowed_missing=())  # an encoder figure must show the checkpoint's weights
    return Encoder(name=name or (str(source) if ckpt is not None else "random init"),
                   backbone_name=backbone_name, model=model.eval(), report=report)

"""Backbone registry.

Every backbone maps a normalised clip batch float (B, 3, T, H, W) to pooled features
float (B, feature_dim) and has two integer attributes, ``feature_dim`` and
``classifier_input_dim`` (equal: dropout and the linear head belong to the evaluation scripts).

    >>> from dali_fame.models import build_backbone, list_backbones
    >>> list_backbones()
    ['i3d', 'i3d_sonnet', 'r2plus1d_18', 'r3d_18', 'tiny']
    >>> build_backbone("tiny", width=32).feature_dim
    32

| name          | features | params (no head) | paper input      |
|---------------|----------|------------------|------------------|
| r2plus1d_18   | 512      | 31,300,125       | 16 x 112 x 112   |
| r3d_18        | 512      | 33,166,272       | 16 x 112 x 112   |
| i3d           | 1024     | 12,287,264       | 16 x 224 x 224   |
| i3d_sonnet    | 1024     | 12,287,264       | as i3d; BatchNorm eps 1e-3, momentum 0.01 |
| tiny          | width=64 | ~0.18 M          | any (tests, CPU) |
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dali_fame.models.i3d import I3D, i3d, i3d_sonnet
from dali_fame.models.r2plus1d import VideoResNetBackbone, r2plus1d_18, r3d_18
from dali_fame.models.tiny import TinyCNN3D, tiny

__all__ = [
    "I3D",
    "TinyCNN3D",
    "VideoResNetBackbone",
    "build_backbone",
    "list_backbones",
]

# Read-only after import (no runtime registration: no global mutable state).
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "r2plus1d_18": r2plus1d_18,
    "r3d_18": r3d_18,
    "i3d": i3d,
    "i3d_sonnet": i3d_sonnet,
    "tiny": tiny,
}


def list_backbones() -> list[str]:
    """Sorted names accepted by :func:`build_backbone`."""
    return sorted(_REGISTRY)


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build backbone ``name`` with keyword options (e.g. ``tiny``: width=...).

    Raises ValueError for an unknown name (listing the known ones) (TypeError for a missing ``feature_dim``).
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r} (model.backbone); choose one of {list_backbones()}"
        ) from None
    model = factory(**kwargs)
    if not isinstance(getattr(model, "feature_dim", None), int):
        raise TypeError(f"backbone {name!r} does not set an integer feature_dim")
    return model

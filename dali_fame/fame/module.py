"""FAME and BE as modules applied to a batch of two MoCo views, as the trainer calls them.

Order in the pipeline (spec section 2): decode -> random resized crop + flip -> FAME / BE (here,
uint8) -> basic augmentations -> normalisation. Randomness comes only from the ``generator``
passed to ``forward``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dali_fame.fame.api import fame_mask, fame_merge, random_permutation
from dali_fame.fame.be import background_erasing_apply, be_params
from dali_fame.fame.dispatch import BACKENDS
from dali_fame.fame.variants import VARIANTS, check_grid_beta

__all__ = ["FAME", "BEOutput", "BackgroundErasing", "FAMEOutput"]

BACKGROUNDS = ("inter", "intra")


def _check_host_generator(generator: torch.Generator | None, module: str) -> None:
    """The modules draw on the host: a generator on a GPU would make each draw a device read."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"dali_fame.fame.{module}: the generator must be a CPU torch.Generator (the random "
            f"draws are made on the host), got one on {generator.device}"
        )


class FAMEOutput(NamedTuple):
    """Result of :class:`FAME` (masks and permutations are None for a view left unchanged)."""

    view0: torch.Tensor  #: uint8 (B, T, H, W, 3)
    view1: torch.Tensor  #: uint8 (B, T, H, W, 3)
    mask0: torch.Tensor | None  #: bool (B, H, W)
    mask1: torch.Tensor | None  #: bool (B, H, W)
    perm0: torch.Tensor | None  #: int64 (B,) on the CPU, the background source of each clip
    perm1: torch.Tensor | None  #: int64 (B,) on the CPU


class FAME(nn.Module):
    """Foreground-background merging of MoCo views (spec sections 1-3).

    Args:
        beta: foreground fraction (exactly int(beta * H * W) pixels); 1 disables FAME.
        variant: "fame", "seed", "gauss" or "grid".
        both: apply FAME to both views with independent permutations (paper Table 1) instead of
            view 0 only.
        background: "inter" (another clip of the batch, default) or "intra" (the third clip of
            the same video that ``forward`` then receives as ``intra``).
        legacy_hue: the released code's hue bins (compatibility).
        derangement: no clip gets its own background (default); False: any permutation
            (released code). Only used with ``background="inter"``.
        fg_fraction, bg_fraction: seed set sizes (spec step 5).
        backend: "auto", "torch" or "cuda".
    """

    def __init__(
        self,
        beta: float = 0.5,
        variant: str = "fame",
        both: bool = False,
        background: str = "inter",
        legacy_hue: bool = False,
        derangement: bool = True,
        fg_fraction: float = 0.5,
        bg_fraction: float = 0.1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"dali_fame.fame.FAME: beta must be in [0, 1], got {beta}")
        check_grid_beta(variant, beta)
        if variant not in VARIANTS:
            raise ValueError(
                f"dali_fame.fame.FAME: variant must be one of {VARIANTS}, got {variant!r}"
            )
        if background not in BACKGROUNDS:
            raise ValueError(
                f"dali_fame.fame.FAME: background must be one of {BACKGROUNDS}, got {background!r}"
            )
        if backend not in BACKENDS:
            raise ValueError(
                f"dali_fame.fame.FAME: backend must be one of {BACKENDS}, got {backend!r}"
            )
        self.beta = beta
        self.variant = variant
        self.both = both
        self.background = background
        self.legacy_hue = legacy_hue
        self.derangement = derangement
        self.fg_fraction = fg_fraction
        self.bg_fraction = bg_fraction
        self.backend = backend

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, variant={self.variant!r}, both={self.both}, "
            f"background={self.background!r}, legacy_hue={self.legacy_hue}, "
            f"derangement={self.derangement}"
        )

    def _permutations(self, batch: int, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Every random draw of a step, made on the host in one place: the background source of
        each clip, one int64 (B,) CPU tensor per augmented view (view 0, then view 1 if
        ``both``). Intra-video backgrounds use the identity (clip b's own third clip).

        :func:`~dali_fame.fame.api.fame_merge` checks a CPU permutation on the host and sends it
        with one pinned non-blocking copy, so nothing here waits for the GPU.
        """
        _check_host_generator(generator, "FAME")
        views = 2 if self.both else 1
        if self.background == "intra":
            return [torch.arange(batch) for _ in range(views)]
        return [
            random_permutation(batch, generator=generator, derangement=self.derangement)
            for _ in range(views)
        ]

    def _augment_view(
        self, view: torch.Tensor, perm: torch.Tensor, intra: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = fame_mask(
            view,
            beta=self.beta,
            variant=self.variant,
            legacy_hue=self.legacy_hue,
            fg_fraction=self.fg_fraction,
            bg_fraction=self.bg_fraction,
            backend=self.backend,
        )
        merged = fame_merge(view, mask, perm, background=intra, backend=self.backend)
        return merged, mask

    def forward(
        self,
        view0: torch.Tensor,
        view1: torch.Tensor,
        *,
        generator: torch.Generator | None,
        intra: torch.Tensor | None = None,
    ) -> FAMEOutput:
        """Augment the views.

        Args:
            view0, view1: uint8 (B, T, H, W, 3) RGB channels-last, the two MoCo views.
            generator: CPU source of the permutations (None: torch's global generator).
            intra: uint8 (B, T, H, W, 3), a third clip of each video, required when
                ``background="intra"`` (ignored otherwise: an error if given).

        Returns:
            :class:`FAMEOutput` (permutations as int64 CPU tensors); view1 is returned as is
            unless ``both``.
        """
        if self.background == "intra" and intra is None:
            raise ValueError("dali_fame.fame.FAME: background='intra' needs the intra clip")
        if self.background == "inter" and intra is not None:
            raise ValueError("dali_fame.fame.FAME: an intra clip was given but background='inter'")
        if view0.shape != view1.shape:
            raise ValueError(
                f"dali_fame.fame.FAME: views differ in shape {tuple(view0.shape)} vs "
                f"{tuple(view1.shape)}"
            )
        perms = self._permutations(view0.shape[0], generator)
        out0, mask0 = self._augment_view(view0, perms[0], intra)
        if not self.both:
            return FAMEOutput(out0, view1, mask0, None, perms[0], None)
        out1, mask1 = self._augment_view(view1, perms[1], intra)
        return FAMEOutput(out0, out1, mask0, mask1, perms[0], perms[1])


class BEOutput(NamedTuple):
    """Result of :class:`BackgroundErasing` (parameters are None for a view left unchanged)."""

    view0: torch.Tensor  #: (B, T, H, W, 3), the dtype of the input
    view1: torch.Tensor
    lam0: torch.Tensor | None  #: float32 (B,)
    lam1: torch.Tensor | None
    frame0: torch.Tensor | None  #: int64 (B,)
    frame1: torch.Tensor | None


class BackgroundErasing(nn.Module):
    """BE applied to MoCo views (spec section 4), the counterpart of :class:`FAME`.

    Args:
        gamma: lam ~ U(0, gamma).
        per_clip: one lam per clip (default) or per batch (released code).
        both: apply to both views instead of view 0 only.
    """

    def __init__(self, gamma: float = 0.3, per_clip: bool = True, both: bool = False) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(
                f"dali_fame.fame.BackgroundErasing: gamma must be in [0, 1], got {gamma}"
            )
        self.gamma = gamma
        self.per_clip = per_clip
        self.both = both

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, per_clip={self.per_clip}, both={self.both}"

    def forward(
        self, view0: torch.Tensor, view1: torch.Tensor, *, generator: torch.Generator | None
    ) -> BEOutput:
        """Augment the views (uint8 (B, T, H, W, 3) each); see :class:`BEOutput`.

        Every random draw (lam and the frame of each augmented view, view 0's first) is made
        on the host in one place, from a CPU ``generator`` (None: torch's global one), so
        applying them never reads the GPU.
        """
        _check_host_generator(generator, "BackgroundErasing")
        params = [
            be_params(view.shape[0], view.shape[1], gamma=self.gamma, generator=generator,
                      per_clip=self.per_clip)
            for view in ((view0, view1) if self.both else (view0,))
        ]
        (lam0, frame0), (lam1, frame1) = params[0], params[-1]
        out0 = background_erasing_apply(view0, lam0, frame0)
        if not self.both:
            return BEOutput(out0, view1, lam0, None, frame0, None)
        out1 = background_erasing_apply(view1, lam1, frame1)
        return BEOutput(out0, out1, lam0, lam1, frame0, frame1)

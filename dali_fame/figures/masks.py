"""FAME masks and merged clips over frames (the kind of the paper's Figure 6).

One PNG per clip: columns are frames of the clip, rows are

1. the clip;
2. the frame difference sum_c |X[t] - X[t-1]| / 3 (the terms the motion map D averages; frame 0
   shows the difference to frame 1);
3. the seed S = minmax(blur(D)) over each frame (spec step 2);
4. the score the variant binarises: the soft mask M (``fame``, step 7), S (``seed``), the centred
   Gaussian (``gauss``) or the cell rank (``grid``);
5. the binary mask (the library's :func:`dali_fame.fame.fame_mask`): the foreground kept, the
   background dimmed;
6. the background clip X[perm[b]] (another clip of the same batch, a seeded derangement);
7. the merged clip (:func:`dali_fame.fame.fame_merge`): what MoCo sees.

The maps of rows 3-5 are one per clip (constant over time, spec section 1): drawn over every
frame they show which part of the scene the moving object crosses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dali_fame.fame import fame_mask, fame_merge, random_permutation
from dali_fame.fame import ops as fame_ops
from dali_fame.fame.api import as_uint8
from dali_fame.fame.reference import color_histograms_ref, motion_and_bins_ref
from dali_fame.fame.variants import GRID_CELLS, VARIANTS, check_grid_beta, gauss_score, grid_score
from dali_fame.figures.plot import frame_grid, label_axis, overlay, pick_frames, safe_name, save_png

__all__ = ["FameMaps", "fame_maps", "masks_figure"]

_SCORE_LABEL = {"fame": "soft mask M", "seed": "score: seed S", "gauss": "score: Gaussian",
                "grid": "score: cell rank"}


@dataclass
class FameMaps:
    """Every intermediate of FAME on a batch (torch reference, CPU).

    Attributes:
        diff: float32 (B, T, H, W) in [0, 1]: sum_c |X[t] - X[t-1]| / (3 * 255), frame 0 = frame 1's.
        seed: float32 (B, H, W), S = minmax(blur(D)).
        score: float32 (B, H, W) in [0, 1], the map the variant binarises (grid: rank / 16).
        mask: bool (B, H, W), :func:`~dali_fame.fame.fame_mask` (int(beta * H * W) ones; grid: 8 cells).
        perm: int64 (B,), the derangement that picks each clip's background.
        background: uint8 (B, T, H, W, 3), ``clips[perm]``.
        merged: uint8 (B, T, H, W, 3), :func:`~dali_fame.fame.fame_merge`.
    """

    diff: torch.Tensor
    seed: torch.Tensor
    score: torch.Tensor
    mask: torch.Tensor
    perm: torch.Tensor
    background: torch.Tensor
    merged: torch.Tensor


def fame_maps(clips: torch.Tensor, *, beta: float = 0.5, variant: str = "fame",
              legacy_hue: bool = False, seed: int = 0) -> FameMaps:
    """FAME's intermediates on ``clips`` for display.

    The mask and the merge are the library's (``fame_mask`` / ``fame_merge``, backend "torch");
    the seed and the score are recomputed here from the same reference ops in the same order,
    so that ``select_top(score, int(beta * H * W))`` is exactly that mask (the tests check it).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, B >= 2 (the backgrounds come from the
            other clips), T >= 2.
        beta, variant, legacy_hue: as :func:`~dali_fame.fame.fame_mask`.
        seed: seed of the background permutation.
    """
    if variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {VARIANTS}, got {variant!r}")
    check_grid_beta(variant, beta)
    x = as_uint8(clips).cpu()
    bsz, _, h, w, _ = x.shape
    if bsz < 2:
        raise ValueError(f"FAME takes each background from another clip of the batch: give at "
                         f"least 2 clips (--clips), got {bsz}")
    step = (x[:, 1:].int() - x[:, :-1].int()).abs().sum(dim=-1).float() / (3 * 255.0)
    diff = torch.cat([step[:, :1], step], dim=1)  # (B, T, H, W)
    motion, bins = motion_and_bins_ref(x, legacy_hue=legacy_hue)
    seed_map = fame_ops.minmax(fame_ops.gaussian_blur(motion))
    if variant == "fame":
        k_fg, k_bg = int(0.5 * h * w), int(0.1 * h * w)  # the library's default seed fractions
        thr_fg, thr_bg = fame_ops.seed_thresholds(seed_map, k_fg=k_fg, k_bg=k_bg)
        counts = color_histograms_ref(bins, seed_map, thr_fg, thr_bg)
        p_fg, p_bg = fame_ops.likelihoods(counts, k_fg=k_fg, k_bg=k_bg)
        score = fame_ops.minmax(fame_ops.gaussian_blur(fame_ops.soft_mask(bins, p_fg, p_bg)))
    elif variant == "seed":
        score = seed_map
    elif variant == "gauss":
        score = gauss_score(bsz, h, w, device="cpu")
    else:
        score = grid_score(seed_map).float() / float(GRID_CELLS * GRID_CELLS)
    mask = fame_mask(x, beta=beta, variant=variant, legacy_hue=legacy_hue, backend="torch")
    perm = random_permutation(bsz, generator=torch.Generator().manual_seed(seed))
    merged = fame_merge(x, mask, perm, backend="torch")
    return FameMaps(diff=diff, seed=seed_map, score=score, mask=mask, perm=perm,
                    background=x[perm], merged=merged)


def masks_figure(clips: torch.Tensor, names: list[str], *, out_dir: str | Path, beta: float = 0.5,
                 variant: str = "fame", legacy_hue: bool = False, frames: int = 8,
                 seed: int = 0) -> list[Path]:
    """Write ``masks_<name>.png`` for each clip (rows as in the module docstring).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, B >= 2.
        names: B labels (video ids); they name the files and the panels.
        out_dir: folder for the PNGs.
        beta, variant, legacy_hue, seed: as :func:`fame_maps`.
        frames: columns per figure (frames spread over the clip).

    Returns:
        the paths written, in clip order.
    """
    if len(names) != clips.shape[0]:
        raise ValueError(f"masks_figure: {clips.shape[0]} clips but {len(names)} names")
    maps = fame_maps(clips, beta=beta, variant=variant, legacy_hue=legacy_hue, seed=seed)
    x = as_uint8(clips).cpu().numpy()
    _, t, h, w, _ = x.shape
    cols = pick_frames(t, frames)
    num_fg = int(maps.mask[0].sum())
    rows = ["clip", "|x_t - x_t-1|", "seed S", _SCORE_LABEL[variant],
            f"binary mask\n({num_fg} of {h * w} px)", "background", "merged"]
    paths = []
    for b, name in enumerate(names):
        src = int(maps.perm[b])
        diff = maps.diff[b].numpy()
        diff = diff / max(float(diff.max()), 1e-8)  # the clip's own scale: motion is often faint
        seed_map, score = maps.seed[b].numpy(), maps.score[b].numpy()
        keep = maps.mask[b].numpy()[..., None]
        title = (f"FAME {variant}, beta {beta}{', legacy hue' if legacy_hue else ''}: {name} "
                 f"(background from {names[src]})")
        fig, axes = frame_grid(len(rows), len(cols), title=title)
        for j, f in enumerate(cols):
            frame = x[b, f]
            dimmed = np.where(keep, frame, (frame * 0.25).astype(np.uint8))
            panels = [frame, overlay(frame, diff[f], alpha=0.7), overlay(frame, seed_map),
                      overlay(frame, score), dimmed, maps.background[b, f].numpy(),
                      maps.merged[b, f].numpy()]
            for i, img in enumerate(panels):
                axes[i, j].imshow(img, interpolation="nearest")
            label_axis(axes[0, j], f"frame {f}", row=False)
        for i, text in enumerate(rows):
            label_axis(axes[i, 0], text, row=True)
        paths.append(save_png(fig, Path(out_dir) / f"masks_{safe_name(name)}.png"))
    return paths

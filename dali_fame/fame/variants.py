"""Score maps of the FAME mask variants (spec section 3; paper Table 3).

The ``fame``, ``seed`` and ``gauss`` variants produce a float32 (B, H, W) score that the same
exact top-k rule (:func:`dali_fame.fame.ops.select_top`, int(beta*H*W) pixels, ties to the lower
row-major index) turns into the binary mask, so they have the exact foreground count. The
``grid`` variant is defined by cells, not by a fraction (spec section 3): the 8 of its 4 x 4
cells with the largest sums of S are foreground (:func:`grid_mask`; beta does not apply, and
the callers insist on beta = 0.5, where the two readings agree for H, W divisible by 4).

* ``"fame"``: the soft colour mask M (the full method, default);
* ``"seed"``: the seed S = minmax(blur(D)) itself;
* ``"gauss"``: a centred 2-D Gaussian (content-independent);
* ``"grid"``: the 8 best cells of a 4 x 4 grid ranked by the sum of S per cell.
"""

from __future__ import annotations

import torch

__all__ = [
    "GRID_CELLS",
    "GRID_FG_CELLS",
    "VARIANTS",
    "check_grid_beta",
    "gauss_score",
    "grid_mask",
    "grid_score",
]

VARIANTS = ("fame", "seed", "gauss", "grid")
#: the grid variant splits each frame into GRID_CELLS x GRID_CELLS cells
GRID_CELLS = 4
#: ... and takes this many of its GRID_CELLS ** 2 cells as foreground
GRID_FG_CELLS = 8


def check_grid_beta(variant: str, beta: float) -> None:
    """The grid variant takes 8 of 16 cells, not a fraction: refuse any beta but 0.5 rather
    than silently ignore it (raises ValueError naming the setting)."""
    if variant == "grid" and beta != 0.5:
        raise ValueError(
            f"dali_fame.fame: variant 'grid' takes the {GRID_FG_CELLS} best of "
            f"{GRID_CELLS * GRID_CELLS} cells (spec section 3), so beta does not apply; "
            f"leave beta (debias.beta) at 0.5, got {beta}"
        )


_GAUSS: dict[tuple[int, int, str], torch.Tensor] = {}


def gauss_score(batch: int, height: int, width: int, *, device: torch.device | str) -> torch.Tensor:
    """Centred Gaussian map, sigma = size / 4 along each axis.

    Only the ordering matters after top-k: the mask is the int(beta*H*W) pixels nearest the
    centre in the (H, W)-scaled metric, i.e. a centred disc (an ellipse when H != W); the
    symmetric ties are broken by row-major index. The (H, W) map is built on the host once per
    size and device (a host-to-device copy per call would wait for the GPU).

    Returns:
        float32 (B, H, W) contiguous, the same map for every clip.
    """
    key = (height, width, str(torch.device(device)))
    g = _GAUSS.get(key)
    if g is None:
        y = (torch.arange(height, dtype=torch.float64) - (height - 1) / 2) / (height / 4)
        x = (torch.arange(width, dtype=torch.float64) - (width - 1) / 2) / (width / 4)
        g = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).float().to(device)
        _GAUSS[key] = g
    return g.expand(batch, height, width).contiguous()  # a device-side copy: callers may write


def grid_score(seed: torch.Tensor) -> torch.Tensor:
    """Per-pixel score of the grid variant: the rank of its cell by the sum of S in the cell.

    Rows h belong to cell row (h * 4) // H, columns likewise, so unequal cells differ by at most
    one row / column. Cells are ranked by their sum of S, ties to the lower cell index (row-major);
    the pixel score is 16 - rank (:func:`grid_mask` keeps the pixels of the 8 best cells).

    Args:
        seed: float32 (B, H, W), the seed S.

    Returns:
        float32 (B, H, W).
    """
    bsz, h, w = seed.shape
    n_cells = GRID_CELLS * GRID_CELLS
    rows = torch.arange(h, device=seed.device) * GRID_CELLS // h
    cols = torch.arange(w, device=seed.device) * GRID_CELLS // w
    cell = (rows[:, None] * GRID_CELLS + cols[None, :]).reshape(-1)  # (H*W,)
    # Cell sums as plain reductions over slices (deterministic, unlike an atomic index_add_ on
    # CUDA); cell row r spans rows ceil(r H / 4) .. ceil((r + 1) H / 4) - 1.
    y_edges = [-(-r * h // GRID_CELLS) for r in range(GRID_CELLS + 1)]
    x_edges = [-(-c * w // GRID_CELLS) for c in range(GRID_CELLS + 1)]
    sums = torch.stack(
        [
            seed[:, y_edges[r] : y_edges[r + 1], x_edges[c] : x_edges[c + 1]].sum(
                dim=(1, 2), dtype=torch.float64
            )
            for r in range(GRID_CELLS)
            for c in range(GRID_CELLS)
        ],
        dim=1,
    )  # (B, 16), row-major cell order
    order = torch.sort(sums, dim=1, descending=True, stable=True).indices  # best cell first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_cells, device=seed.device).expand(bsz, n_cells))
    cell_score = (n_cells - rank).float()
    return cell_score[:, cell].view(bsz, h, w)


def grid_mask(seed: torch.Tensor) -> torch.Tensor:
    """The grid variant's mask: every pixel of the :data:`GRID_FG_CELLS` cells with the largest
    sums of S (whole cells, whatever H and W; ties to the lower cell index).

    Args:
        seed: float32 (B, H, W), the seed S.

    Returns:
        bool (B, H, W).
    """
    return grid_score(seed) > GRID_CELLS * GRID_CELLS - GRID_FG_CELLS

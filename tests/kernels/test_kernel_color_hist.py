"""kernels/color_hist.cu, compiled as host C++, against color_histograms_ref (integer-exact)."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import ODD_SIZES, seed_inputs

from dali_fame.fame.reference import color_histograms_ref

HIST_SIZES = sorted({(b, h, w) for b, _, h, w in ODD_SIZES})


@pytest.mark.parametrize("size", HIST_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_color_hist_matches_reference(emu, size):
    b, h, w = size
    bins, seed, thr_fg, thr_bg = seed_inputs(b, h, w, seed=h * w + b)
    hist = emu.color_histograms(bins, seed, thr_fg, thr_bg)
    ref = color_histograms_ref(bins, seed, thr_fg, thr_bg)
    assert hist.dtype == torch.int32 and hist.shape == (b, 4, 1000)
    assert torch.equal(hist, ref)
    # ties exist at both thresholds (rows 1 and 3); with 113 x 127 pixels all rows are used
    rows = hist.sum(dim=2)
    assert (rows[:, [0, 1, 3]] > 0).all()
    assert h * w < 1000 or (rows > 0).all()
    # the strict and tied foreground counts bracket kF = int(0.5 H W)
    k_fg = int(0.5 * h * w)
    strict, tied = hist[:, 0].sum(1), hist[:, 1].sum(1)
    assert (strict < k_fg).all() and (strict + tied >= k_fg).all()


@pytest.mark.parametrize(
    "size,max_blocks_per_clip,pixels_per_block",
    [((3, 7, 57), 1, 4096), ((3, 7, 9), 3, 16), ((2, 113, 127), 64, 1024)],
    ids=["one_block", "idle_blocks", "many_blocks"],
)
def test_color_hist_grid_shapes(emu, size, max_blocks_per_clip, pixels_per_block):
    # one block per clip; blocks without pixels (63 pixels, 3 blocks of 256 threads); 15 blocks
    # per clip, each zeroing, filling and flushing its own shared histogram into the same bins
    b, h, w = size
    bins, seed, thr_fg, thr_bg = seed_inputs(b, h, w, seed=11)
    hist = emu.color_histograms(
        bins,
        seed,
        thr_fg,
        thr_bg,
        max_blocks_per_clip=max_blocks_per_clip,
        pixels_per_block=pixels_per_block,
    )
    assert torch.equal(hist, color_histograms_ref(bins, seed, thr_fg, thr_bg))


def test_color_hist_single_hot_bin_under_contention(emu):
    # every pixel in one bin: all threads of all blocks hit the same shared and global counter
    b, h, w = 2, 113, 127
    bins = torch.full((b, h, w), 999, dtype=torch.int32)
    seed = torch.rand(b, h, w, generator=torch.Generator().manual_seed(5))
    thr_fg = seed.view(b, -1).median(dim=1).values.contiguous()
    thr_bg = seed.view(b, -1).quantile(0.1, dim=1).contiguous()
    hist = emu.color_histograms(bins, seed, thr_fg, thr_bg, max_blocks_per_clip=4)
    assert torch.equal(hist, color_histograms_ref(bins, seed, thr_fg, thr_bg))
    assert hist[:, 0, 999].sum() + hist[:, 1, 999].sum() == (seed >= thr_fg[:, None, None]).sum()


def test_color_hist_infinite_thresholds_and_nan_seeds(emu):
    # kF = 0 / kB = 0 give +inf / -inf thresholds: nothing is counted; NaN seeds count nowhere
    b, h, w = 3, 7, 9
    bins, seed, _, _ = seed_inputs(b, h, w, seed=2)
    seed = seed.clone()
    seed[1, 2, 3] = float("nan")
    inf = torch.full((b,), float("inf"))
    hist = emu.color_histograms(bins, seed, inf, -inf)
    assert torch.equal(hist, color_histograms_ref(bins, seed, inf, -inf))
    assert hist.sum() == 0
    thr = torch.zeros(b)  # every finite seed is >= 0: row 0 + row 1 count all but the NaN
    hist = emu.color_histograms(bins, seed, thr, thr)
    assert torch.equal(hist, color_histograms_ref(bins, seed, thr, thr))
    assert hist[:, :2].sum() == b * h * w - 1

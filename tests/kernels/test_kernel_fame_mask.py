"""The fused CUDA FAME mask (kernels/motion_bins.cu + fame_mask.cu, dali_fame.fame.cuda.run_fame_mask)
compiled as host C++, against the torch reference, stage by stage.

Every intermediate is compared bit for bit: the kernels perform the reference's float32
operations in the reference's order (kernels/fame_mask.cu header), so the masks are identical,
not merely close. Measured agreement on realistic clips (moving textured squares with sensor
noise, tests/fame/fame_clips.py) at 112 x 112 and 224 x 224: 0 differing mask pixels (asserted
below; kernels/README.md quotes it). The launches of the whole path are counted through the
emulated runner and held to <= 10 per batch call, independent of B.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from kernel_inputs import ODD_SIZES, VEC_SIZES, tricky_clips

from dali_fame.fame import cuda as fcuda
from dali_fame.fame import fame_mask, ops
from dali_fame.fame.reference import color_histograms_ref, motion_and_bins_ref

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fame"))
from fame_clips import moving_square_clips

FAME_KERNELS = [
    "fame_blur_rows",
    "fame_blur_cols_minmax",
    "fame_seed_hist_soft",
    "fame_blur_rows",
    "fame_blur_cols_minmax",
    "fame_select_top",
]


def _reference_stages(clips, *, beta=0.5, legacy_hue=False, fg_fraction=0.5, bg_fraction=0.1):
    """Every intermediate of fame_mask(backend="torch"), from the same shared torch ops."""
    _, _, h, w, _ = clips.shape
    motion, bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
    seed = ops.minmax(ops.gaussian_blur(motion))
    k_fg, k_bg = int(fg_fraction * h * w), int(bg_fraction * h * w)
    thr_fg, thr_bg = ops.seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)
    counts = color_histograms_ref(bins, seed, thr_fg, thr_bg)
    soft = ops.soft_mask(bins, *ops.likelihoods(counts, k_fg=k_fg, k_bg=k_bg))
    score = ops.minmax(ops.gaussian_blur(soft))
    mask = ops.select_top(score, int(beta * h * w))
    return {
        "motion": motion,
        "bins": bins,
        "seed": seed,
        "thresholds": torch.stack([thr_fg, thr_bg], dim=1),
        "counts": counts,
        "soft": soft,
        "score": score,
        "mask": mask,
    }


def _assert_stages_equal(result, ref):
    for name, expected in ref.items():
        got = getattr(result, name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        diff = int((got != expected).sum())
        assert diff == 0, f"{name}: {diff} of {expected.numel()} values differ"


@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
@pytest.mark.parametrize("size", ODD_SIZES + VEC_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_fused_mask_equals_reference_stage_by_stage(emu_runner, size, legacy_hue):
    b, t, h, w = size
    clips = tricky_clips(b, t, h, w, seed=sum(size) + legacy_hue)
    result = fcuda.run_fame_mask(clips, runner=emu_runner, legacy_hue=legacy_hue)
    ref = _reference_stages(clips, legacy_hue=legacy_hue)
    _assert_stages_equal(result, ref)
    assert torch.equal(result.mask, fame_mask(clips, legacy_hue=legacy_hue, backend="torch"))
    assert (result.mask.view(b, -1).sum(1) == int(0.5 * h * w)).all()
    # ties at both seed thresholds (static and grey pixels): the fractional weights are used
    assert (result.counts[:, 1].sum(1) > 0).all()
    # one launch sequence for the whole batch, whatever B
    names = [name for name, _ in emu_runner.launched]
    vec4 = (h * w) % 4 == 0
    assert names == ["fame_motion_bins_vec4" if vec4 else "fame_motion_bins", *FAME_KERNELS]
    assert result.launches == len(names) <= fcuda.MAX_LAUNCHES_PER_CALL
    for (name, grid), block in zip(emu_runner.launched, emu_runner.blocks, strict=True):
        if name in ("fame_seed_hist_soft", "fame_select_top"):
            assert grid == (b,) and block == fcuda.CLIP_BLOCK  # one block per clip
        else:
            assert block == fcuda.BLOCK
            assert not name.startswith("fame_blur") or grid[1] == b  # blockIdx.y = clip


@pytest.mark.parametrize("size", [112, 224], ids=lambda s: f"{s}x{s}")
def test_measured_agreement_on_realistic_clips(emu_runner, size):
    # Textured squares moving over textured backgrounds with sensor noise, 16 frames: the
    # clips the benchmark and the public API tests use. The measurement the README quotes.
    clips, swept = moving_square_clips(2, 16, size, seed=size)
    result = fcuda.run_fame_mask(clips, runner=emu_runner)
    ref = fame_mask(clips, backend="torch")
    differing = int((result.mask != ref).sum())
    assert differing == 0, f"{differing} of {ref.numel()} mask pixels differ"
    _assert_stages_equal(result, _reference_stages(clips))
    # not a degenerate mask: the moving square is mostly foreground
    inside = (result.mask & swept).sum() / swept.sum()
    assert inside > 0.7, float(inside)
    assert result.launches == 7


def test_ties_everywhere_follow_the_reference(emu_runner):
    # A static grey clip: D = 0, S = 0 and M constant everywhere, so every threshold is a tie
    # and the top-beta mask is the first int(beta H W) pixels in row-major order.
    clips = torch.full((3, 4, 13, 21, 3), 77, dtype=torch.uint8)
    clips[1, :, 3:9, 5:12] = torch.tensor([200, 30, 40], dtype=torch.uint8)  # static object
    clips[2, 1:, 2:6, 2:6] = 250  # one frame differs: a motion plateau
    result = fcuda.run_fame_mask(clips, runner=emu_runner, beta=0.3)
    _assert_stages_equal(result, _reference_stages(clips, beta=0.3))
    k = int(0.3 * 13 * 21)
    first = torch.zeros(13 * 21, dtype=torch.bool)
    first[:k] = True
    assert torch.equal(result.mask[0].flatten(), first)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": 0.0},
        {"beta": 1.0},
        {"beta": 0.7, "fg_fraction": 0.0},
        {"beta": 0.3, "bg_fraction": 0.0},
        {"beta": 0.5, "fg_fraction": 1.0, "bg_fraction": 1.0},
    ],
    ids=["beta0", "beta1", "no_fg_seed", "no_bg_seed", "all_seeds"],
)
def test_edge_settings(emu_runner, kwargs):
    clips = tricky_clips(3, 5, 17, 19, seed=3)
    result = fcuda.run_fame_mask(clips, runner=emu_runner, **kwargs)
    _assert_stages_equal(result, _reference_stages(clips, **kwargs))


def test_seed_variant_is_four_launches(emu_runner):
    clips, _ = moving_square_clips(3, 6, 40, seed=2)
    result = fcuda.run_fame_mask(clips, runner=emu_runner, variant="seed", beta=0.3)
    assert torch.equal(result.mask, fame_mask(clips, variant="seed", beta=0.3, backend="torch"))
    assert torch.equal(result.seed, ops.minmax(ops.gaussian_blur(motion_and_bins_ref(clips)[0])))
    names = [name for name, _ in emu_runner.launched]
    assert names == [
        "fame_motion_bins_vec4",  # 40 x 40 pixels: H*W % 4 == 0
        "fame_blur_rows",
        "fame_blur_cols_minmax",
        "fame_select_top",
    ]
    assert result.thresholds is None and result.counts is None


def test_launch_count_does_not_grow_with_the_batch(emu, emu_runner):
    # A fresh runner of the fixture's class per batch size (``import conftest`` would resolve to
    # whichever conftest.py pytest imported first under that name).
    counts = {}
    for b in (1, 3, 8):
        runner = type(emu_runner)(emu.libs["fame_mask"])
        fcuda.run_fame_mask(tricky_clips(b, 3, 9, 10, seed=b), runner=runner)
        counts[b] = len(runner.launched)
    assert counts == {1: 7, 3: 7, 8: 7}


def test_run_fame_mask_rejects_unfused_variants(emu_runner):
    with pytest.raises(ValueError, match="fused mask computes variants"):
        fcuda.run_fame_mask(tricky_clips(1, 2, 7, 9, seed=0), runner=emu_runner, variant="grid")


def test_no_torch_compute_between_the_launches(emu_runner):
    # Between the kernel launches the sequence only allocates outputs (torch.empty: no kernel
    # on a GPU) and views the mask as bool; every aten op that runs is recorded here. (On a GPU
    # tests/fame/test_fame_cuda.py also runs it under torch.cuda.set_sync_debug_mode("error").)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    clips = tricky_clips(3, 4, 30, 32, seed=4)
    fcuda.run_fame_mask(clips, runner=emu_runner)  # builds the cached Gaussian taps once
    with Record() as record:
        result = fcuda.run_fame_mask(clips, runner=emu_runner)
    # (the bool view of the uint8 mask dispatches as view / detach: aliases, no compute)
    assert set(record.ops) <= {"aten.empty", "aten.view", "aten.detach"}, record.ops
    assert record.ops.count("aten.empty") == 13  # the outputs and intermediates of 7 kernels
    assert torch.equal(result.mask, fame_mask(clips, backend="torch"))

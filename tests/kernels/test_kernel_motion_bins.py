"""kernels/motion_bins.cu, compiled as host C++, against motion_and_bins_ref.

Bins must be equal exactly; the motion map is compared with assert_close (and is in fact one
correctly rounded division on both sides).
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from kernel_inputs import ODD_SIZES, VEC_SIZES, bin_edge_clip, misaligned_copy, tricky_clips

from dali_fame.fame.reference import motion_and_bins_ref


@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_motion_bins_matches_reference_on_odd_sizes(emu, size, legacy_hue):
    b, t, h, w = size
    clips = tricky_clips(b, t, h, w, seed=sum(size))
    motion, bins = emu.motion_and_bins(clips, legacy_hue=legacy_hue)
    ref_motion, ref_bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
    assert bins.dtype == torch.int32 and bins.shape == (b, h, w)
    assert torch.equal(bins, ref_bins), f"{(bins != ref_bins).sum()} pixels differ"
    torch.testing.assert_close(motion, ref_motion)
    # the inputs contain static pixels (D = 0) and moving ones: not a degenerate comparison
    assert (motion == 0).any() and (motion > 0).any()
    assert bins.unique().numel() > min(h * w * b // 4, 40)


@pytest.mark.parametrize("size", VEC_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_vec4_kernel_equals_scalar_kernel_and_reference(emu, size):
    b, t, h, w = size
    clips = tricky_clips(b, t, h, w, seed=7)
    m_vec, b_vec = emu.motion_and_bins(clips, path="vec")
    m_sca, b_sca = emu.motion_and_bins(clips, path="scalar")
    ref_motion, ref_bins = motion_and_bins_ref(clips)
    assert torch.equal(b_vec, b_sca) and torch.equal(b_vec, ref_bins)
    assert torch.equal(m_vec, m_sca)
    torch.testing.assert_close(m_vec, ref_motion)


def test_misaligned_clips_fall_back_to_the_scalar_kernel(emu):
    clips = misaligned_copy(tricky_clips(2, 3, 8, 14, seed=3), offset=2)
    assert clips.data_ptr() % 4 != 0
    motion, bins = emu.motion_and_bins(clips)  # "auto" must pick the byte-wise kernel
    ref_motion, ref_bins = motion_and_bins_ref(clips.clone())
    assert torch.equal(bins, ref_bins)
    torch.testing.assert_close(motion, ref_motion)


@pytest.mark.parametrize(
    "t,values",
    [
        # v on the edges (2n - 1) / 18 exactly: sums 85 (2n - 1) over 6 frames
        (6, [0, 1, 85, 255, 425, 595, 765, 935, 1105, 1275, 1445, 1529, 1530]),
        # means of exactly 0.5 (hue angles of pi / 2, ...) and their neighbours over 2 frames
        (2, [0, 1, 2, 127, 128, 254, 255, 256, 382, 383, 509, 510]),
    ],
    ids=["T6_value_edges", "T2_half_means"],
)
@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
def test_bins_exact_on_quantisation_edges(emu, t, values, legacy_hue):
    clips = bin_edge_clip(t, 41, 54, values)
    _, bins = emu.motion_and_bins(clips, legacy_hue=legacy_hue)
    _, ref_bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
    assert torch.equal(bins, ref_bins), f"{(bins != ref_bins).sum()} pixels differ"


def test_hand_computed_pixels(emu):
    # 2 frames, 1 x 3 pixels: pure red then pure green (hue 0 and 2 pi / 3, full saturation),
    # grey (s = 0: the centre of the hue disk) and black.
    clips = torch.tensor(
        [[[[255, 0, 0], [128, 128, 128], [0, 0, 0]]], [[[0, 255, 0], [128, 128, 128], [0, 0, 0]]]],
        dtype=torch.uint8,
    ).view(1, 2, 1, 3, 3)
    motion, bins = emu.motion_and_bins(clips)
    # pixel 0: |0-255| + |255-0| = 510 -> 2.0; mean (0.5, 0.5, 0): yellow, hue pi / 3, s = 1
    # px = (cos(pi/3) + 1) / 2 = 0.75 -> q = 7; py = (sin(pi/3) + 1) / 2 = 0.933 -> q = 8;
    # v = 0.5 -> round(5.5) - 1 = 5 (half to even) -> bin 7 + 80 + 500
    assert motion[0, 0, 0].item() == 2.0
    assert bins[0, 0, 0].item() == 587
    # grey 128 / 255: px = py = 0.5 -> q = round(5.5) - 1 = 5; v = 0.502 -> q = 5 -> 555
    assert bins[0, 0, 1].item() == 555 and motion[0, 0, 1].item() == 0.0
    # black: px = py = 0.5 -> 5, v = 0 -> 0
    assert bins[0, 0, 2].item() == 55


# ---- the FP64-free bin (float sincosf, double only near a rounding edge) ------------------


def _check_lib(emu, build: str):
    lib = emu.libs[build]
    for fn in (lib.emu_bins_mismatch_all_uint8, lib.emu_bins_mismatch_sums):
        fn.restype = ctypes.c_longlong
    return lib


def _all_uint8(emu, build: str, legacy_hue: bool) -> tuple[int, int]:
    fallbacks = ctypes.c_longlong()
    bad = _check_lib(emu, build).emu_bins_mismatch_all_uint8(
        int(legacy_hue), ctypes.byref(fallbacks)
    )
    return bad, fallbacks.value


def _sampled_sums(emu, build: str, t: int, n: int, legacy_hue: bool, seed: int) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    sums = torch.randint(0, 255 * t + 1, (n, 3), generator=g, dtype=torch.int32)
    # a third of the samples on the grey axis and on exact 90-degree hues (px or py = 0.5 +- ulp)
    grey = sums[: n // 6, 0:1].expand(-1, 3)
    sums[: n // 6] = grey
    half = sums[n // 6 : n // 3]
    half[:, 2] = half[:, 1] - (half[:, 0] - half[:, 1]).clamp(min=0) // 2  # b = g - (r - g) / 2
    sums = sums.clamp(0, 255 * t).contiguous()
    fallbacks = ctypes.c_longlong()
    bad = _check_lib(emu, build).emu_bins_mismatch_sums(
        ctypes.c_void_p(sums.data_ptr()),
        ctypes.c_longlong(n),
        t,
        int(legacy_hue),
        ctypes.byref(fallbacks),
    )
    return bad, fallbacks.value


def test_fp64_free_bins_equal_exact_bins_on_every_uint8_colour(emu):
    # All 2^24 means of T = 1 frame (every uint8 colour), default hue, host sincosf (<= 1 ulp).
    bad, fallbacks = _all_uint8(emu, "bins_check", legacy_hue=False)
    assert bad == 0
    # the double-precision path is the exception (0.59% of colours; measured, kernels/README.md)
    assert 0 < fallbacks < 0.01 * 2**24


@pytest.mark.parametrize("build", ["bins_check", "bins_check_skew_p2", "bins_check_skew_m2"])
@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
def test_fp64_free_bins_with_sincosf_at_cudas_error_bound_sampled(emu, build, legacy_hue):
    # sincosf moved 2 ulp up / down (CUDA's documented bound), T = 16 as in training and T = 2
    for t, seed in ((16, 1), (2, 2)):
        bad, fallbacks = _sampled_sums(emu, build, t, 400_000, legacy_hue, seed)
        assert bad == 0, f"T = {t}: {bad} bins differ"
        assert fallbacks > 0  # the samples reach the edge cases


@pytest.mark.slow
@pytest.mark.parametrize("build", ["bins_check", "bins_check_skew_p2", "bins_check_skew_m2"])
@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
def test_fp64_free_bins_exhaustive_with_skewed_sincosf(emu, build, legacy_hue):
    # all 2^24 uint8 colours with each sincosf build (~3 s each) plus 20 M sampled T = 16 sums
    bad, _ = _all_uint8(emu, build, legacy_hue)
    assert bad == 0
    bad, _ = _sampled_sums(emu, build, 16, 20_000_000, legacy_hue, seed=3)
    assert bad == 0

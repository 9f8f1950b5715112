"""kernels/motion_bins.cu, compiled as host C++, against motion_and_bins_ref.

Bins must be equal exactly; the motion map is compared with assert_close (and is in fact one
correctly rounded division on both sides).
"""

from __future__ import annotations

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

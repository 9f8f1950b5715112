"""kernels/merge.cu, compiled as host C++, against merge_ref and merge_normalize_ref."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import (
    K400_MEAN,
    K400_STD,
    ODD_SIZES,
    VEC_SIZES,
    misaligned_copy,
    random_perm,
    structured_mask,
    tricky_clips,
)

from dali_fame.fame.reference import merge_normalize_ref, merge_ref

MEAN = torch.tensor(K400_MEAN, dtype=torch.float32)
STD = torch.tensor(K400_STD, dtype=torch.float32)


def _inputs(size, *, seed, mask_dtype=torch.bool):
    b, t, h, w = size
    clips = tricky_clips(b, t, h, w, seed=seed)
    mask = structured_mask(b, h, w, seed=seed + 1, dtype=mask_dtype)
    perm = random_perm(b, seed=seed + 2)
    return clips, mask, perm


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8], ids=["bool", "uint8"])
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_merge_matches_reference_on_odd_sizes(emu, size, mask_dtype):
    clips, mask, perm = _inputs(size, seed=sum(size), mask_dtype=mask_dtype)
    out = emu.merge(clips, mask, perm)
    assert out.dtype == torch.uint8 and out.shape == clips.shape
    assert torch.equal(out, merge_ref(clips, mask, perm))


@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_merge_normalize_matches_reference_on_odd_sizes(emu, size):
    clips, mask, perm = _inputs(size, seed=sum(size) + 5)
    out = emu.merge_normalize(clips, mask, perm, MEAN, STD)
    ref = merge_normalize_ref(clips, mask, perm, MEAN, STD)
    assert out.shape == (size[0], 3, size[1], size[2], size[3]) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    # same float32 operations in the same order (the kernel's lookup table): bit-identical
    assert torch.equal(out, ref)


@pytest.mark.parametrize("size", VEC_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_vec16_kernels_equal_scalar_kernels_and_reference(emu, size):
    b = size[0]
    clips, mask, perm = _inputs(size, seed=3, mask_dtype=torch.uint8)
    # the masks must give the vector path all three cases: all-foreground, all-background and
    # mixed groups of 16 pixels
    groups = (mask.view(b, -1, 16) != 0).sum(dim=2)
    assert (groups == 0).any() and (groups == 16).any() and ((groups > 0) & (groups < 16)).any()
    ref = merge_ref(clips, mask, perm)
    assert torch.equal(emu.merge(clips, mask, perm, path="vec"), ref)
    assert torch.equal(emu.merge(clips, mask, perm, path="scalar"), ref)
    ref_n = merge_normalize_ref(clips, mask, perm, MEAN, STD)
    assert torch.equal(emu.merge_normalize(clips, mask, perm, MEAN, STD, path="vec"), ref_n)
    assert torch.equal(emu.merge_normalize(clips, mask, perm, MEAN, STD, path="scalar"), ref_n)


def test_misaligned_inputs_fall_back_to_the_scalar_kernels(emu):
    clips, mask, perm = _inputs((3, 2, 8, 14), seed=9)
    clips_m = misaligned_copy(clips, offset=4)
    mask_m = misaligned_copy(mask.view(torch.uint8), offset=8)
    assert clips_m.data_ptr() % 16 != 0 and mask_m.data_ptr() % 16 != 0
    ref = merge_ref(clips, mask, perm)
    assert torch.equal(emu.merge(clips_m, mask, perm), ref)
    assert torch.equal(emu.merge(clips, mask_m, perm), ref)
    ref_n = merge_normalize_ref(clips, mask, perm, MEAN, STD)
    assert torch.equal(emu.merge_normalize(clips_m, mask_m, perm, MEAN, STD), ref_n)


def test_full_mask_returns_clips_and_empty_mask_returns_the_permuted_batch(emu):
    # beta = 1 disables FAME (spec step 8); an empty mask takes every pixel from perm[b]
    size = (3, 17, 16, 32)
    clips, _, _ = _inputs(size, seed=4)
    perm = torch.tensor([2, 0, 1])
    ones = torch.ones(3, 16, 32, dtype=torch.bool)
    assert torch.equal(emu.merge(clips, ones, perm), clips)
    assert torch.equal(emu.merge(clips, ~ones, perm), clips[perm])
    assert torch.equal(
        emu.merge(clips[:, :, :7, :9].contiguous(), ones[:, :7, :9].contiguous(), perm),
        clips[:, :, :7, :9],
    )


def test_out_of_range_perm_keeps_the_clip(emu):
    # a memory guard, not a feature: an invalid source index is never dereferenced
    size = (3, 2, 7, 9)
    clips, mask, _ = _inputs(size, seed=6)
    perm = torch.tensor([1, 7, -1])
    out = emu.merge(clips, mask, perm)
    assert torch.equal(out[0], merge_ref(clips, mask, torch.tensor([1, 0, 2]))[0])
    assert torch.equal(out[1:], clips[1:])


# ---- intra-video merging: backgrounds from a second clip batch -----------------------------


def _background(size, *, seed):
    b, t, h, w = size
    return tricky_clips(b, t, h, w, seed=seed + 100)


@pytest.mark.parametrize("size", ODD_SIZES + VEC_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_background_merges_match_reference_on_both_paths(emu, size):
    clips, mask, _ = _inputs(size, seed=sum(size) + 7)
    background = _background(size, seed=sum(size))
    # the intra-video merge uses the identity; any permutation must work all the same
    for perm in (torch.arange(size[0]), random_perm(size[0], seed=8)):
        ref = merge_ref(clips, mask, perm, background=background)
        ref_n = merge_normalize_ref(clips, mask, perm, MEAN, STD, background=background)
        for path in ("scalar", "vec") if (size[2] * size[3]) % 16 == 0 else ("scalar",):
            assert torch.equal(emu.merge(clips, mask, perm, background=background, path=path), ref)
            out_n = emu.merge_normalize(clips, mask, perm, MEAN, STD, background=background,
                                        path=path)
            assert torch.equal(out_n, ref_n)


def test_background_merge_takes_no_pixel_of_other_clips(emu):
    # an empty mask is the background batch itself, a full one the clips: nothing of the other
    # clips of the batch leaks in (the inter-video source)
    size = (3, 5, 16, 32)
    clips, _, _ = _inputs(size, seed=11)
    background = _background(size, seed=11)
    ident = torch.arange(3)
    ones = torch.ones(3, 16, 32, dtype=torch.bool)
    for path in ("scalar", "vec"):
        assert torch.equal(emu.merge(clips, ~ones, ident, background=background, path=path),
                           background)
        assert torch.equal(emu.merge(clips, ones, ident, background=background, path=path), clips)


def test_background_merge_with_misaligned_background_falls_back(emu):
    size = (3, 2, 8, 14)
    clips, mask, perm = _inputs(size, seed=12)
    background = _background(size, seed=12)
    bg_m = misaligned_copy(background, offset=4)
    assert bg_m.data_ptr() % 16 != 0
    ref = merge_ref(clips, mask, perm, background=background)
    assert torch.equal(emu.merge(clips, mask, perm, background=bg_m), ref)


def test_out_of_range_perm_reads_the_clips_own_background(emu):
    size = (3, 2, 7, 9)
    clips, mask, _ = _inputs(size, seed=13)
    background = _background(size, seed=13)
    out = emu.merge(clips, mask, torch.tensor([1, 7, -1]), background=background)
    assert torch.equal(out, merge_ref(clips, mask, torch.tensor([1, 1, 2]), background=background))

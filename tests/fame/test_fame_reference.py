"""The torch reference pinned by hand-computed tiny examples (spec section 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_fame.fame import fame_mask
from dali_fame.fame.ops import likelihoods, seed_thresholds
from dali_fame.fame.reference import (
    color_histograms_ref,
    merge_normalize_ref,
    merge_ref,
    motion_and_bins_ref,
)


def _tiny_clip() -> torch.Tensor:
    """uint8 (1, 2, 2, 2, 3): a 2-frame 2 x 2 clip."""
    frame0 = [[(0, 0, 0), (255, 0, 0)], [(0, 255, 0), (100, 100, 100)]]
    frame1 = [[(10, 0, 0), (255, 0, 0)], [(0, 200, 55), (100, 100, 100)]]
    return torch.tensor([[frame0, frame1]], dtype=torch.uint8)


def test_tiny_clip_motion_and_bins_by_hand():
    motion, bins = motion_and_bins_ref(_tiny_clip())
    # D = sum_c |X1 - X0| / 255 / (T - 1):
    #   (0,0): |10-0| = 10;  (0,1): 0;  (1,0): |200-255| + |55-0| = 110;  (1,1): 0
    f32 = np.float32
    expected_d = np.array([[f32(10) / f32(255), 0.0], [f32(110) / f32(255), 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(motion[0].numpy(), expected_d)
    # Mean frame and bins, q(u) = round(9u + 1) - 1, bin = q(px) + 10 q(py) + 100 q(v):
    # (0,0) mean (5,0,0)/255: v = 0.0196, s = 1 - 5e-7, red max, h6 = 0, theta = 0
    #   px = (s + 1)/2 = 0.99999975 -> round(9.99999775) - 1 = 9; py = 1/2 -> round(5.5) = 6 -> 5
    #   (half to even: plain round(9 * 0.5) = 4 would give 4); v -> round(1.176) - 1 = 0
    #   bin = 9 + 50 + 0 = 59
    # (0,1) mean (1,0,0): s = 1, theta = 0: px = 1 -> 9, py = 1/2 -> 5, v = 1 -> 9: 959
    # (1,0) mean (0, 227.5, 27.5)/255: v = 0.8922, s = 1, green max,
    #   h6 = 2 + 27.5/227.5 = 2.12088, theta = 2 pi h6 / 6 = 2.22098 rad (127.25 deg)
    #   px = (cos + 1)/2 = 0.19733 -> round(2.776) - 1 = 2; py = (sin + 1)/2 = 0.89799 ->
    #   round(9.082) - 1 = 8; v -> round(9.029) - 1 = 8: bin 2 + 80 + 800 = 882
    # (1,1) grey (100,100,100)/255: s = 0 so px = py = 1/2 -> 5, 5; v = 0.392 -> round(4.53) - 1 = 4
    #   bin = 5 + 50 + 400 = 455
    assert bins.dtype == torch.int32
    assert bins[0].tolist() == [[59, 959], [882, 455]]
    # Legacy hue: theta' = 2 pi theta = 13.9549 rad = 1.38854 rad mod 2 pi:
    #   px = (cos + 1)/2 = 0.59068 -> round(6.316) - 1 = 5; py = (sin + 1)/2 = 0.99170 ->
    #   round(9.925) - 1 = 9: bin 5 + 90 + 800 = 895. theta = 0 stays 0 for the other pixels.
    motion_legacy, bins_legacy = motion_and_bins_ref(_tiny_clip(), legacy_hue=True)
    assert bins_legacy[0].tolist() == [[59, 959], [895, 455]]
    assert torch.equal(motion_legacy, motion)


def test_tiny_clip_mask_by_hand():
    # crop 2 -> kernel size 1 (no blur). S = D / max D = [[1/11, 0], [1, 0]].
    # kF = int(0.5 * 4) = 2 -> F = {(1,0), (0,0)}, one bin each (882, 59); kB = int(0.4) = 0.
    # pF = 1/2 on bins 882 and 59; pB = 1/1000 everywhere (add-one smoothing of zero counts).
    # M = 0.5 / 0.501 on (0,0) and (1,0), 0 elsewhere; the two values are exactly equal.
    clip = _tiny_clip()
    assert fame_mask(clip, beta=0.5).int()[0].tolist() == [[1, 0], [1, 0]]
    # beta = 0.25 -> one pixel; (0,0) and (1,0) tie, the lower row-major index wins.
    assert fame_mask(clip, beta=0.25).int()[0].tolist() == [[1, 0], [0, 0]]
    assert fame_mask(clip, beta=0.0).sum() == 0
    assert fame_mask(clip, beta=1.0).all()


def _tie_clip() -> torch.Tensor:
    """uint8 (1, 2, 2, 5, 3), grey pixels: frame 0 = L - d, frame 1 = L + d.

    Row-major pixels p0..p9 with d = [20, 15, 15, 10, 10, 10, 10, 0, 0, 5] and
    L = [128, 30, 30, 200, 200, 30, 128, 60, 240, 128].
    """
    d = np.array([20, 15, 15, 10, 10, 10, 10, 0, 0, 5])
    lvl = np.array([128, 30, 30, 200, 200, 30, 128, 60, 240, 128])
    frames = np.stack([lvl - d, lvl + d])  # (2, 10)
    clip = np.repeat(frames[:, :, None], 3, axis=2).reshape(1, 2, 2, 5, 3)
    return torch.from_numpy(clip.astype(np.uint8))


def test_fractional_tie_weights_by_hand():
    clip = _tie_clip()
    motion, bins = motion_and_bins_ref(clip)
    # D = 6 d / 255 (3 channels change by 2d); grey -> bin = 55 + 100 q(L / 255):
    # L = 128 -> round(5.518) - 1 = 5 -> 555; 30 -> round(2.059) - 1 = 1 -> 155;
    # 200 -> round(8.059) - 1 = 7 -> 755; 60 -> round(3.118) - 1 = 2 -> 255; 240 -> 855
    assert bins[0].flatten().tolist() == [555, 155, 155, 755, 755, 155, 555, 255, 855, 555]
    # No blur at crop 2; S = d / 20 = [1, .75, .75, .5, .5, .5, .5, 0, 0, .25].
    seed = motion / motion.amax()
    k_fg, k_bg = int(0.5 * 10), int(0.1 * 10)  # 5 and 1
    thr_fg, thr_bg = seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)
    assert thr_fg.item() == pytest.approx(0.5) and thr_bg.item() == 0.0
    counts = color_histograms_ref(bins, seed, thr_fg, thr_bg)
    assert counts.shape == (1, 4, 1000) and counts.dtype == torch.int32
    nonzero = {
        cat: {int(i): int(counts[0, cat, i]) for i in torch.nonzero(counts[0, cat]).flatten()}
        for cat in range(4)
    }
    # strictly above the 5th largest (0.5): p0 (555), p1, p2 (155)
    assert nonzero[0] == {555: 1, 155: 2}
    # tied at 0.5: p3, p4 (755), p5 (155), p6 (555): 4 pixels for 2 slots -> weight 1/2 each
    assert nonzero[1] == {755: 2, 155: 1, 555: 1}
    # background: nothing below the smallest value 0; tied at 0: p7 (255), p8 (855), weight 1/2
    assert nonzero[2] == {}
    assert nonzero[3] == {255: 1, 855: 1}
    p_fg, p_bg = likelihoods(counts, k_fg=k_fg, k_bg=k_bg)
    # cF = {555: 1.5, 155: 2.5, 755: 1}, sum 5; cB + 1 = {255: 1.5, 855: 1.5, else 1}, sum 1001
    assert p_fg[0, 555].item() == pytest.approx(0.3)
    assert p_fg[0, 155].item() == pytest.approx(0.5)
    assert p_fg[0, 755].item() == pytest.approx(0.2)
    assert p_fg[0].sum().item() == pytest.approx(1.0)
    assert p_bg[0, 255].item() == pytest.approx(1.5 / 1001)
    assert p_bg[0, 7].item() == pytest.approx(1 / 1001)
    # M: 155 pixels (p1, p2, p5) = .5/.501 > 555 pixels (p0, p6, p9) = .3/.301 > 755 > 0.
    # Top 5: p1, p2, p5 and two of the tied p0, p6, p9 -> the lower indices p0, p6.
    mask = fame_mask(clip, beta=0.5)
    assert mask.int()[0].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def test_empty_seed_sets_count_nothing():
    bins = torch.randint(0, 1000, (2, 3, 4), dtype=torch.int32)
    seed = torch.rand(2, 3, 4)
    inf = torch.full((2,), float("inf"))
    counts = color_histograms_ref(bins, seed, inf, -inf)
    assert counts.sum() == 0
    # thresholds at the extremes: all pixels fall in [1]/[3] or [0]/[2]
    counts = color_histograms_ref(bins, seed, seed.amin((1, 2)), seed.amax((1, 2)))
    assert counts[:, 0].sum() + counts[:, 1].sum() == 24
    assert counts[:, 2].sum() + counts[:, 3].sum() == 24


def test_bins_and_motion_ranges_and_legacy_hue_differs():
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8, generator=g)
    motion, bins = motion_and_bins_ref(clips)
    assert motion.dtype == torch.float32 and motion.shape == (2, 16, 16)
    assert 0 <= motion.min() and motion.max() <= 3
    assert 0 <= bins.min() and bins.max() <= 999
    _, bins_legacy = motion_and_bins_ref(clips, legacy_hue=True)
    changed = (bins != bins_legacy).float().mean().item()
    assert changed > 0.3, changed  # scrambled hue bins on coloured input
    # The value digit does not depend on the hue.
    assert torch.equal(bins // 100, bins_legacy // 100)
    # Grey clips have no hue: both agree.
    grey = clips[..., :1].expand(-1, -1, -1, -1, 3).contiguous()
    assert torch.equal(motion_and_bins_ref(grey)[1], motion_and_bins_ref(grey, legacy_hue=True)[1])


def test_merge_ref_is_a_per_pixel_select():
    g = torch.Generator().manual_seed(1)
    clips = torch.randint(0, 256, (3, 4, 5, 7, 3), dtype=torch.uint8, generator=g)
    mask = torch.rand(3, 5, 7, generator=g) < 0.5
    perm = torch.tensor([2, 0, 1])
    out = merge_ref(clips, mask.to(torch.uint8), perm)
    c, m = clips.numpy(), mask.numpy()
    expected = np.where(m[:, None, :, :, None], c, c[perm.numpy()])
    np.testing.assert_array_equal(out.numpy(), expected)
    mean = torch.tensor([0.4, 0.5, 0.6])
    std = torch.tensor([0.2, 0.25, 0.3])
    norm = merge_normalize_ref(clips, mask, perm, mean, std)
    assert norm.shape == (3, 3, 4, 5, 7) and norm.is_contiguous()
    ref = torch.from_numpy(expected).permute(0, 4, 1, 2, 3).float() / 255 - mean.view(3, 1, 1, 1)
    torch.testing.assert_close(norm, ref / std.view(3, 1, 1, 1))
    # intra-video: the backgrounds come from background[perm[b]], never from the other clips
    other = torch.randint(0, 256, (3, 4, 5, 7, 3), dtype=torch.uint8, generator=g)
    out_i = merge_ref(clips, mask, perm, background=other)
    expected_i = np.where(m[:, None, :, :, None], c, other.numpy()[perm.numpy()])
    np.testing.assert_array_equal(out_i.numpy(), expected_i)
    norm_i = merge_normalize_ref(clips, mask, perm, mean, std, background=other)
    assert torch.equal(norm_i, merge_normalize_ref(out_i, torch.ones_like(mask), perm, mean, std))


def test_merge_ref_hand_computed_intra_example():
    # 1 clip of 2 frames of 1 x 2 pixels: pixel 0 foreground, pixel 1 background
    clips = torch.tensor([[[[[1, 2, 3], [4, 5, 6]]], [[[7, 8, 9], [10, 11, 12]]]]], dtype=torch.uint8)
    other = 100 + clips
    mask = torch.tensor([[[True, False]]])
    out = merge_ref(clips, mask, torch.tensor([0]), background=other)
    expected = [[[[[1, 2, 3], [104, 105, 106]]], [[[7, 8, 9], [110, 111, 112]]]]]
    assert out.tolist() == expected
    with pytest.raises(ValueError, match="background"):
        merge_ref(clips, mask, torch.tensor([0]), background=other[..., :2])
    with pytest.raises(ValueError, match="background must be contiguous"):
        merge_ref(clips, mask, torch.tensor([0]), background=other.repeat_interleave(2, -1)[..., ::2])


@pytest.mark.parametrize(
    "clips, message",
    [
        (torch.zeros(2, 1, 8, 8, 3, dtype=torch.uint8), "T >= 2"),
        (torch.zeros(2, 4, 8, 8, 3, dtype=torch.int16), "uint8"),
        (torch.zeros(2, 4, 8, 8, 3), "uint8"),  # the reference intermediates take uint8 only
        (torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8), "(B, T, H, W, 3)"),
        (torch.zeros(4, 8, 8, 3, dtype=torch.uint8), "(B, T, H, W, 3)"),
        (torch.zeros(2, 8, 4, 8, 3, dtype=torch.uint8).transpose(1, 2), "contiguous"),
    ],
)
def test_reference_rejects_bad_clips(clips, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        motion_and_bins_ref(clips)


@pytest.mark.parametrize("frames", [2, 17, 130])  # 130 frames overflow the int16 accumulators
def test_motion_and_mean_bins_match_numpy(frames):
    g = torch.Generator().manual_seed(frames)
    clips = torch.randint(0, 256, (2, frames, 5, 7, 3), dtype=torch.uint8, generator=g)
    motion, bins = motion_and_bins_ref(clips)
    x = clips.numpy().astype(np.int64)
    d = np.abs(np.diff(x, axis=1)).sum(axis=(1, 4)) / 255 / (frames - 1)
    np.testing.assert_allclose(motion.numpy(), d, rtol=1e-6)
    mean = x.mean(axis=1) / 255  # (B, H, W, 3), float64
    r, gg, b = mean[..., 0], mean[..., 1], mean[..., 2]
    v = mean.max(-1)
    delta = v - mean.min(-1)
    dl = np.where(delta == 0, 1, delta)
    h6 = np.where(r == v, (gg - b) / dl, np.where(gg == v, 2 + (b - r) / dl, 4 + (r - gg) / dl))
    theta = 2 * np.pi * np.mod(h6 / 6, 1)
    s = delta / (v + 1e-8)

    def q(u):
        return np.round(9 * u + 1) - 1

    expected = q((s * np.cos(theta) + 1) / 2) + 10 * q((s * np.sin(theta) + 1) / 2) + 100 * q(v)
    # float64 vs the float32 contract: equal except on a rounding edge (none expected here)
    assert (bins.numpy() == expected).mean() >= 0.99


# --- the optimised reference against a literal float32 transcription of its contract -------------
# The reference rearranges the work for speed (|a - b| = 2 max(a, b) - a - b, one selected hue
# numerator, per-bin ratios, one bincount); its outputs must stay bit-identical to the
# per-operation float32 contract of its module docstring, transcribed here in numpy (each numpy
# float32 operation is one IEEE rounding).

F32 = np.float32


def _literal_motion_and_bins(clips: torch.Tensor, legacy_hue: bool) -> tuple[np.ndarray, ...]:
    x = clips.numpy().astype(np.int64)
    t = x.shape[1]
    motion = np.abs(np.diff(x, axis=1)).sum(axis=(1, 4)).astype(F32) / F32(255 * (t - 1))
    mean = x.sum(axis=1).astype(F32) / F32(255 * t)
    r, g, b = mean[..., 0], mean[..., 1], mean[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    s = delta / (v + F32(1e-8))
    dl = np.where(delta == 0, F32(1), delta)
    h6 = np.where(r == v, (g - b) / dl, np.where(g == v, F32(2) + (b - r) / dl, F32(4) + (r - g) / dl))
    a = h6 / F32(6)
    theta = F32(2 * np.pi) * np.where(a < 0, a + F32(1), a)
    if legacy_hue:
        theta = (theta * F32(2)) * F32(np.pi)
    c = np.cos(theta.astype(np.float64)).astype(F32)
    sn = np.sin(theta.astype(np.float64)).astype(F32)

    def q(u):
        return np.rint(u * F32(9) + F32(1)) - F32(1)

    px, py = (s * c + F32(1)) / F32(2), (s * sn + F32(1)) / F32(2)
    return motion, (q(px) + F32(10) * q(py) + F32(100) * q(v)).astype(np.int32)


def _tie_clips() -> list[torch.Tensor]:
    """Odd sizes, ties in every form (grey, r = g, g = b maxima, few levels, constant), both
    accumulator widths (T = 42 is the last int16 one), realistic moving squares."""
    from fame_clips import moving_square_clips

    g = torch.Generator().manual_seed(11)

    def rnd(shape, hi=256):
        return torch.randint(0, hi, shape, dtype=torch.uint8, generator=g)

    two = rnd((2, 5, 13, 17, 2))
    return [
        rnd((3, 5, 37, 53, 3)),
        rnd((2, 2, 1, 7, 3)),
        rnd((2, 42, 9, 11, 3)),
        rnd((2, 43, 9, 11, 3)),
        rnd((1, 130, 6, 5, 3)),
        rnd((2, 4, 19, 23, 3), hi=3) * 127,
        rnd((2, 4, 19, 23, 1)).expand(2, 4, 19, 23, 3).contiguous(),
        torch.cat([two[..., :1], two[..., :1], two[..., 1:]], -1).contiguous(),
        torch.cat([two[..., 1:], two[..., :1], two[..., :1]], -1).contiguous(),
        torch.full((2, 3, 8, 9, 3), 200, dtype=torch.uint8),
        moving_square_clips(2, 8, 40, seed=3)[0],
        moving_square_clips(2, 6, 33, seed=4, noise=0.0)[0],
    ]


@pytest.mark.parametrize("legacy_hue", [False, True])
def test_motion_and_bins_are_bit_identical_to_the_float32_contract(legacy_hue):
    for clips in _tie_clips():
        motion, bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
        want_motion, want_bins = _literal_motion_and_bins(clips, legacy_hue)
        np.testing.assert_array_equal(motion.numpy().view(np.int32), want_motion.view(np.int32))
        np.testing.assert_array_equal(bins.numpy(), want_bins)


def test_mask_stages_are_bit_identical_to_their_literal_definitions():
    from dali_fame.fame.ops import gaussian_blur, minmax, select_top, soft_mask

    for clips in _tie_clips():
        motion, bins = motion_and_bins_ref(clips)
        bsz, h, w = bins.shape
        n = h * w
        flat_bins = bins.reshape(bsz, -1).numpy()
        blurred = gaussian_blur(motion).reshape(bsz, -1).numpy()
        shifted = blurred - blurred.min(axis=1, keepdims=True)
        literal = shifted / (shifted.max(axis=1, keepdims=True) + F32(1e-8))
        seed = minmax(gaussian_blur(motion))
        np.testing.assert_array_equal(seed.reshape(bsz, -1).numpy().view(np.int32),
                                      literal.view(np.int32))
        ordered = np.sort(literal, axis=1)
        for k_fg, k_bg in ((n // 2, max(1, n // 10)), (n - 1, 1), (1, n - 1)):
            thr_fg, thr_bg = seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)
            assert torch.equal(thr_fg, torch.from_numpy(ordered[:, n - k_fg]))
            assert torch.equal(thr_bg, torch.from_numpy(ordered[:, k_bg - 1]))
        s = literal.copy()
        s[0, 0] = np.nan  # a NaN seed counts in no set
        for tf, tb in ((ordered[:, n // 2], ordered[:, n // 10]), (ordered[:, 0], ordered[:, -1])):
            counts = color_histograms_ref(bins, torch.from_numpy(s).view(bsz, h, w),
                                          torch.from_numpy(tf.copy()), torch.from_numpy(tb.copy()))
            for i in range(bsz):
                sets = (s[i] > tf[i], s[i] == tf[i], s[i] < tb[i], s[i] == tb[i])
                for j, sel in enumerate(sets):
                    want = np.bincount(flat_bins[i][sel], minlength=1000)
                    np.testing.assert_array_equal(counts[i, j].numpy(), want)
        p_fg, p_bg = likelihoods(counts, k_fg=n // 2, k_bg=n // 10)
        m = soft_mask(bins, p_fg, p_bg)
        f = np.take_along_axis(p_fg.numpy(), flat_bins, 1)
        b = np.take_along_axis(p_bg.numpy(), flat_bins, 1)
        np.testing.assert_array_equal(m.reshape(bsz, -1).numpy().view(np.int32),
                                      (f / (f + b)).view(np.int32))
        score = m.reshape(bsz, -1).numpy()
        for k in (1, n // 3, n // 2, n - 1):  # exactly k, ties to the lower row-major index
            want = np.zeros((bsz, n), dtype=bool)
            for i in range(bsz):
                want[i, np.lexsort((np.arange(n), -score[i]))[:k]] = True
            np.testing.assert_array_equal(select_top(m, k).reshape(bsz, -1).numpy(), want)

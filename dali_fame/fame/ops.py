"""The FAME steps that run in torch on every backend (spec section 1, steps 2 and 5-8).

The dispatch swaps only the four intermediates of :mod:`dali_fame.fame.reference` (motion and
bins, colour histograms, merge, fused merge + normalise); the Gaussian blur, min-max, the seed
thresholds, the likelihoods and the exact top-k selection below are shared, device-agnostic
torch. All maps are float32 (B, H, W) unless stated.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from dali_fame.fame.reference import NUM_BINS, scratch, true_div

__all__ = [
    "blur_kernel_size",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_taps",
    "kth_largest",
    "kth_smallest",
    "kth_smallest_many",
    "likelihood_denominator",
    "likelihoods",
    "minmax",
    "seed_thresholds",
    "select_top",
    "soft_mask",
]

#: the minmax epsilon of spec step 2 (and the likelihood epsilon of step 6)
EPS = 1e-8


def blur_kernel_size(height: int, width: int) -> int:
    """Gaussian kernel size k = (int(0.1 * crop) // 2) * 2 + 1 with crop = min(H, W).

    23 for crop 224, 11 for crop 112, 1 (no blur) below crop 20.
    """
    crop = min(height, width)
    return (int(0.1 * crop) // 2) * 2 + 1


def gaussian_kernel1d(size: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1-D Gaussian taps, sigma = size / 3, centred on size // 2.

    Returns:
        float32 (size,), computed in float64 and rounded once.
    """
    sigma = size / 3.0
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(device=device, dtype=torch.float32)


def _blur_axis(
    x: torch.Tensor, taps: list[float], dim: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """1-D symmetric filter along ``dim`` (1 or 2) of a (B, H, W) map, reflect padding.

    out = w0 * x[0] + sum_{i=1..p} w_i * (x[-i] + x[+i]) as separate float32 elementwise ops in
    this fixed order: each op is one IEEE rounding, so the result is bit-identical on CPU and
    GPU (a convolution would depend on the library's algorithm, and cuDNN may use TF32).
    """
    p = len(taps) // 2
    n = x.shape[dim]
    pad = (p, p, 0, 0) if dim == 2 else (0, 0, p, p)
    xp = F.pad(x[:, None], pad, mode="reflect")[:, 0]
    out = torch.mul(xp.narrow(dim, p, n), taps[p], out=out)
    pair = scratch(f"blur.pair{dim}", tuple(out.shape), out.dtype, out.device)  # every tap
    for i in range(1, p + 1):
        torch.add(xp.narrow(dim, p - i, n), xp.narrow(dim, p + i, n), out=pair)
        out += pair.mul_(taps[p + i])
    return out


def gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 2-D Gaussian blur with reflect padding (spec step 2), along W then H.

    Args:
        x: float32 (B, H, W); the kernel size follows from min(H, W).

    Returns:
        float32 (B, H, W), bit-identical on every device (see :func:`_blur_axis`).
    """
    _, h, w = x.shape
    k = blur_kernel_size(h, w)
    if k == 1:
        return x.clone()
    taps = _taps(k)
    along_w = scratch("blur.along_w", tuple(x.shape), x.dtype, x.device)  # internal: reused
    return _blur_axis(_blur_axis(x, taps, 2, out=along_w), taps, 1)


@functools.cache
def gaussian_taps(size: int, device: str = "cpu") -> torch.Tensor:
    """:func:`gaussian_kernel1d` as a contiguous tensor on ``device``, built (and copied) once per
    (size, device): the fused CUDA and native masks pass it to their kernels without a
    host-to-device copy per call."""
    return gaussian_kernel1d(size, device=device).contiguous()


def likelihood_denominator(k: int) -> float:
    """float32(k) + float32(1e-8) rounded to float32 (exact as a Python float): the divisor of
    :func:`likelihoods` for a seed set of k pixels (kB + 1000 for the background). In numpy, so
    that the fused CUDA path runs no torch op between its launches."""
    return float(np.float32(np.float32(k) + np.float32(EPS)))


@functools.cache
def _taps(size: int) -> list[float]:
    """:func:`gaussian_kernel1d` as Python floats holding the float32 values exactly (scalar
    operands: no tensor, hence no host-to-device copy, per tap), computed once per size."""
    return gaussian_kernel1d(size).tolist()


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-clip min-max: (x - min x) / (max(x - min x) + 1e-8).

    Float subtraction is monotone, so max(x - min x) is exactly (max x) - (min x), rounded once:
    the maximum comes from x itself, and the shifted map is divided in place. (torch.aminmax
    with a dim is ~40x slower than amin + amax on the CPU.)

    Args:
        x: float32 (B, H, W).

    Returns:
        float32 (B, H, W) in [0, 1).
    """
    flat = x.reshape(x.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    shifted = flat - lo
    return shifted.div_(hi.sub_(lo).add_(EPS)).view_as(x)


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row.

    Args:
        x: float32 (B, N).
        k: 1..N.

    Returns:
        float32 (B,).
    """
    n = x.shape[1]
    return kth_smallest(x, n - k + 1)


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value of each row (torch.kthvalue's value).

    Args:
        x: real (B, N), no NaN.
        k: 1..N.

    Returns:
        (B,) of x's dtype and device.
    """
    return kth_smallest_many(x, [k])[0]


def kth_smallest_many(x: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
    """The k-th smallest value of each row for each k of ``ks`` (torch.kthvalue's values).

    On the CPU, float32 / float64 rows go through numpy's introselect (np.partition), about 5x
    faster than torch.kthvalue on 2 cores for 8 x 50176, and one partition serves every k; the
    k-th order statistic is a value of the row either way, so the result is identical.

    Args:
        x: real (B, N), no NaN.
        ks: each 1..N.

    Returns:
        one (B,) tensor of x's dtype and device per k, in the order of ``ks``.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        order = sorted(set(ks))
        part = np.partition(x.detach().numpy(), [k - 1 for k in order], axis=1)
        return [torch.from_numpy(np.ascontiguousarray(part[:, k - 1])) for k in ks]
    return [torch.kthvalue(x, k, dim=1).values for k in ks]


def seed_thresholds(
    seed: torch.Tensor, *, k_fg: int, k_bg: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thresholds of the foreground / background seed sets (spec step 5).

    Args:
        seed: float32 (B, H, W).
        k_fg: number of foreground seed pixels kF (0..H*W).
        k_bg: number of background seed pixels kB (0..H*W).

    Returns:
        thr_fg: float32 (B,), the kF-th largest seed value (+inf when kF = 0: an empty set).
        thr_bg: float32 (B,), the kB-th smallest seed value (-inf when kB = 0).
    """
    flat = seed.reshape(seed.shape[0], -1)
    bsz, n = flat.shape
    # the kF-th largest is the (N - kF + 1)-th smallest: one selection pass finds both
    ranks = ([n - k_fg + 1] if k_fg > 0 else []) + ([k_bg] if k_bg > 0 else [])
    values = kth_smallest_many(flat, ranks) if ranks else []
    if k_fg > 0:
        thr_fg = values.pop(0)
    else:
        thr_fg = torch.full((bsz,), math.inf, dtype=torch.float32, device=seed.device)
    if k_bg > 0:
        thr_bg = values.pop(0)
    else:
        thr_bg = torch.full((bsz,), -math.inf, dtype=torch.float32, device=seed.device)
    return thr_fg.contiguous(), thr_bg.contiguous()


def _tie_weighted(strict: torch.Tensor, tied: torch.Tensor, k: int) -> torch.Tensor:
    """cF = strict + tied * (k - n_strict) / n_tied: weights summing to exactly k."""
    n_strict = strict.sum(dim=1, keepdim=True)
    n_tied = tied.sum(dim=1, keepdim=True)
    weight = torch.where(n_tied > 0, (k - n_strict).float() / n_tied.clamp(min=1).float(), 0.0)
    return strict.float() + tied.float() * weight


def likelihoods(counts: torch.Tensor, *, k_fg: int, k_bg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour likelihoods pF and pB from the histogram counts (spec step 6).

    Args:
        counts: int32 (B, 4, 1000) from ``color_histograms``.
        k_fg, k_bg: the seed set sizes kF and kB.

    Returns:
        p_fg: float32 (B, 1000), cF / (sum(cF) + 1e-8).
        p_bg: float32 (B, 1000), (cB + 1) / (sum(cB + 1) + 1e-8).
    """
    c_fg = _tie_weighted(counts[:, 0], counts[:, 1], k_fg)
    c_bg = _tie_weighted(counts[:, 2], counts[:, 3], k_bg) + 1.0
    # sum(cF) = kF and sum(cB + 1) = kB + 1000 exactly, by construction of the tie weights. Using
    # these exact sums instead of a float reduction (whose order depends on the device) keeps pF
    # and pB bit-identical everywhere; without ties they equal the released code's values, whose
    # float32 sums of integer counts are exact. The float32 rounding of (k + 1e-8) is that of
    # float32(k) + float32(1e-8).
    p_fg = true_div(c_fg, likelihood_denominator(k_fg))
    p_bg = true_div(c_bg, likelihood_denominator(k_bg + NUM_BINS))
    return p_fg, p_bg


def soft_mask(bins: torch.Tensor, p_fg: torch.Tensor, p_bg: torch.Tensor) -> torch.Tensor:
    """M = pF[bin] / (pF[bin] + pB[bin]) (spec step 7, before the blur).

    M depends on the bin only: the ratio is formed once per (clip, bin), with the same float32
    operations, and looked up per pixel (one lookup instead of two, and 1000 divisions per clip
    instead of H * W).

    Args:
        bins: int32 (B, H, W) in 0..999.
        p_fg, p_bg: float32 (B, 1000).

    Returns:
        float32 (B, H, W) in [0, 1].
    """
    bsz = bins.shape[0]
    ratio = (p_fg / (p_fg + p_bg)).reshape(-1)  # (B * 1000,)
    offset = torch.arange(0, bsz * NUM_BINS, NUM_BINS, dtype=torch.int32, device=bins.device)
    flat_bins = bins.reshape(bsz, -1) + offset[:, None]  # clip b's bins index row b
    return ratio.index_select(0, flat_bins.view(-1)).view(bins.shape)


def select_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Exactly k pixels with the largest score per clip; ties go to the lower row-major index.

    Deterministic and device-independent given the scores: the k-th largest value t is found
    exactly (kthvalue), every pixel above t is taken, and the remaining slots go to the first
    pixels equal to t in row-major order.

    Args:
        score: float32 (B, H, W) (any real dtype; no NaN).
        k: 0..H*W.

    Returns:
        bool (B, H, W) with exactly k True per clip.
    """
    bsz = score.shape[0]
    flat = score.reshape(bsz, -1)
    n = flat.shape[1]
    if not 0 <= k <= n:
        raise ValueError(f"dali_fame.fame: cannot select {k} of {n} pixels")
    if k == 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if k == n:
        return torch.ones(score.shape, dtype=torch.bool, device=score.device)
    thr = kth_largest(flat, k)[:, None]
    # 0/1 float maps and float counts (exact integers below 2**24): on the CPU bool outputs and
    # bool reductions cost 3-4x their float versions.
    shape, dtype, dev = tuple(flat.shape), flat.dtype, flat.device
    above = torch.gt(flat, thr, out=scratch("select.above", shape, dtype, dev))
    tied = torch.eq(flat, thr, out=scratch("select.tied", shape, dtype, dev))
    slots = k - above.sum(dim=1, keepdim=True)  # >= 1: t itself is among the k largest
    n_tied = tied.sum(dim=1, keepdim=True)
    if flat.device.type != "cpu" or not torch.equal(n_tied, slots):
        # Some clip has more pixels equal to t than slots left: take the first ones. (On the CPU
        # the check is free and spares the scan when every tied pixel fits, as without ties; on
        # a GPU the scan always runs, since the check would wait for the device.)
        tied.mul_(torch.cumsum(tied, dim=1).le_(slots))
    return above.add_(tied).bool().view(score.shape)

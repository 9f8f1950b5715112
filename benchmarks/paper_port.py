"""The baseline: a straightforward per-clip port of the FAME paper's formulas, as research code
writes it (the authors' released implementation is the model: float32 (B, C, T, H, W) clips on the
[0, 1] scale, a Python loop over clips, torch.topk, a 2-D Gaussian convolution, float blending).

bench_fame.py times it next to dali_fame's reference and checks that the two agree on inputs
without ties. Not used by the library.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8
NUM_BINS = 1000


def gaussian_kernel2d(size: int) -> torch.Tensor:
    """float32 (size, size): outer product of normalised 1-D Gaussians, sigma = size / 3."""
    sigma = size / 3
    x = torch.arange(size).float() - size // 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def blur(x: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) -> (H, W): reflect padding then a 2-D convolution."""
    p = size // 2
    padded = F.pad(x[None, None], (p, p, p, p), mode="reflect")
    return F.conv2d(padded, gaussian_kernel2d(size)[None, None])[0, 0]


def normalize(x: torch.Tensor) -> torch.Tensor:
    x = x - x.min()
    return x / (x.max() + EPS)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, H, W): hue in radians [0, 2 pi), saturation, value."""
    maxc, argmax = image.max(0)
    minc = image.min(0)[0]
    delta = maxc - minc
    s = delta / (maxc + EPS)
    delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = maxc[None] - image
    h = torch.stack([bc - gc, 2.0 * delta + rc - bc, 4.0 * delta + gc - rc])
    h = h.gather(0, argmax[None])[0] / delta
    h = (h / 6.0) % 1.0
    return torch.stack([2 * math.pi * h, s, maxc])


def clip_mask(clip: torch.Tensor, *, beta: float = 0.5, legacy_hue: bool = True) -> torch.Tensor:
    """FAME mask of one clip.

    Args:
        clip: float32 (3, T, H, W) in [0, 1].
        beta: foreground fraction.
        legacy_hue: the released code's doubly scaled hue angle.

    Returns:
        float32 (H, W) of 0 / 1.
    """
    _, _, h, w = clip.shape
    size = int(0.1 * min(h, w)) // 2 * 2 + 1
    motion = (clip[:, 1:] - clip[:, :-1]).abs().sum(0).mean(0)
    seed = normalize(blur(motion, size)).flatten()

    hsv = rgb_to_hsv(clip.mean(1))
    angle = hsv[0] * 2 * math.pi if legacy_hue else hsv[0]
    px = (hsv[1] * torch.cos(angle) + 1) / 2
    py = (hsv[1] * torch.sin(angle) + 1) / 2
    q = [torch.round(u * 9 + 1) - 1 for u in (px, py, hsv[2])]
    bins = (q[0] + 10 * q[1] + 100 * q[2]).long().flatten()

    fg = torch.topk(seed, int(0.5 * h * w)).indices
    bg = torch.topk(seed, int(0.1 * h * w), largest=False).indices
    c_fg = torch.bincount(bins[fg], minlength=NUM_BINS).float()
    c_bg = torch.bincount(bins[bg], minlength=NUM_BINS).float() + 1
    p_fg = (c_fg / (c_fg.sum() + EPS))[bins]
    p_bg = (c_bg / (c_bg.sum() + EPS))[bins]
    soft = normalize(blur((p_fg / (p_fg + p_bg)).view(h, w), size)).flatten()
    mask = torch.zeros(h * w)
    mask[torch.topk(soft, int(beta * h * w)).indices] = 1
    return mask.view(h, w)


def fame_masks(video: torch.Tensor, *, beta: float = 0.5, legacy_hue: bool = True) -> torch.Tensor:
    """float32 (B, C, T, H, W) in [0, 1] -> float32 (B, H, W) masks, one clip at a time."""
    return torch.stack([clip_mask(clip, beta=beta, legacy_hue=legacy_hue) for clip in video])


def fame_step(
    video: torch.Tensor, perm: torch.Tensor, *, beta: float = 0.5, legacy_hue: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask + merge as research code does it.

    Args:
        video: float32 (B, C, T, H, W) in [0, 1].
        perm: int64 (B,), the background source of each clip.

    Returns:
        merged float32 (B, C, T, H, W) and the masks float32 (B, H, W).
    """
    mask = fame_masks(video, beta=beta, legacy_hue=legacy_hue)
    m = mask[:, None, None]
    return video[perm] * (1 - m) + video * m, mask

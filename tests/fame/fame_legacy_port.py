"""A port of the authors' released FAME mask code (github Mark12Ding/FAME, moco/loader.py, class
FAME, Apache-2.0), kept only to check ``legacy_hue=True`` against it.

Re-written from its behaviour, without kornia: float32 (B, C, T, H, W) clips on the [0, 1] scale,
kornia's GaussianBlur2d (a 2-D kernel, the outer product of normalised 1-D Gaussians, sigma = k/3,
reflect padding, conv2d), kornia's rgb_to_hsv (eps 1e-8, hue in radians), the extra 2*pi on the
hue, torch.topk seeds (arbitrary among ties: no fractional weights), scatter_add bin counts with
the colour index 1..1000, add-one smoothing on the background, torch.topk for the final mask and
the blend ``x[perm] * (1 - mask) + x * mask``. Behaviours that differ from dali_fame by design are
listed in tests/fame/test_fame_legacy.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def kornia_gaussian_kernel2d(size: int) -> torch.Tensor:
    """kornia.filters.get_gaussian_kernel2d((size, size), (size / 3, size / 3)): float32 (k, k)."""
    sigma = size / 3
    x = torch.arange(size).float() - size // 2
    gauss = torch.exp(-x.pow(2.0) / float(2 * sigma**2))
    k1 = gauss / gauss.sum()
    return torch.matmul(k1[:, None], k1[None, :])


def kornia_gaussian_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    """GaussianBlur2d on (N, 1, H, W): reflect padding then a 2-D correlation."""
    kernel = kornia_gaussian_kernel2d(size)
    p = size // 2
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    return F.conv2d(padded, kernel[None, None])


def kornia_rgb_to_hsv(image: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """kornia.color.rgb_to_hsv of (N, 3, H, W) in [0, 1]: (h in radians [0, 2pi), s, v)."""
    max_rgb, argmax_rgb = image.max(-3)
    min_rgb = image.min(-3)[0]
    deltac = max_rgb - min_rgb
    v = max_rgb
    s = deltac / (max_rgb + eps)
    deltac = torch.where(deltac == 0, torch.ones_like(deltac), deltac)
    rc, gc, bc = torch.unbind(max_rgb.unsqueeze(-3) - image, dim=-3)
    h1 = bc - gc
    h2 = (rc - bc) + 2.0 * deltac
    h3 = (gc - rc) + 4.0 * deltac
    h = torch.stack((h1, h2, h3), dim=-3) / deltac.unsqueeze(-3)
    h = torch.gather(h, dim=-3, index=argmax_rgb.unsqueeze(-3)).squeeze(-3)
    h = (h / 6.0) % 1.0
    h = 2 * math.pi * h
    return torch.stack((h, s, v), dim=-3)


def norm_batch(matrix: torch.Tensor) -> torch.Tensor:
    b, h, w = matrix.shape
    matrix = matrix.flatten(start_dim=1)
    matrix = matrix - matrix.min(dim=-1, keepdim=True)[0]
    matrix = matrix / (matrix.max(dim=-1, keepdim=True)[0] + EPS)
    return matrix.reshape(b, h, w)


def batched_bincount(x: torch.Tensor, max_value: int) -> torch.Tensor:
    target = torch.zeros(x.shape[0], max_value, dtype=x.dtype, device=x.device)
    target.scatter_add_(1, x, torch.ones_like(x))
    return target


def legacy_mask(
    video: torch.Tensor,
    *,
    beta: float = 0.5,
    crop_size: int | None = None,
    double_hue: bool = True,
) -> torch.Tensor:
    """The released getmask + getSeg.

    Args:
        video: float32 (B, C, T, H, W) in [0, 1].
        beta: foreground fraction.
        crop_size: the training crop (defaults to H, as in the released code's square crops).
        double_hue: the released code's extra 2*pi on the hue angle; False corrects it only.

    Returns:
        float32 (B, H, W) of 0 / 1.
    """
    b, c, _, h, w = video.shape
    crop = h if crop_size is None else crop_size
    size = int(0.1 * crop) // 2 * 2 + 1
    im_diff = (video[:, :, 0:-1] - video[:, :, 1:]).abs().sum(dim=1).mean(dim=1)
    seed = norm_batch(kornia_gaussian_blur(im_diff.reshape(-1, 1, h, w), size).reshape(-1, h, w))

    mean_frame = video.mean(dim=2)
    hsv = kornia_rgb_to_hsv(mean_frame.reshape(-1, c, h, w))
    fg_index = torch.topk(seed.reshape(b, -1), k=int(0.5 * h * w), dim=-1)[1]
    bg_index = torch.topk(seed.reshape(b, -1), k=int(0.1 * h * w), dim=-1, largest=False)[1]
    dim_h = dim_s = dim_v = 10
    hsv = hsv.reshape(b, -1, h, w)
    img_h, img_s, img_v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    angle = img_h * 2 * math.pi if double_hue else img_h  # the released code: doubly scaled
    hx = (img_s * torch.cos(angle) + 1) / 2
    hy = (img_s * torch.sin(angle) + 1) / 2
    qh = torch.round(hx * (dim_h - 1) + 1)
    qs = torch.round(hy * (dim_s - 1) + 1)
    qv = torch.round(img_v * (dim_v - 1) + 1)
    color_map = qh + (qs - 1) * dim_h + (qv - 1) * dim_h * dim_s  # 1..1000 in practice 1..999
    color_map = color_map.reshape(b, -1).long()
    col_fg = color_map.gather(index=fg_index, dim=-1)
    col_bg = color_map.gather(index=bg_index, dim=-1)
    dict_fg = batched_bincount(col_fg, dim_h * dim_s * dim_v).float()
    dict_bg = batched_bincount(col_bg, dim_h * dim_s * dim_v).float() + 1
    dict_fg = dict_fg / (dict_fg.sum(dim=-1, keepdim=True) + EPS)
    dict_bg = dict_bg / (dict_bg.sum(dim=-1, keepdim=True) + EPS)
    pr_fg = dict_fg.gather(dim=1, index=color_map)
    pr_bg = dict_bg.gather(dim=1, index=color_map)
    refine = pr_fg / (pr_bg + pr_fg)
    soft = norm_batch(kornia_gaussian_blur(refine.reshape(-1, 1, h, w), size).reshape(-1, h, w))
    num_fg = int(beta * h * w)
    index = torch.topk(soft.reshape(b, -1), k=num_fg, dim=-1)[1]
    mask = torch.zeros_like(soft).reshape(b, -1)
    mask.scatter_(1, index, 1.0)
    return mask.reshape(b, h, w)


def legacy_merge(video: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The released blend: video[perm] * (1 - mask) + video * mask on (B, C, T, H, W)."""
    h, w = video.shape[-2:]
    m = mask.reshape(-1, 1, 1, h, w)
    return video[perm] * (1 - m) + video * m

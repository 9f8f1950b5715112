"""Input generators of the kernel tests: odd sizes, ties, bin edges, structured masks.

All tensors are CPU, contiguous; the GPU tests move them with ``.to(device)``.
"""

from __future__ import annotations

import itertools

import torch

#: (B, T, H, W) of the comparisons with the reference: every value of B 1 and 3, T 2 and 17,
#: H x W 7 x 9 and 113 x 127 (architecture.md item 4), as a full product
ODD_SIZES = [
    (b, t, h, w) for b, t, (h, w) in itertools.product((1, 3), (2, 17), ((7, 9), (113, 127)))
]
#: H x W with H*W % 16 == 0: the vectorised kernels run
VEC_SIZES = [(3, 2, 8, 14), (3, 17, 16, 32)]
#: Kinetics-400 statistics (spec section 5)
K400_MEAN = (0.43216, 0.394666, 0.37645)
K400_STD = (0.22803, 0.22145, 0.216989)


def tricky_clips(b: int, t: int, h: int, w: int, *, seed: int) -> torch.Tensor:
    """uint8 (B, T, H, W, 3): a per-pixel mix of noise and the cases that stress the bins.

    Kinds: sensor noise; static pixels (no motion); greys (s = 0, hue of a tie); a palette of
    0/1/127/128/254/255 (means on or next to 0.5); two channels tied for the max; saturated
    primaries and secondaries.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (b, t, h, w, 3)
    noise = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    static = torch.randint(0, 256, (b, 1, h, w, 3), generator=g, dtype=torch.uint8).expand(shape)
    grey = torch.randint(0, 256, (b, t, h, w, 1), generator=g, dtype=torch.uint8).expand(shape)
    palette_values = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    palette = palette_values[torch.randint(0, 6, shape, generator=g)]
    tied = noise.clone()
    tied[..., 1] = tied[..., 0]  # r == g, often the max
    primaries = torch.randint(0, 2, (b, 1, h, w, 3), generator=g, dtype=torch.uint8) * 255
    primaries = primaries.expand(shape)
    kinds = torch.randint(0, 6, (b, 1, h, w, 1), generator=g).expand(shape)
    out = noise.clone()
    for k, src in enumerate((noise, static, grey, palette, tied, primaries)):
        out = torch.where(kinds == k, src, out)
    return out.contiguous()


def frames_with_sums(sums: torch.Tensor, t: int) -> torch.Tensor:
    """uint8 (T, N, 3) frames whose per-channel sums over T equal ``sums`` (int (N, 3))."""
    base = sums // t
    extra = sums % t
    frames = [base + (extra > i).to(sums.dtype) for i in range(t)]
    return torch.stack(frames).to(torch.uint8)


def bin_edge_clip(t: int, h: int, w: int, values: list[int]) -> torch.Tensor:
    """uint8 (1, T, H, W, 3) whose mean-frame channel sums run over all triples of ``values``.

    With T = 6, sums 85 (2n - 1) put v exactly on the quantisation edges (2n - 1) / 18, where
    only float32-exact arithmetic agrees; with T = 2, sums of 255 give means of exactly 0.5.
    """
    triples = torch.tensor(list(itertools.product(values, repeat=3)), dtype=torch.int64)
    n = h * w
    if triples.shape[0] > n:
        raise ValueError(f"{triples.shape[0]} triples do not fit in {h} x {w}")
    reps = -(-n // triples.shape[0])
    sums = triples.repeat(reps, 1)[:n]
    return frames_with_sums(sums, t).view(1, t, h, w, 3).contiguous()


def structured_mask(
    b: int, h: int, w: int, *, seed: int, dtype: torch.dtype = torch.bool
) -> torch.Tensor:
    """(B, H, W) mask of 4 x 6 blocks with sparse single-pixel flips: uniform and mixed runs."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, -(-h // 4), -(-w // 6), generator=g) < 0.5
    blocks = coarse.repeat_interleave(4, 1).repeat_interleave(6, 2)[:, :h, :w]
    flips = torch.rand(b, h, w, generator=g) < 0.03
    mask = blocks ^ flips
    if dtype == torch.bool:
        return mask.contiguous()
    # uint8 masks: any non-zero byte is foreground
    values = torch.randint(1, 256, (b, h, w), generator=g, dtype=torch.uint8)
    return torch.where(mask, values, torch.zeros_like(values)).contiguous()


def random_perm(b: int, *, seed: int) -> torch.Tensor:
    """int64 (B,) random permutation (self-pairing allowed, as in the compatibility switch)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(b, generator=g)


def misaligned_copy(x: torch.Tensor, offset: int = 1) -> torch.Tensor:
    """A contiguous copy of x whose data pointer is ``offset`` bytes past an aligned buffer."""
    nbytes = x.numel() * x.element_size()
    buf = torch.empty(nbytes + offset, dtype=torch.uint8, device=x.device)
    out = buf[offset:].view(x.dtype).view(x.shape)
    out.copy_(x)
    return out


def seed_inputs(
    b: int, h: int, w: int, *, seed: int, levels: int = 20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """bins int32 (B, H, W), seed float32 (B, H, W) with many ties, thr_fg, thr_bg (B,).

    Thresholds as FAME computes them: thr_fg the kF-th largest, thr_bg the kB-th smallest seed
    value, kF = int(0.5 H W), kB = int(0.1 H W) (+inf / -inf when k = 0).
    """
    g = torch.Generator().manual_seed(seed)
    hot = torch.randint(0, 1000, (b, 1, 1), generator=g)
    bins = torch.randint(0, 1000, (b, h, w), generator=g)
    bins = torch.where(torch.rand(b, h, w, generator=g) < 0.3, hot, bins).to(torch.int32)
    seed_map = torch.randint(0, levels, (b, h, w), generator=g).float() / (levels - 1)
    flat = seed_map.view(b, -1)
    k_fg, k_bg = int(0.5 * h * w), int(0.1 * h * w)
    desc = flat.sort(dim=1, descending=True).values
    asc = flat.sort(dim=1).values
    inf = torch.full((b,), float("inf"))
    thr_fg = desc[:, k_fg - 1] if k_fg > 0 else inf
    thr_bg = asc[:, k_bg - 1] if k_bg > 0 else -inf
    return bins.contiguous(), seed_map.contiguous(), thr_fg.contiguous(), thr_bg.contiguous()

"""Public FAME functions: the mask, the merge, the fused merge + normalise, the permutation.

Clips are uint8 (B, T, H, W, 3) RGB channels-last (DALI's layout) on CPU or CUDA. Floating-point
clips in [0, 1] are accepted too: :func:`fame_mask` quantises them to the nearest uint8 level
(``round(x * 255)``, half to even), so a float clip equal to ``uint8 / 255`` gives exactly the
uint8 clip's mask; :func:`fame_merge` selects float pixels as they are.

No randomness inside the ops: the permutation is an input (draw it with
:func:`random_permutation` from a ``torch.Generator``).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from dali_fame.fame import ops as _ops
from dali_fame.fame.dispatch import resolve_ops
from dali_fame.fame.reference import check_background, check_clips, permuted
from dali_fame.fame.variants import VARIANTS, check_grid_beta, gauss_score, grid_mask

__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    "as_uint8",
    "fame_mask",
    "fame_merge",
    "fame_merge_normalize",
    "nvtx_range",
    "random_permutation",
]

#: Kinetics-400 normalisation statistics on the [0, 1] scale (spec section 5)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def nvtx_range(name: str, tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """An NVTX range named ``name`` when ``tensor`` is on CUDA (Nsight shows it), else a no-op."""
    if tensor.is_cuda:
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"dali_fame.fame: {name} must be in [0, 1], got {value}")


def as_uint8(clips: torch.Tensor) -> torch.Tensor:
    """Validate a clip batch and return it as contiguous uint8 (B, T, H, W, 3).

    Args:
        clips: uint8 (B, T, H, W, 3), or floating point in [0, 1] (quantised with
            ``round(x * 255)``, round half to even).

    Raises:
        ValueError: wrong rank / layout / dtype, T < 2, or float values outside [0, 1].
    """
    check_clips(clips, allow_float=True)
    if clips.dtype == torch.uint8:
        return clips.contiguous()
    lo, hi = torch.aminmax(clips)
    if not (float(lo) >= 0.0 and float(hi) <= 1.0):  # also false for NaN
        raise ValueError(
            "dali_fame.fame: float clips must lie in [0, 1], got values in "
            f"[{float(lo)}, {float(hi)}]"
        )
    return (clips.float() * 255.0).round_().to(torch.uint8).contiguous()


def fame_mask(
    clips: torch.Tensor,
    *,
    beta: float = 0.5,
    variant: str = "fame",
    legacy_hue: bool = False,
    fg_fraction: float = 0.5,
    bg_fraction: float = 0.1,
    backend: str = "auto",
) -> torch.Tensor:
    """The FAME foreground mask of each clip (spec sections 1 and 3).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, T >= 2, on CPU or CUDA (or float in
            [0, 1], see :func:`as_uint8`).
        beta: foreground fraction: exactly int(beta * H * W) pixels per clip are 1. beta = 1 keeps
            every pixel (FAME disabled), beta = 0 none. The grid variant takes 8 whole cells
            of 16 instead and requires beta = 0.5.
        variant: "fame" (default), "seed", "gauss" or "grid" (:mod:`dali_fame.fame.variants`).
        legacy_hue: reproduce the released code's doubly scaled hue angle (spec step 4).
        fg_fraction, bg_fraction: sizes of the foreground / background seed sets as fractions of
            H * W (spec step 5; 0.5 and 0.1 as in the paper).
        backend: "auto", "torch" or "cuda" (:mod:`dali_fame.fame.dispatch`).

    Returns:
        bool (B, H, W) on the clips' device, exactly int(beta * H * W) True per clip. Ties go to
        the lower row-major pixel index.
    """
    for value, name in ((beta, "beta"), (fg_fraction, "fg_fraction"), (bg_fraction, "bg_fraction")):
        _check_fraction(value, name)
    if variant not in VARIANTS:
        raise ValueError(f"dali_fame.fame: variant must be one of {VARIANTS}, got {variant!r}")
    check_grid_beta(variant, beta)
    x = as_uint8(clips)
    impl = resolve_ops(backend, x.device)
    bsz, _, h, w, _ = x.shape
    num_fg = int(beta * h * w)  # left to right, as the released code evaluates it
    with nvtx_range("fame_mask", x):
        if impl.fame_mask is not None and variant in ("fame", "seed"):
            # CUDA: the whole mask as one fixed sequence of kernels, no torch op in between
            # (dali_fame.fame.cuda.run_fame_mask), bit-identical to the torch path below
            return impl.fame_mask(
                x,
                beta=beta,
                variant=variant,
                legacy_hue=legacy_hue,
                fg_fraction=fg_fraction,
                bg_fraction=bg_fraction,
            )
        if variant == "gauss":
            score = gauss_score(bsz, h, w, device=x.device)
        else:
            with nvtx_range("fame_motion_and_bins", x):
                motion, bins = impl.motion_and_bins(x, legacy_hue=legacy_hue)
            with nvtx_range("fame_seed_blur", x):
                seed = _ops.minmax(_ops.gaussian_blur(motion))
            if variant == "seed":
                score = seed
            elif variant == "grid":
                return grid_mask(seed)
            else:
                k_fg = int(fg_fraction * h * w)
                k_bg = int(bg_fraction * h * w)
                with nvtx_range("fame_seed_thresholds", x):
                    thr_fg, thr_bg = _ops.seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)
                with nvtx_range("fame_color_histograms", x):
                    counts = impl.color_histograms(bins, seed, thr_fg, thr_bg)
                with nvtx_range("fame_soft_mask", x):
                    p_fg, p_bg = _ops.likelihoods(counts, k_fg=k_fg, k_bg=k_bg)
                    score = _ops.minmax(_ops.gaussian_blur(_ops.soft_mask(bins, p_fg, p_bg)))
        with nvtx_range("fame_select", x):
            return _ops.select_top(score, num_fg)


def _check_perm(perm: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    if (
        not isinstance(perm, torch.Tensor)
        or perm.dtype != torch.int64
        or perm.shape != (batch_size,)
    ):
        got = f"{perm.dtype} {tuple(perm.shape)}" if isinstance(perm, torch.Tensor) else type(perm)
        raise ValueError(f"dali_fame.fame: perm must be an int64 tensor ({batch_size},), got {got}")
    # A kernel would read out of bounds with a bad index. A CPU perm (the trainer draws it on
    # its CPU generator) is checked on the host and sent in one pinned non-blocking copy: no
    # wait for the GPU. A perm already on the GPU costs one tiny host read to check.
    if not torch.equal(perm.cpu().sort().values, torch.arange(batch_size)):
        raise ValueError(f"dali_fame.fame: perm must be a permutation of 0..{batch_size - 1}")
    if perm.device.type == "cpu" and device.type == "cuda":
        return perm.pin_memory().to(device, non_blocking=True)
    return perm.to(device)


_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (3,) mean and std on ``device``, built once per (values, device): a fresh
    ``torch.tensor(..., device=cuda)`` per call is a pageable copy that waits for the GPU."""
    key = (tuple(float(v) for v in mean), tuple(float(v) for v in std), str(device))
    if key not in _STATS:
        _STATS[key] = (torch.tensor(key[0], dtype=torch.float32).to(device),
                       torch.tensor(key[1], dtype=torch.float32).to(device))
    return _STATS[key]


def _check_mask(mask: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    bsz, _, h, w, _ = clips.shape
    if (
        not isinstance(mask, torch.Tensor)
        or mask.shape != (bsz, h, w)
        or mask.dtype not in (torch.bool, torch.uint8)
    ):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask)
        raise ValueError(f"dali_fame.fame: mask must be bool or uint8 ({bsz}, {h}, {w}), got {got}")
    if mask.device != clips.device:
        raise ValueError(
            f"dali_fame.fame: mask is on {mask.device} but the clips are on {clips.device}"
        )
    return mask.contiguous()


def _check_background(background: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    check_background(background, clips)
    return background.contiguous()


def _select(
    clips: torch.Tensor, mask: torch.Tensor, background: torch.Tensor, perm: torch.Tensor
) -> torch.Tensor:
    """out[b] = clips[b] where mask[b] else background[perm[b]], for float clips (uint8 clips go
    to the backend's merge kernel)."""
    out = torch.empty_like(clips)
    keep = mask.bool()[:, None, :, :, None]
    for b, bg in enumerate(permuted(background, perm)):  # no host read of a GPU perm
        torch.where(keep[b], clips[b], bg, out=out[b])
    return out


def fame_merge(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Foreground-background merge (spec section 2): a per-pixel select over all frames.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last (or float in [0, 1]).
        mask: bool or uint8 (B, H, W) on the clips' device; nonzero = foreground.
        perm: int64 (B,), a permutation of the batch (CPU or the clips' device).
        background: None (inter-video: backgrounds come from ``clips[perm]``) or a clip batch like
            ``clips`` (intra-video: backgrounds come from ``background[perm]``, usually with the
            identity permutation). uint8 clips take one kernel either way.
        backend: "auto", "torch" or "cuda".

    Returns:
        (B, T, H, W, 3) of the clips' dtype: clips[b] where mask[b], the background elsewhere.
    """
    check_clips(clips, allow_float=True)
    clips = clips.contiguous()
    mask = _check_mask(mask, clips)
    perm = _check_perm(perm, clips.shape[0], clips.device)
    impl = resolve_ops(backend, clips.device)
    bg = None if background is None else _check_background(background, clips)
    with nvtx_range("fame_merge", clips):
        if clips.dtype == torch.uint8:
            return impl.merge(clips, mask, perm, background=bg)
        return _select(clips, mask, clips if bg is None else bg, perm)


def fame_merge_normalize(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    *,
    mean: tuple[float, float, float] = KINETICS_MEAN,
    std: tuple[float, float, float] = KINETICS_STD,
    background: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Merge fused with normalisation: the float (B, 3, T, H, W) tensor the model eats.

    Args:
        clips, mask, perm, background, backend: as :func:`fame_merge`.
        mean, std: per-channel statistics on the [0, 1] scale (Kinetics-400 by default).

    Returns:
        float32 (B, 3, T, H, W) contiguous: ``(x / 255 - mean) / std`` of the merged uint8 clip
        (``(x - mean) / std`` for float clips).
    """
    check_clips(clips, allow_float=True)
    clips = clips.contiguous()
    mask = _check_mask(mask, clips)
    perm = _check_perm(perm, clips.shape[0], clips.device)
    impl = resolve_ops(backend, clips.device)
    mean_t, std_t = _stats(mean, std, clips.device)
    bg = None if background is None else _check_background(background, clips)
    with nvtx_range("fame_merge_normalize", clips):
        if clips.dtype == torch.uint8:
            return impl.merge_normalize(clips, mask, perm, mean_t, std_t, background=bg)
        # float clips in [0, 1]: a torch select, then the normalisation
        merged = _select(clips, mask, clips if bg is None else bg, perm)
        merged = merged.permute(0, 4, 1, 2, 3).float()
        view = (3, 1, 1, 1)
        return ((merged - mean_t.view(view)) / std_t.view(view)).contiguous()


def random_permutation(
    batch_size: int, *, generator: torch.Generator | None, derangement: bool = True
) -> torch.Tensor:
    """A random permutation of the batch, to pick each clip's background.

    Args:
        batch_size: B >= 1.
        generator: the source of randomness (None: torch's global generator). The result lives on
            the generator's device.
        derangement: True (default): no clip gets its own background, drawn uniformly among
            derangements (rejection sampling, e / 1 tries on average). False: any permutation, as
            the released code (self-pairing with probability 1/B per clip).

    Returns:
        int64 (B,). With B = 1 a derangement does not exist: the identity is returned with a
        RuntimeWarning (the merge then leaves that clip unchanged).
    """
    if batch_size < 1:
        raise ValueError(f"dali_fame.fame: batch_size must be >= 1, got {batch_size}")
    device = generator.device if generator is not None else torch.device("cpu")
    if batch_size == 1:
        if derangement:
            warnings.warn(
                "dali_fame.fame: a batch of one clip has no derangement; the clip keeps its own "
                "background (FAME leaves it unchanged)",
                RuntimeWarning,
                stacklevel=2,
            )
        return torch.zeros(1, dtype=torch.int64, device=device)
    identity = torch.arange(batch_size, device=device)
    while True:
        perm = torch.randperm(batch_size, generator=generator, device=device)
        if not derangement or not bool((perm == identity).any()):
            return perm

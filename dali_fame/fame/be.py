"""Background Erasing (BE, Wang et al. CVPR 2021), the baseline FAME is compared with (spec
section 4).

x_hat[t] = (1 - lam) * x[t] + lam * x[k] for every frame t, with k a random frame of the same clip
and lam ~ U(0, gamma). dali_fame draws one lam per clip (``per_clip=True``); the released code
draws one per batch (``per_clip=False``). The frame k is drawn per clip in both cases. The random
draws come from a ``torch.Generator`` (:func:`be_params`) and are inputs of the arithmetic
(:func:`background_erasing_apply`).
"""

from __future__ import annotations

import torch

from dali_fame.fame.api import nvtx_range

__all__ = ["background_erasing", "background_erasing_apply", "be_params"]


def be_params(
    batch_size: int,
    num_frames: int,
    *,
    gamma: float = 0.3,
    generator: torch.Generator | None = None,
    per_clip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw BE's random parameters.

    Args:
        batch_size: B >= 1.
        num_frames: T >= 1 frames per clip.
        gamma: lam ~ U(0, gamma), gamma in [0, 1] (0.3 in the BE paper).
        generator: source of randomness (None: torch's global generator); the draws live on its
            device.
        per_clip: one lam per clip (True) or one shared by the batch (False, released code).

    Returns:
        lam: float32 (B,) in [0, gamma).
        frame: int64 (B,) in 0..T-1, the frame each clip adds to all its frames.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"dali_fame.fame: BE gamma must be in [0, 1], got {gamma}")
    if batch_size < 1 or num_frames < 1:
        raise ValueError(
            f"dali_fame.fame: BE needs batch_size >= 1 and num_frames >= 1, got "
            f"{batch_size} and {num_frames}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    n_lam = batch_size if per_clip else 1
    lam = torch.rand(n_lam, generator=generator, device=device) * gamma
    frame = torch.randint(0, num_frames, (batch_size,), generator=generator, device=device)
    return lam.expand(batch_size).contiguous(), frame


def _check_be_clips(clips: torch.Tensor) -> None:
    if not isinstance(clips, torch.Tensor) or clips.dim() != 5 or clips.shape[-1] != 3:
        shape = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips)
        raise ValueError(f"dali_fame.fame: BE clips must be (B, T, H, W, 3), got {shape}")
    if not (clips.dtype == torch.uint8 or clips.dtype.is_floating_point):
        raise ValueError(f"dali_fame.fame: BE clips must be uint8 or float, got {clips.dtype}")
    if clips.shape[0] < 1 or clips.shape[1] < 1:
        raise ValueError(f"dali_fame.fame: BE clips are empty, shape {tuple(clips.shape)}")


def background_erasing_apply(
    clips: torch.Tensor, lam: torch.Tensor, frame: torch.Tensor
) -> torch.Tensor:
    """x_hat[b, t] = (1 - lam[b]) * x[b, t] + lam[b] * x[b, frame[b]].

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, or float (any range).
        lam: float (B,) mixing weights.
        frame: int64 (B,) frame indices in 0..T-1.

    Returns:
        Same shape and dtype as ``clips``. uint8 results are computed in float32 on the 0..255
        scale and rounded to nearest (half to even); the convex combination needs no clamping.
    """
    _check_be_clips(clips)
    bsz, t = clips.shape[:2]
    if lam.shape != (bsz,) or frame.shape != (bsz,):
        raise ValueError(f"dali_fame.fame: BE lam and frame must have shape ({bsz},)")
    frames = frame.tolist()
    if any(not 0 <= k < t for k in frames):
        raise ValueError(f"dali_fame.fame: BE frame indices must lie in 0..{t - 1}, got {frames}")
    out = torch.empty_like(clips)
    with nvtx_range("fame_background_erasing", clips):
        for b, (k, a) in enumerate(zip(frames, lam.tolist())):
            x = clips[b] if clips.dtype.is_floating_point else clips[b].float()
            mixed = x * (1.0 - a) + x[k] * a  # x[k] broadcasts over the frames
            out[b] = mixed.round_() if clips.dtype == torch.uint8 else mixed
    return out


def background_erasing(
    clips: torch.Tensor,
    *,
    gamma: float = 0.3,
    generator: torch.Generator | None = None,
    per_clip: bool = True,
) -> torch.Tensor:
    """Background Erasing of a clip batch (draw with :func:`be_params`, then apply).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last (or float).
        gamma, generator, per_clip: as :func:`be_params`.

    Returns:
        Same shape and dtype as ``clips``.
    """
    _check_be_clips(clips)
    lam, frame = be_params(
        clips.shape[0], clips.shape[1], gamma=gamma, generator=generator, per_clip=per_clip
    )
    return background_erasing_apply(clips, lam, frame)

"""Small clip generators for the FAME tests (numpy; no video files needed)."""

from __future__ import annotations

import numpy as np
import torch


def _smooth_texture(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """float (size, size) in [0, 1]: coarse random cells, bilinearly interpolated."""
    n = size // cell + 2
    coarse = rng.random((n, n))
    pos = np.arange(size) / cell
    i0 = np.floor(pos).astype(int)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def moving_square_clips(
    batch: int,
    frames: int,
    size: int,
    *,
    seed: int,
    noise: float = 3.0,
    square: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured squares moving over textured static backgrounds, with sensor-like noise.

    The background is a greenish-blue texture, the square a reddish one, so colour separates
    them as FAME assumes; Gaussian noise (std ``noise`` levels) on every frame and pixel makes
    exact ties of the motion map and the masks practically impossible.

    Returns:
        clips: uint8 (B, T, H, W, 3) RGB, H = W = size.
        swept: bool (B, H, W), the union of the square's positions over the frames.
    """
    rng = np.random.default_rng(seed)
    side = square or max(2, size // 4)
    clips = np.empty((batch, frames, size, size, 3), dtype=np.uint8)
    swept = np.zeros((batch, size, size), dtype=bool)
    for b in range(batch):
        tex = _smooth_texture(rng, size, max(2, size // 8))
        bg = np.stack([0.15 + 0.2 * tex, 0.35 + 0.4 * tex, 0.45 + 0.4 * (1 - tex)], axis=-1)
        ftex = _smooth_texture(rng, side, max(2, side // 3))
        fg = np.stack([0.7 + 0.3 * ftex, 0.15 + 0.3 * ftex, 0.1 + 0.2 * (1 - ftex)], axis=-1)
        y, x = rng.uniform(0, size - side, size=2)
        vy, vx = rng.uniform(-1, 1, size=2) * size / (2.0 * frames) + 0.5
        for t in range(frames):
            frame = bg.copy()
            yi, xi = round(y), round(x)
            frame[yi : yi + side, xi : xi + side] = fg
            swept[b, yi : yi + side, xi : xi + side] = True
            frame = frame * 255 + rng.normal(0, noise, size=frame.shape)
            clips[b, t] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
            # bounce off the borders
            if not 0 <= y + vy <= size - side:
                vy = -vy
            if not 0 <= x + vx <= size - side:
                vx = -vx
            y, x = y + vy, x + vx
    return torch.from_numpy(clips), torch.from_numpy(swept)


def to_bcthw(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W) on the [0, 1] scale (research layout)."""
    return clips.permute(0, 4, 1, 2, 3).float() / 255.0

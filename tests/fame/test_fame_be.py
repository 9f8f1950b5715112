"""Background Erasing (spec section 4)."""

from __future__ import annotations

import pytest
import torch

from dali_fame.fame import (
    BackgroundErasing,
    background_erasing,
    background_erasing_apply,
    be_params,
)


def _clips(shape=(6, 5, 7, 9, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def test_params_bounds_and_per_clip_vs_per_batch():
    g = torch.Generator().manual_seed(0)
    lam, frame = be_params(500, 16, gamma=0.3, generator=g)
    assert lam.dtype == torch.float32 and frame.dtype == torch.int64
    assert lam.min() >= 0 and lam.max() < 0.3
    assert lam.max() > 0.25 and lam.min() < 0.05  # U(0, 0.3) covers its range
    assert len(set(lam.tolist())) > 490  # one draw per clip
    assert frame.min() >= 0 and frame.max() <= 15 and len(set(frame.tolist())) == 16
    lam_b, frame_b = be_params(500, 16, gamma=0.3, generator=g, per_clip=False)
    assert len(set(lam_b.tolist())) == 1 and 0 <= lam_b[0] < 0.3  # one lam for the batch
    assert len(set(frame_b.tolist())) > 1  # the added frame is still drawn per clip
    with pytest.raises(ValueError, match="gamma"):
        be_params(2, 4, gamma=1.5)


def test_apply_matches_the_formula():
    clips = _clips()
    lam = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.05, 0.25])
    frame = torch.tensor([0, 1, 4, 2, 3, 0])
    out = background_erasing_apply(clips, lam, frame)
    x = clips.double()
    static = x[torch.arange(6), frame][:, None]  # (B, 1, H, W, 3)
    expected = (1 - lam.double().view(6, 1, 1, 1, 1)) * x + lam.double().view(
        6, 1, 1, 1, 1
    ) * static
    assert out.dtype == torch.uint8
    assert (out.double() - expected).abs().max() <= 0.5 + 1e-3  # rounded to nearest
    assert torch.equal(out[0], clips[0])  # lam = 0: unchanged
    # The added frame itself is a fixed point: (1 - lam) x_k + lam x_k = x_k.
    assert torch.equal(out[2, 4], clips[2, 4])
    out_f = background_erasing_apply(clips.float() / 255, lam, frame)
    torch.testing.assert_close(out_f.double(), expected / 255, atol=1e-6, rtol=0)


def test_background_erasing_is_reproducible_and_gamma_zero_is_identity():
    clips = _clips()
    a = background_erasing(clips, generator=torch.Generator().manual_seed(3))
    b = background_erasing(clips, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, clips)
    assert torch.equal(background_erasing(clips, gamma=0.0, generator=torch.Generator()), clips)


def test_be_module_views():
    clips = _clips()
    view1 = clips.flip(1).contiguous()
    out = BackgroundErasing(gamma=0.3)(clips, view1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.view1, view1) and out.lam1 is None
    assert torch.equal(out.view0, background_erasing_apply(clips, out.lam0, out.frame0))
    both = BackgroundErasing(both=True, per_clip=False)(clips, view1, generator=torch.Generator())
    assert len(set(both.lam0.tolist())) == 1 and len(set(both.lam1.tolist())) == 1
    assert torch.equal(both.view1, background_erasing_apply(view1, both.lam1, both.frame1))


def test_be_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        background_erasing(torch.zeros(2, 3, 4, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        background_erasing(torch.zeros(2, 4, 5, 5, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="frame indices"):
        background_erasing_apply(_clips(), torch.zeros(6), torch.full((6,), 9))

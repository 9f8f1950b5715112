"""Clip-consistent augmentation: one draw per clip, torchvision-equal ops, probabilities,
normalisation, determinism, devices."""

from __future__ import annotations

import pytest
import torch

from dali_fame.augment import (
    K400_MEAN,
    K400_STD,
    ClipAugment,
    blur_kernel_size,
    torchvision_reference,
)

MEAN = torch.tensor(K400_MEAN).view(1, 3, 1, 1, 1)
STD = torch.tensor(K400_STD).view(1, 3, 1, 1, 1)


def _clips(b: int, t: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, s, s, 3), dtype=torch.uint8, generator=g)


def test_shape_dtype_and_ops_equal_torchvision_per_frame():
    clips = _clips(12, 3, 24)
    aug = ClipAugment(crop=24, jitter_p=0.7, gray_p=0.3, blur_p=0.5)
    params = aug.draw(12, torch.Generator().manual_seed(3))
    # the draw covers each branch at least once with this seed (checked, not assumed)
    assert 0 < params.jitter.sum() < 12 and 0 < params.gray.sum() and 0 < params.blur.sum()
    out = aug(clips, params=params)
    assert out.dtype == torch.float32 and out.shape == (12, 3, 3, 24, 24)
    assert out.is_contiguous()  # NCDHW, the layout both encoders get
    torch.testing.assert_close(out, torchvision_reference(aug, clips, params), atol=2e-4, rtol=1e-4)


def test_every_frame_of_a_clip_gets_the_same_transform():
    frame = _clips(16, 1, 32, seed=1)
    clips = frame.expand(-1, 5, -1, -1, -1).contiguous()  # 5 identical frames per clip
    out = ClipAugment(crop=32)(clips, generator=torch.Generator().manual_seed(0))
    for t in range(1, 5):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0], atol=0, rtol=0)
    # ... and the clips are not all transformed alike (draws are per clip)
    single = ClipAugment(crop=32)(frame, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(single[0], single[1])


def test_probabilities_per_clip():
    aug = ClipAugment(crop=8)
    n = 20000
    p = aug.draw(n, torch.Generator().manual_seed(5))
    for flags, prob in ((p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5)):
        assert abs(flags.float().mean().item() - prob) < 0.015
    assert 0.6 <= p.brightness.min() and p.brightness.max() <= 1.4
    assert -0.1 <= p.hue.min() and p.hue.max() <= 0.1
    assert 0.1 <= p.sigma.min() and p.sigma.max() <= 2.0
    first = torch.bincount(p.order[:, 0], minlength=4).float() / n  # random jitter order
    assert torch.all((first - 0.25).abs() < 0.02)
    # On the pixels: grayscale clips have R == G == B after undoing the normalisation.
    clips = _clips(2000, 1, 4, seed=2)
    out = ClipAugment(crop=4)(clips, generator=torch.Generator().manual_seed(6)) * STD + MEAN
    gray = (out.max(dim=1).values - out.min(dim=1).values).amax(dim=(1, 2, 3)) < 1e-5
    assert abs(gray.float().mean().item() - 0.2) < 0.03


def test_normalisation_alone_is_k400_standardisation():
    clips = _clips(3, 2, 8)
    out = ClipAugment(crop=8, jitter_p=0, gray_p=0, blur_p=0)(clips)
    x = clips.permute(0, 4, 1, 2, 3).float() / 255
    torch.testing.assert_close(out, (x - MEAN) / STD)
    # A clip of the K400 mean colour maps to ~0 in every channel (mean/std in RGB order).
    mean_rgb = torch.tensor(K400_MEAN) * 255
    grey = mean_rgb.round().to(torch.uint8).view(1, 1, 1, 1, 3).expand(1, 2, 8, 8, 3)
    out = ClipAugment(crop=8, jitter_p=0, gray_p=0, blur_p=0)(grey.contiguous())
    assert out.abs().max() < 0.5 / 255 / min(K400_STD)


def test_seeded_generator_is_deterministic():
    clips = _clips(6, 4, 16)
    aug = ClipAugment(crop=16)
    a = aug(clips, generator=torch.Generator().manual_seed(11))
    b = aug(clips, generator=torch.Generator().manual_seed(11))
    c = aug(clips, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blur_kernel_scales_with_crop_and_bad_input_is_rejected():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(112) == 11
    with pytest.raises(ValueError, match="uint8"):
        ClipAugment(crop=8)(torch.zeros(1, 2, 8, 8, 3))
    with pytest.raises(ValueError, match="gray_p"):
        ClipAugment(crop=8, gray_p=1.5)


@pytest.mark.cuda
def test_same_result_on_cuda():
    clips = _clips(6, 4, 16)
    aug = ClipAugment(crop=16)
    cpu = aug(clips, generator=torch.Generator().manual_seed(1))
    gpu = aug(clips.cuda(), generator=torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_grayscale_comes_before_the_jitter():
    """A saturated red pixel made gray (luma 0.299) then brightened x1.4 is 0.419; brightened
    first it clamps at 1 and its luma stays 0.299: the two orders differ."""
    clips = torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8)
    clips[..., 0] = 255
    aug = ClipAugment(crop=4, jitter_p=1.0, gray_p=1.0, blur_p=0.0)
    params = aug.draw(1, torch.Generator().manual_seed(0))
    params.brightness[:] = 1.4
    params.contrast[:] = params.saturation[:] = 1.0
    params.hue[:] = 0.0
    out = aug(clips, params=params) * STD + MEAN  # back to [0, 1]
    torch.testing.assert_close(out, torch.full_like(out, 0.2989 * 1.4), atol=1e-5, rtol=0)

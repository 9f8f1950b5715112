"""Backbones: registry, forward/backward on small clips, parameter counts recomputed from the
published architectures, TF "SAME" padding of I3D, torchvision state-dict compatibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from dali_fame.models import build_backbone, list_backbones
from dali_fame.models.i3d import MaxPool3dSamePadding, Unit3D

# (name, clip shape (B, 3, T, H, W), feature_dim): small clips keep the CPU suite fast.
CASES = [
    ("r2plus1d_18", (2, 3, 8, 32, 32), 512),
    ("r3d_18", (2, 3, 8, 32, 32), 512),
    ("i3d", (2, 3, 8, 64, 64), 1024),
    ("tiny", (2, 3, 16, 64, 64), 64),
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_and_rejects_unknown():
    assert list_backbones() == ["i3d", "i3d_sonnet", "r2plus1d_18", "r3d_18", "tiny"]
    with pytest.raises(ValueError, match="r2plus1d_18"):
        build_backbone("resnet50")


@pytest.mark.parametrize("name,shape,feature_dim", CASES, ids=[c[0] for c in CASES])
def test_forward_backward(name, shape, feature_dim):
    torch.manual_seed(0)
    model = build_backbone(name)
    assert model.feature_dim == feature_dim
    assert model.classifier_input_dim == feature_dim
    x = torch.randn(shape)
    feats = model(x)
    assert feats.shape == (shape[0], feature_dim)
    assert feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    # The two clips differ, so their features must too (a collapsed or constant output fails).
    assert not torch.allclose(feats[0], feats[1])
    feats.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    first = next(model.parameters())
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["r2plus1d_18", "i3d", "tiny"])
def test_rejects_wrong_layout(name):
    model = build_backbone(name)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.zeros(1, 8, 32, 32, 3))  # channels-last uint8-style layout


# ---------------------------------------------------------------- parameter counts


def conv_bn(cin: int, cout: int, kernel: tuple[int, int, int]) -> int:
    """A bias-free conv3d followed by a BatchNorm (weight + bias)."""
    return cin * cout * kernel[0] * kernel[1] * kernel[2] + 2 * cout


def r2plus1d_18_count() -> int:
    """Tran et al. 2018 as torchvision builds it: (2+1)D factorisation with
    M = floor(27 * Nin * Nout / (9 * Nin + 3 * Nout)) intermediate channels, 45-channel stem."""
    total = conv_bn(3, 45, (1, 7, 7)) + conv_bn(45, 64, (3, 1, 1))  # R2Plus1dStem
    inplanes = 64
    for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block in range(2):
            cin = inplanes if block == 0 else planes
            mid = (cin * planes * 27) // (cin * 9 + 3 * planes)
            # conv1: cin -> planes; conv2: planes -> planes (the same M for both, as torchvision)
            total += conv_bn(cin, mid, (1, 3, 3)) + conv_bn(mid, planes, (3, 1, 1))
            total += conv_bn(planes, mid, (1, 3, 3)) + conv_bn(mid, planes, (3, 1, 1))
            if block == 0 and (stride != 1 or cin != planes):
                total += conv_bn(cin, planes, (1, 1, 1))  # projection shortcut
        inplanes = planes
    return total


def r3d_18_count() -> int:
    total = conv_bn(3, 64, (3, 7, 7))  # BasicStem
    inplanes = 64
    for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block in range(2):
            cin = inplanes if block == 0 else planes
            total += conv_bn(cin, planes, (3, 3, 3)) + conv_bn(planes, planes, (3, 3, 3))
            if block == 0 and (stride != 1 or cin != planes):
                total += conv_bn(cin, planes, (1, 1, 1))
        inplanes = planes
    return total


def i3d_count() -> int:
    """Carreira & Zisserman 2017, Inception-v1 widths (GoogLeNet table 1, 3x3 in branch 2)."""
    total = conv_bn(3, 64, (7, 7, 7)) + conv_bn(64, 64, (1, 1, 1)) + conv_bn(64, 192, (3, 3, 3))
    cin = 192
    for w0, w1a, w1b, w2a, w2b, w3 in [
        (64, 96, 128, 16, 32, 32),  # 3b
        (128, 128, 192, 32, 96, 64),  # 3c
        (192, 96, 208, 16, 48, 64),  # 4b
        (160, 112, 224, 24, 64, 64),  # 4c
        (128, 128, 256, 24, 64, 64),  # 4d
        (112, 144, 288, 32, 64, 64),  # 4e
        (256, 160, 320, 32, 128, 128),  # 4f
        (256, 160, 320, 32, 128, 128),  # 5b
        (384, 192, 384, 48, 128, 128),  # 5c
    ]:
        one = (1, 1, 1)
        total += conv_bn(cin, w0, one)
        total += conv_bn(cin, w1a, one) + conv_bn(w1a, w1b, (3, 3, 3))
        total += conv_bn(cin, w2a, one) + conv_bn(w2a, w2b, (3, 3, 3))
        total += conv_bn(cin, w3, one)
        cin = w0 + w1b + w2b + w3
    assert cin == 1024
    return total


def test_parameter_counts():
    r2 = n_params(build_backbone("r2plus1d_18"))
    r3 = n_params(build_backbone("r3d_18"))
    i3 = n_params(build_backbone("i3d"))
    assert r2 == r2plus1d_18_count() == 31_300_125
    assert r3 == r3d_18_count() == 33_166_272
    assert i3 == i3d_count() == 12_287_264
    assert abs(i3 - 12.3e6) / 12.3e6 < 0.01  # "about 12.3 M without the head"
    # And torchvision's own networks minus their 512 x 400 + 400 classifier.
    for ours, tv in [
        (r2, torchvision.models.video.r2plus1d_18()),
        (r3, torchvision.models.video.r3d_18()),
    ]:
        assert ours == n_params(tv) - n_params(tv.fc)


# ---------------------------------------------------------------- I3D specifics


def test_unit3d_tf_same_padding_is_asymmetric():
    # H = W = 4, kernel 3, stride 2: TF "SAME" gives 2 outputs and pads 1 pixel AFTER only,
    # so output (0, 0) sums input rows/cols 0..2 and output (1, 1) sums rows/cols 2..3.
    unit = Unit3D(
        1, 1, kernel_size=(1, 3, 3), stride=(1, 2, 2), use_batch_norm=False, activation=False
    )
    with torch.no_grad():
        unit.conv3d.weight.fill_(1.0)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 1, 4, 4)
    y = unit(x)[0, 0, 0]
    img = x[0, 0, 0]
    assert y.shape == (2, 2)
    assert y[0, 0] == img[0:3, 0:3].sum()
    assert y[1, 1] == img[2:4, 2:4].sum()
    assert y[0, 1] == img[0:3, 2:4].sum()
    # PyTorch's symmetric padding=1 would give a different top-left value.
    sym = F.conv3d(x, unit.conv3d.weight, stride=(1, 2, 2), padding=(0, 1, 1))[0, 0, 0]
    assert sym[0, 0] != y[0, 0]


def test_maxpool_same_padding_ignores_padded_cells():
    pool = MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))
    x = -1.0 - torch.arange(16, dtype=torch.float32).reshape(1, 1, 1, 4, 4)  # all negative
    y = pool(x)[0, 0, 0]
    img = x[0, 0, 0]
    assert y.shape == (2, 2)
    assert y[1, 1] == img[2:4, 2:4].max()  # a zero pad would have won here
    assert y[0, 0] == img[0:3, 0:3].max()


def test_i3d_end_point_shapes_follow_ceil_division():
    model = build_backbone("i3d").eval()
    seen = {}
    model.Mixed_5c.register_forward_hook(lambda m, i, o: seen.update(out=o.shape))
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 9, 37, 41))
    # T: 9 -> 5 (conv 1a) -> 3 (pool 4a) -> 2 (pool 5a); H: 37 -> 19 -> 10 -> 5 -> 3 -> 2;
    # W: 41 -> 21 -> 11 -> 6 -> 3 -> 2 (ceil at every stride 2, as TF "SAME").
    assert seen["out"] == (1, 1024, 2, 2, 2)
    assert feats.shape == (1, 1024)


# ---------------------------------------------------------------- torchvision compatibility


def test_r2plus1d_loads_torchvision_state_dict():
    torch.manual_seed(1)
    tv = torchvision.models.video.r2plus1d_18()
    ours = build_backbone("r2plus1d_18")
    dropped = ours.load_torchvision_state_dict(tv.state_dict())
    assert sorted(dropped) == ["fc.bias", "fc.weight"]
    tv.fc = torch.nn.Identity()
    tv.eval()
    ours.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


def test_r3d_keeps_torchvision_names():
    tv_keys = {k for k in torchvision.models.video.r3d_18().state_dict() if not k.startswith("fc.")}
    assert set(build_backbone("r3d_18").state_dict()) == tv_keys


def test_tiny_width_option():
    model = build_backbone("tiny", width=32)
    assert model.feature_dim == 32
    assert model(torch.randn(2, 3, 8, 64, 64)).shape == (2, 32)
    with pytest.raises(ValueError, match="width"):
        build_backbone("tiny", width=30)


@pytest.mark.parametrize(("name", "eps", "momentum"),
                         [("i3d", 1e-5, 0.1), ("i3d_sonnet", 1e-3, 0.01)])
def test_i3d_batchnorm_settings(name, eps, momentum):
    """Default: PyTorch's BatchNorm (the released FAME I3D); i3d_sonnet: the Sonnet original's."""
    bns = [m for m in build_backbone(name).modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 57
    assert {(m.eps, m.momentum) for m in bns} == {(eps, momentum)}

"""Properties of the public FAME API on CPU (spec sections 1-3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fame_clips import moving_square_clips

from dali_fame.fame import (
    FAME,
    VARIANTS,
    fame_mask,
    fame_merge,
    fame_merge_normalize,
    random_permutation,
)
from dali_fame.fame.be import be_params
from dali_fame.fame.dispatch import resolve_ops
from dali_fame.fame.module import BackgroundErasing


def _random_clips(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def scene():
    """uint8 (3, 8, 48, 48, 3) moving squares and their swept regions."""
    return moving_square_clips(3, 8, 48, seed=7)


# the grid variant takes whole cells, not a fraction (tested below)
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "grid"])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_exact_foreground_count(scene, variant, beta):
    clips, _ = scene
    for shape in [(3, 8, 48, 48), (2, 3, 13, 22)]:
        x = clips[: shape[0], : shape[1], : shape[2], : shape[3]].contiguous()
        h, w = shape[2], shape[3]
        mask = fame_mask(x, beta=beta, variant=variant)
        assert mask.dtype == torch.bool and mask.shape == (shape[0], h, w)
        assert mask.sum(dim=(1, 2)).tolist() == [int(beta * h * w)] * shape[0]


def test_grid_variant_takes_whole_cells(scene):
    clips, _ = scene
    mask = fame_mask(clips, variant="grid")  # 48 x 48: 16 cells of 12 x 12
    cells = mask.view(3, 4, 12, 4, 12).permute(0, 1, 3, 2, 4).reshape(3, 16, 144)
    per_cell = cells.sum(-1)
    assert ((per_cell == 0) | (per_cell == 144)).all()
    assert (per_cell == 144).sum(dim=1).tolist() == [8, 8, 8]


def test_grid_variant_takes_8_whole_cells_of_unequal_size(scene):
    """13 x 22: cells of 3-4 rows x 5-6 columns; the mask is 8 whole cells, the 8 with the
    largest seed sums, not int(0.5 * 13 * 22) pixels (spec section 3)."""
    from dali_fame.fame import ops
    from dali_fame.fame.reference import motion_and_bins_ref

    clips = scene[0][:, :5, :13, :22].contiguous()
    mask = fame_mask(clips, variant="grid")
    seed = ops.minmax(ops.gaussian_blur(motion_and_bins_ref(clips)[0]))
    ys, xs = [0, 4, 7, 10, 13], [0, 6, 11, 17, 22]  # ceil(r * size / 4)
    for b in range(clips.shape[0]):
        sums, full = [], []
        for r in range(4):
            for c in range(4):
                cell = mask[b, ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
                assert cell.all() or not cell.any()
                full.append(bool(cell.all()))
                sums.append(float(seed[b, ys[r]:ys[r + 1], xs[c]:xs[c + 1]].double().sum()))
        best = sorted(range(16), key=lambda i: (-sums[i], i))[:8]
        assert [i for i in range(16) if full[i]] == sorted(best)
    with pytest.raises(ValueError, match="beta"):
        fame_mask(clips, variant="grid", beta=0.3)


def test_gauss_variant_is_centred_and_content_free(scene):
    clips, _ = scene
    mask = fame_mask(clips, variant="gauss", beta=0.3)
    assert torch.equal(mask[0], mask[1])
    ys, xs = torch.nonzero(mask[0], as_tuple=True)
    assert abs(ys.float().mean().item() - 23.5) < 0.5 and abs(xs.float().mean().item() - 23.5) < 0.5


def test_moving_object_mask_beats_random_masks(scene):
    clips, swept = scene
    beta = 0.5
    mask = fame_mask(clips, beta=beta)

    def iou(m):
        inter = (m & swept).sum(dim=(1, 2)).float()
        union = (m | swept).sum(dim=(1, 2)).float()
        return inter / union

    g = torch.Generator().manual_seed(0)
    random_ious = torch.stack([iou(torch.rand(swept.shape, generator=g) < beta) for _ in range(20)])
    ours = iou(mask)
    best = swept.sum(dim=(1, 2)).float() / int(beta * 48 * 48)  # the mask is larger than swept
    # FAME reaches most of the attainable IoU; random masks stay near |swept| / |union|.
    assert (ours > 0.8 * best).all(), (ours, best)
    assert (ours > 1.8 * random_ious.mean(dim=0)).all(), (ours, random_ious.mean(dim=0))
    # The mover is foreground: high recall of the swept region (a random mask has recall beta).
    recall = (mask & swept).sum(dim=(1, 2)).float() / swept.sum(dim=(1, 2)).float()
    assert (recall > 0.85).all(), recall


def test_synthetic_videos_mask_overlap():
    synthetic = pytest.importorskip("dali_fame.data.synthetic")
    beta = 0.5
    for class_index, motion in enumerate(synthetic.MOTIONS):
        if motion == "still":  # nothing moves: no motion cue to find
            continue
        video = synthetic.render_video(
            class_index=class_index,
            scene=class_index % 3,
            video_index=1,
            num_frames=16,
            size=64,
            seed=0,
        )
        clip = torch.from_numpy(video.frames)[None]
        swept = torch.from_numpy(video.masks.any(axis=0))[None]
        mask = fame_mask(clip, beta=beta)
        inter, union = (mask & swept).sum().item(), (mask | swept).sum().item()
        n_fg, n_swept = mask.sum().item(), swept.sum().item()
        best_iou = min(n_fg, n_swept) / max(n_fg, n_swept)
        # A random mask has recall beta and IoU about beta * n_swept / (n_fg + n_swept / 2).
        assert inter / n_swept > 0.85, (motion, inter / n_swept)
        assert inter / union > 0.8 * best_iou, (motion, inter / union, best_iou)


def test_float_input_gives_the_uint8_mask(scene):
    clips, _ = scene
    for variant in VARIANTS:
        a = fame_mask(clips, variant=variant)
        b = fame_mask(clips.float() / 255, variant=variant)
        c = fame_mask(clips.double() / 255, variant=variant)
        assert torch.equal(a, b) and torch.equal(a, c)


def test_ties_are_deterministic_and_go_to_lower_indices():
    # A static clip: the motion map is 0 everywhere and every score ties.
    static = torch.full((2, 4, 9, 11, 3), 77, dtype=torch.uint8)
    for variant in ("fame", "seed"):
        mask = fame_mask(static, beta=0.4, variant=variant)
        k = int(0.4 * 9 * 11)
        expected = torch.zeros(9 * 11, dtype=torch.bool)
        expected[:k] = True
        assert torch.equal(mask.view(2, -1), expected.expand(2, -1))
    # A static textured background with ties in M: repeated calls agree exactly.
    clips = _random_clips((2, 5, 20, 20, 3), seed=3) // 64 * 64
    clips[:, :, 5:10, 5:10] = torch.arange(5, dtype=torch.uint8).view(1, 5, 1, 1, 1) * 40
    first = fame_mask(clips, beta=0.5)
    for _ in range(3):
        assert torch.equal(fame_mask(clips, beta=0.5), first)


def test_legacy_hue_changes_the_mask_on_coloured_input(scene):
    clips, _ = scene
    a = fame_mask(clips, beta=0.5)
    b = fame_mask(clips, beta=0.5, legacy_hue=True)
    assert not torch.equal(a, b)


def test_beta_one_merge_returns_the_clips_unchanged(scene):
    clips, _ = scene
    mask = fame_mask(clips, beta=1.0)
    perm = random_permutation(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fame_merge(clips, mask, perm), clips)
    # and beta = 0 returns the backgrounds entirely
    assert torch.equal(fame_merge(clips, fame_mask(clips, beta=0.0), perm), clips[perm])


def test_merge_is_an_exact_per_pixel_select(scene):
    clips, _ = scene
    mask = fame_mask(clips, beta=0.5)
    perm = torch.tensor([2, 0, 1])
    out = fame_merge(clips, mask, perm)
    expected = np.where(mask.numpy()[:, None, :, :, None], clips.numpy(), clips.numpy()[[2, 0, 1]])
    np.testing.assert_array_equal(out.numpy(), expected)
    # float clips are selected as they are
    out_f = fame_merge(clips.float() / 255, mask.to(torch.uint8), perm)
    torch.testing.assert_close(out_f, torch.from_numpy(expected).float() / 255, rtol=0, atol=0)
    # intra-video background: a separate clip batch, identity permutation
    other = _random_clips(tuple(clips.shape), seed=9)
    out_i = fame_merge(clips, mask, torch.arange(3), background=other)
    expected_i = np.where(mask.numpy()[:, None, :, :, None], clips.numpy(), other.numpy())
    np.testing.assert_array_equal(out_i.numpy(), expected_i)


def test_intra_merge_of_uint8_clips_is_one_call_of_the_backends_merge(scene, monkeypatch):
    # the intra-video merge takes the backend's own merge (one kernel on CUDA), not a torch
    # select per clip; float clips keep the torch select
    from dali_fame.fame import api
    from dali_fame.fame.dispatch import TORCH_OPS, Ops

    clips, _ = scene
    mask = fame_mask(clips)
    other = _random_clips(tuple(clips.shape), seed=4)
    calls = []

    def spy(name):
        def fn(*args, **kwargs):
            calls.append((name, kwargs.get("background") is other))
            return getattr(TORCH_OPS, name)(*args, **kwargs)
        return fn

    ops = Ops(name="spy", motion_and_bins=TORCH_OPS.motion_and_bins,
              color_histograms=TORCH_OPS.color_histograms, merge=spy("merge"),
              merge_normalize=spy("merge_normalize"))
    monkeypatch.setattr(api, "resolve_ops", lambda backend, device: ops)
    ident = torch.arange(3)
    out = fame_merge(clips, mask, ident, background=other)
    out_n = fame_merge_normalize(clips, mask, ident, background=other)
    assert calls == [("merge", True), ("merge_normalize", True)]
    keep = mask[:, None, :, :, None]
    assert torch.equal(out, torch.where(keep, clips, other))
    torch.testing.assert_close(
        out_n, fame_merge_normalize(torch.where(keep, clips, other), torch.ones_like(mask), ident),
        rtol=0, atol=0,
    )
    calls.clear()
    fame_merge(clips.float() / 255, mask, ident, background=other.float() / 255)
    assert calls == []


def test_merge_normalize_matches_merge_then_normalize(scene):
    clips, _ = scene
    mask = fame_mask(clips)
    perm = torch.tensor([1, 2, 0])
    out = fame_merge_normalize(clips, mask, perm, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    merged = fame_merge(clips, mask, perm).permute(0, 4, 1, 2, 3).float() / 255
    mean = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1, 1)
    std = torch.tensor([0.2, 0.3, 0.25]).view(3, 1, 1, 1)
    assert out.shape == (3, 3, 8, 48, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, (merged - mean) / std)
    out_f = fame_merge_normalize(
        clips.float() / 255, mask, perm, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)
    )
    torch.testing.assert_close(out_f, out)


@pytest.mark.parametrize("batch", [2, 3, 5, 8])
def test_default_permutation_is_a_derangement(batch):
    g = torch.Generator().manual_seed(batch)
    seen = set()
    for _ in range(200):
        perm = random_permutation(batch, generator=g)
        assert perm.dtype == torch.int64
        assert sorted(perm.tolist()) == list(range(batch))
        assert not (perm == torch.arange(batch)).any()
        seen.add(tuple(perm.tolist()))
    if batch == 3:
        assert seen == {(1, 2, 0), (2, 0, 1)}  # the only two derangements of 3


def test_compat_permutation_allows_self_pairing_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    fixed = sum(
        bool((random_permutation(2, generator=g, derangement=False) == torch.arange(2)).any())
        for _ in range(200)
    )
    assert 50 < fixed < 150  # identity with probability 1/2
    a = random_permutation(8, generator=torch.Generator().manual_seed(5))
    b = random_permutation(8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_single_clip_batch_identity_with_warning():
    with pytest.warns(RuntimeWarning, match="no derangement"):
        perm = random_permutation(1, generator=torch.Generator())
    assert perm.tolist() == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert random_permutation(1, generator=None, derangement=False).tolist() == [0]
    with pytest.raises(ValueError, match="batch_size"):
        random_permutation(0, generator=None)


@pytest.mark.parametrize(
    "clips, message",
    [
        (torch.zeros(2, 1, 8, 8, 3, dtype=torch.uint8), r"T >= 2"),
        (torch.zeros(2, 4, 8, 8, 3, dtype=torch.int32), r"uint8 or floating"),
        (torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8), r"\(B, T, H, W, 3\)"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.uint8), r"\(B, T, H, W, 3\)"),
        (torch.full((1, 2, 4, 4, 3), 1.5), r"\[0, 1\]"),
        (torch.full((1, 2, 4, 4, 3), float("nan")), r"\[0, 1\]"),
    ],
)
def test_fame_mask_rejects_bad_clips(clips, message):
    with pytest.raises(ValueError, match=message):
        fame_mask(clips)


def test_bad_settings_and_merge_inputs_are_rejected(scene):
    clips, _ = scene
    with pytest.raises(ValueError, match="beta"):
        fame_mask(clips, beta=1.5)
    with pytest.raises(ValueError, match="variant"):
        fame_mask(clips, variant="box")
    with pytest.raises(ValueError, match="backend"):
        fame_mask(clips, backend="triton")
    with pytest.raises(ValueError, match="CUDA tensors"):
        fame_mask(clips, backend="cuda")
    mask = fame_mask(clips)
    with pytest.raises(ValueError, match="permutation"):
        fame_merge(clips, mask, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="int64"):
        fame_merge(clips, mask, torch.tensor([1, 2, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="mask"):
        fame_merge(clips, mask[:, :-1], torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="background"):
        fame_merge(clips, mask, torch.tensor([1, 2, 0]), background=clips[:2])


def test_non_contiguous_clips_are_accepted_by_the_api(scene):
    clips, _ = scene
    strided = clips.permute(0, 4, 1, 2, 3).contiguous().permute(0, 2, 3, 4, 1)
    assert not strided.is_contiguous()
    assert torch.equal(fame_mask(strided), fame_mask(clips))


def test_cpu_tensors_resolve_to_the_native_backend_or_the_reference():
    from dali_fame.fame.dispatch import native_ops_status

    ok, reason = native_ops_status()
    assert resolve_ops("auto", torch.device("cpu")).name == ("native" if ok else "torch"), reason
    assert resolve_ops("torch", torch.device("cpu")).name == "torch"
    with pytest.raises(ValueError, match="needs CPU tensors"):
        resolve_ops("native", torch.device("cuda", 0))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_ops("cuda", torch.device("cpu"))


def test_auto_falls_back_to_torch_on_cpu_when_the_compiler_is_missing(monkeypatch):
    from dali_fame.fame import dispatch

    reason = FileNotFoundError("no C++ compiler: 'g++' is not on PATH (set $CXX)")
    monkeypatch.setattr(dispatch, "_load_native_ops", lambda: reason)
    dispatch._warn_fallback.cache_clear()
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match="native FAME backend is unavailable.*g\\+\\+"):
        assert dispatch.resolve_ops("auto", cpu).name == "torch"
    with pytest.raises(RuntimeError, match="backend='native' requested but unavailable"):
        dispatch.resolve_ops("native", cpu)
    dispatch._warn_fallback.cache_clear()


def test_fame_module_single_both_and_intra(scene):
    clips, _ = scene
    view0, view1 = clips, clips.flip(-2).contiguous()
    out = FAME(beta=0.5)(view0, view1, generator=torch.Generator().manual_seed(0))
    assert out.mask1 is None and out.perm1 is None
    assert torch.equal(out.view1, view1)
    assert not (out.perm0 == torch.arange(3)).any()
    assert torch.equal(out.view0, fame_merge(view0, out.mask0, out.perm0))
    assert torch.equal(out.mask0, fame_mask(view0))

    both = FAME(beta=0.5, both=True)(view0, view1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(both.view1, fame_merge(view1, both.mask1, both.perm1))
    again = FAME(beta=0.5, both=True)(view0, view1, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(both, again))

    intra = _random_clips(tuple(clips.shape), seed=4)
    fame_intra = FAME(beta=0.5, background="intra")
    res = fame_intra(view0, view1, generator=None, intra=intra)
    keep = res.mask0[:, None, :, :, None]
    assert torch.equal(res.view0, torch.where(keep, view0, intra))
    with pytest.raises(ValueError, match="intra"):
        fame_intra(view0, view1, generator=None)
    with pytest.raises(ValueError, match="intra"):
        FAME()(view0, view1, generator=None, intra=intra)
    with pytest.raises(ValueError, match="background"):
        FAME(background="other")


def test_fame_module_beta_one_and_variants(scene):
    clips, _ = scene
    out = FAME(beta=1.0)(clips, clips, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.view0, clips)
    for variant in VARIANTS:
        beta = 0.5 if variant == "grid" else 0.3  # grid: 8 of 16 cells of 12 x 12
        res = FAME(beta=beta, variant=variant)(clips, clips, generator=torch.Generator())
        assert res.mask0.sum(dim=(1, 2)).tolist() == [int(beta * 48 * 48)] * 3
    with pytest.raises(ValueError, match="grid"):
        FAME(beta=0.3, variant="grid")


def test_auto_falls_back_to_torch_on_gpu_when_kernels_cannot_load(monkeypatch):
    from dali_fame.fame import dispatch

    monkeypatch.setattr(dispatch, "_load_cuda_ops", lambda *a: ImportError("No module named 'cupy'"))
    dispatch._warn_fallback.cache_clear()
    cuda = torch.device("cuda", 0)  # resolving needs no GPU
    with pytest.warns(RuntimeWarning, match="cupy"):
        assert dispatch.resolve_ops("auto", cuda).name == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-time warning
        assert dispatch.resolve_ops("auto", cuda).name == "torch"
    with pytest.raises(RuntimeError, match="unavailable"):
        dispatch.resolve_ops("cuda", cuda)
    dispatch._warn_fallback.cache_clear()


def test_the_torch_path_off_the_cpu_never_reads_a_tensor_value_on_the_host():
    # Meta tensors have shapes but no data: any host read (.item(), .tolist(), bool(),
    # torch.equal, a data-sized torch.bincount) raises. The non-CPU torch path (the one a GPU
    # runs with backend "torch") must get through mask, merge and the module without one, so it
    # never waits for the device. CPU-side draws (the permutations) are fine.
    meta = torch.device("meta")
    views = torch.empty(3, 4, 24, 24, 3, dtype=torch.uint8, device=meta)
    for variant in VARIANTS:
        for legacy_hue in (False, True):
            mask = fame_mask(views, variant=variant, legacy_hue=legacy_hue)
            assert mask.shape == (3, 24, 24) and mask.dtype == torch.bool
    mask = fame_mask(views)
    perm = random_permutation(3, generator=torch.Generator().manual_seed(0))
    assert fame_merge(views, mask, perm).device == meta
    assert fame_merge(views, mask, torch.arange(3), background=views).device == meta
    assert fame_merge_normalize(views, mask, perm).shape == (3, 3, 4, 24, 24)
    for module in (FAME(), FAME(both=True), FAME(background="intra")):
        intra = views if module.background == "intra" else None
        out = module(views, views, generator=torch.Generator().manual_seed(1), intra=intra)
        assert out.view0.device == meta and out.perm0.device.type == "cpu"


def test_fame_module_draws_its_permutations_on_the_host(scene):
    clips, _ = scene
    out = FAME(both=True)(clips, clips, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order
    assert torch.equal(out.perm0, random_permutation(3, generator=gen))
    assert torch.equal(out.perm1, random_permutation(3, generator=gen))
    intra = FAME(background="intra", both=True)(clips, clips, generator=None, intra=clips.flip(0))
    assert intra.perm0.device.type == "cpu" and intra.perm0.tolist() == [0, 1, 2]

    class DeviceGenerator:  # stands in for a torch.Generator on a GPU
        device = torch.device("cuda", 0)

    with pytest.raises(ValueError, match="CPU torch.Generator"):
        FAME()(clips, clips, generator=DeviceGenerator())


def test_gauss_score_is_built_once_per_size_and_device(monkeypatch):
    from dali_fame.fame import variants

    first = variants.gauss_score(2, 9, 13, device="cpu")

    def fail(*args, **kwargs):
        raise AssertionError("gauss_score rebuilt its map")

    monkeypatch.setattr(variants.torch, "exp", fail)
    again = variants.gauss_score(3, 9, 13, device="cpu")
    assert torch.equal(again[0], first[0]) and again.shape == (3, 9, 13)
    again[0].zero_()  # a copy per call: the cached map is not shared with callers
    assert torch.equal(variants.gauss_score(1, 9, 13, device="cpu")[0], first[0])


def test_be_module_draws_on_the_host_in_one_place():
    clips = _random_clips((3, 6, 16, 16, 3), seed=9)
    out = BackgroundErasing(both=True)(clips, clips, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)  # view 0's draws, then view 1's
    for lam, frame in ((out.lam0, out.frame0), (out.lam1, out.frame1)):
        want_lam, want_frame = be_params(clips.shape[0], clips.shape[1], generator=gen)
        assert torch.equal(lam, want_lam) and torch.equal(frame, want_frame)
        assert lam.device.type == "cpu" and frame.device.type == "cpu"

    class DeviceGenerator:  # stands in for a torch.Generator on a GPU
        device = torch.device("cuda", 0)

    with pytest.raises(ValueError, match="CPU torch.Generator"):
        BackgroundErasing()(clips, clips, generator=DeviceGenerator())

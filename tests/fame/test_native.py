"""The C++ CPU backend "native" (kernels/fame_cpu.cpp, dali_fame.fame.native) against the torch
reference, bit for bit.

Covered: the whole mask (variants "fame" / "seed", both hue modes, beta 0 .. 1, empty seed sets)
on odd sizes and on random, structured (moving squares) and tie-heavy clips; motion and bins;
the merge with bool / uint8 masks; long clips (the uint16 -> int32 accumulator switch at
255 T > 65535); torch's thread count and concurrent Python threads; input errors; the build
cache and the compiler failure paths. The exhaustive check of every uint8 colour is marked slow.

Skipped as a whole when the library cannot be built here (no C++ compiler): native_status()
says why.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import itertools
import os
import resource
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest
import torch
from fame_clips import moving_square_clips

from dali_fame.fame import dispatch, fame_mask, fame_merge, native, ops, random_permutation
from dali_fame.fame.reference import (
    color_histograms_ref,
    merge_ref,
    motion_and_bins_ref,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from kernel_inputs import tricky_clips

_OK, _WHY = native.native_status()
pytestmark = pytest.mark.skipif(not _OK, reason=f"the native FAME backend does not build: {_WHY}")

#: (B, T, H, W): B 1 and 3, T 2, 5 and 17, every H x W of the brief (7 x 9: blur kernel 1;
#: 23 x 31: kernel 3; 37 x 41: kernel 3; 113 x 127: kernel 11; 64 x 64: kernel 7)
HW = [(7, 9), (23, 31), (37, 41), (113, 127), (64, 64)]
SIZES = [(b, t, h, w) for (h, w), b, t in itertools.product(HW, (1, 3), (2, 5, 17))]
BETAS = (0.0, 0.3, 0.5, 1.0)
#: (fg_fraction, bg_fraction) besides the paper's (0.5, 0.1): kF = 0, kB = 0, both, all pixels
FRACTIONS = ((0.0, 0.1), (0.5, 0.0), (0.0, 0.0), (1.0, 1.0), (0.3, 0.25))


def _sid(size) -> str:
    return "B{}xT{}x{}x{}".format(*size)


def _random(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def _scene(b: int, t: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Moving textured squares over textured backgrounds (the API tests' scene), cropped."""
    clips, _ = moving_square_clips(b, t, max(h, w), seed=seed, square=max(2, min(h, w) // 3))
    return clips[:, :, :h, :w].contiguous()


def _ties(b: int, t: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Clips with few distinct values, so that motion, seed and score are full of ties.

    Clip 0: a static background of the values {0, 128, 255} per channel with a block that moves
    one pixel per frame (two motion levels: 0 and a plateau). Clip 1: one constant colour (every
    map constant). Clip 2: coarse quantised noise (values 0 / 255 only) that flickers in time.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(b):
        kind = i % 3
        if kind == 0:
            bg = (torch.randint(0, 3, (1, h, w, 3), generator=g) * 127.5).round().to(torch.uint8)
            x = bg.expand(t, h, w, 3).clone()
            side = max(1, min(h, w) // 3)
            for f in range(t):
                y0, x0 = f % max(1, h - side), (2 * f) % max(1, w - side)
                x[f, y0 : y0 + side, x0 : x0 + side] = torch.tensor(
                    [255, 0, 128], dtype=torch.uint8
                )
        elif kind == 1:
            x = torch.tensor([200, 30, 40], dtype=torch.uint8).expand(t, h, w, 3).clone()
        else:
            x = (torch.randint(0, 2, (t, h, w, 3), generator=g) * 255).to(torch.uint8)
            x[:, : h // 2] = x[:1, : h // 2]  # the top half static: half the motion map is 0
        out.append(x)
    return torch.stack(out).contiguous()


KINDS = {
    "random": lambda b, t, h, w, s: _random((b, t, h, w, 3), s),
    "scene": _scene,
    "ties": _ties,
}


@functools.cache
def _clips(kind: str, size: tuple[int, int, int, int]) -> torch.Tensor:
    b, t, h, w = size
    return KINDS[kind](b, t, h, w, sum(size) * 7 + len(kind))


def _assert_equal(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.dtype == expected.dtype, (what, got.dtype, expected.dtype)
    assert got.shape == expected.shape, (what, tuple(got.shape), tuple(expected.shape))
    diff = int((got != expected).sum())
    assert diff == 0, f"{what}: {diff} of {expected.numel()} values differ"


def _settings(variant: str):
    """(beta, fg_fraction, bg_fraction) of one comparison; the seed variant ignores fractions."""
    yield from ((beta, 0.5, 0.1) for beta in BETAS)
    if variant == "fame":
        yield from ((0.5, fg, bg) for fg, bg in FRACTIONS)
        yield (0.7, 0.0, 0.0)


def _compare_masks(clips: torch.Tensor, label: str) -> None:
    for variant, legacy_hue in itertools.product(("fame", "seed"), (False, True)):
        for beta, fg, bg in _settings(variant):
            kw = {
                "beta": beta,
                "variant": variant,
                "legacy_hue": legacy_hue,
                "fg_fraction": fg,
                "bg_fraction": bg,
            }
            got = fame_mask(clips, backend="native", **kw)
            _assert_equal(got, fame_mask(clips, backend="torch", **kw), f"{label} {kw}")


# --------------------------------------------------------------------------------------------
# 1. bit-identity with the torch reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("size", SIZES, ids=_sid)
def test_mask_equals_torch_reference(size, kind):
    clips = _clips(kind, size)
    _compare_masks(clips, f"{kind} {_sid(size)}")
    # the direct entry point is the one the dispatcher calls
    _assert_equal(
        native.fame_mask_native(clips, beta=0.3, legacy_hue=True),
        fame_mask(clips, beta=0.3, legacy_hue=True, backend="torch"),
        "fame_mask_native",
    )


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("size", SIZES, ids=_sid)
def test_motion_and_bins_equal_reference(size, kind):
    clips = _clips(kind, size)
    for legacy_hue in (False, True):
        motion, bins = native.motion_and_bins_native(clips, legacy_hue=legacy_hue)
        ref_motion, ref_bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
        assert torch.equal(motion, ref_motion), (kind, size, legacy_hue)
        assert torch.equal(bins, ref_bins), (kind, size, legacy_hue)
        assert motion.dtype == torch.float32 and bins.dtype == torch.int32
        assert motion.shape == bins.shape == (size[0], size[2], size[3])


@pytest.mark.parametrize("size", [(3, 2, 7, 9), (3, 17, 113, 127), (2, 6, 16, 32)], ids=_sid)
def test_tricky_bin_inputs_equal_reference(size):
    # the kernel tests' stress mix: greys, palettes on 0.5, tied maxima, saturated primaries
    clips = tricky_clips(*size, seed=sum(size))
    for legacy_hue in (False, True):
        motion, bins = native.motion_and_bins_native(clips, legacy_hue=legacy_hue)
        ref_motion, ref_bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
        assert torch.equal(motion, ref_motion) and torch.equal(bins, ref_bins), legacy_hue
    _compare_masks(clips, f"tricky {_sid(size)}")


def test_structured_and_tie_inputs_are_not_trivial():
    """The comparisons above would prove little on degenerate inputs: check that the scene
    mask finds the movers, and that the tie clips hit both seed thresholds with ties."""
    clips, swept = moving_square_clips(3, 17, 64, seed=11, square=21)
    mask = fame_mask(clips, beta=0.5, backend="native")
    recall = (mask & swept).sum(dim=(1, 2)).float() / swept.sum(dim=(1, 2)).float()
    assert (recall > 0.8).all(), recall
    first_k = torch.zeros(64 * 64, dtype=torch.bool)
    first_k[: int(0.5 * 64 * 64)] = True
    assert not any(torch.equal(m.flatten(), first_k) for m in mask)

    clips = _clips("ties", (3, 5, 37, 41))
    motion, bins = motion_and_bins_ref(clips)
    seed = ops.minmax(ops.gaussian_blur(motion))
    k_fg, k_bg = int(0.5 * 37 * 41), int(0.1 * 37 * 41)
    thr_fg, thr_bg = ops.seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)
    counts = color_histograms_ref(bins, seed, thr_fg, thr_bg)
    # pixels tied at both thresholds in every clip; in the plateau and constant clips more
    # pixels tie than slots are left, so the tie weights of ops.likelihoods are fractional
    assert (counts[:, 1].sum(1) > 0).all() and (counts[:, 3].sum(1) > 0).all()
    assert (counts[:2, 0].sum(1) + counts[:2, 1].sum(1) > k_fg).all()
    assert (counts[:2, 2].sum(1) + counts[:2, 3].sum(1) > k_bg).all()


@pytest.mark.parametrize(
    "colour", [(0, 0, 0), (77, 77, 77), (255, 255, 255), (200, 30, 40), (255, 0, 0), (1, 254, 128)]
)
def test_constant_clips_take_the_first_pixels(colour):
    """Every map is constant: every threshold and the final selection are ties, which go to the
    lowest row-major indices."""
    h, w = 23, 31
    clips = torch.tensor(colour, dtype=torch.uint8).expand(2, 3, h, w, 3).contiguous()
    for variant, legacy_hue, beta in itertools.product(("fame", "seed"), (False, True), BETAS):
        kw = {"beta": beta, "variant": variant, "legacy_hue": legacy_hue}
        got = fame_mask(clips, backend="native", **kw)
        _assert_equal(got, fame_mask(clips, backend="torch", **kw), f"{colour} {kw}")
        expected = torch.zeros(h * w, dtype=torch.bool)
        expected[: int(beta * h * w)] = True
        assert torch.equal(got.view(2, -1), expected.expand(2, -1)), kw


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (2, 3), (19, 20), (20, 19), (3, 201)])
def test_degenerate_shapes_equal_reference(hw):
    h, w = hw
    clips = _random((2, 3, h, w, 3), seed=h * 1000 + w)
    _compare_masks(clips, f"{h}x{w}")


@pytest.mark.parametrize(
    "beta, fg, bg, hw",
    [
        (0.3, 0.5, 0.1, (6, 15)),
        (0.3, 0.5, 0.1, (3, 200)),
        (0.5, 0.3, 0.1, (6, 15)),
        (0.5, 0.5, 0.3, (6, 15)),
    ],
    ids=["beta", "beta_3x200", "fg_fraction", "bg_fraction"],
)
def test_counts_are_evaluated_like_the_api(beta, fg, bg, hw):
    """fame_mask keeps exactly int(beta * H * W) pixels (left to right, as the released code);
    int(0.3 * 6 * 15) = 26 but int(0.3 * 90) = 27, so k = int(beta * (H * W)) differs. The same
    holds for kF and kB (fg_fraction, bg_fraction)."""
    h, w = hw
    kw = {"beta": beta, "fg_fraction": fg, "bg_fraction": bg}
    for clips in (_random((3, 4, h, w, 3), seed=5), _scene(3, 4, h, w, seed=5)):
        ref = fame_mask(clips, backend="torch", **kw)
        assert ref.sum(dim=(1, 2)).tolist() == [int(beta * h * w)] * 3
        _assert_equal(fame_mask(clips, backend="native", **kw), ref, f"{kw} {hw}")


def test_float_clips_and_auto_backend_take_the_native_path():
    clips = _clips("scene", (3, 5, 37, 41))
    ref = fame_mask(clips, backend="torch")
    assert dispatch.resolve_ops("auto", torch.device("cpu")).name == "native"
    _assert_equal(fame_mask(clips, backend="auto"), ref, "auto")
    _assert_equal(fame_mask(clips.float() / 255, backend="native"), ref, "float clips")
    strided = clips.permute(0, 4, 1, 2, 3).contiguous().permute(0, 2, 3, 4, 1)
    _assert_equal(fame_mask(strided, backend="native"), ref, "non-contiguous via the API")


@pytest.mark.parametrize(
    "size", [(1, 2, 7, 9), (3, 5, 23, 31), (5, 17, 37, 41), (4, 3, 113, 127)], ids=_sid
)
def test_merge_equals_reference(size):
    b, t, h, w = size
    clips = _clips("random", size) if b <= 3 else _random((b, t, h, w, 3), seed=b)
    g = torch.Generator().manual_seed(sum(size))
    bool_mask = torch.rand(b, h, w, generator=g) < 0.5
    values = torch.tensor([0, 1, 7, 255], dtype=torch.uint8)
    u8_mask = values[torch.randint(0, 4, (b, h, w), generator=g)]
    perms = [torch.arange(b), random_permutation(b, generator=g, derangement=False)]
    if b > 1:
        perms += [random_permutation(b, generator=g), torch.arange(b).flip(0)]
    for mask, perm in itertools.product((bool_mask, u8_mask), perms):
        got = fame_merge(clips, mask, perm, backend="native")
        _assert_equal(got, fame_merge(clips, mask, perm, backend="torch"), f"{mask.dtype} {perm}")
        _assert_equal(
            native.merge_native(clips, mask, perm), merge_ref(clips, mask, perm), "merge_native"
        )
        # the exact select, independently of both implementations
        keep = (mask != 0)[:, None, :, :, None]
        assert torch.equal(got, torch.where(keep, clips, clips[perm]))
        # intra-video: backgrounds from a second batch
        other = _random((b, t, h, w, 3), seed=b + 50)
        got = fame_merge(clips, mask, perm, background=other, backend="native")
        assert torch.equal(got, torch.where(keep, clips, other[perm]))
        _assert_equal(got, merge_ref(clips, mask, perm, background=other), "intra")


def test_merge_native_accepts_strided_masks_and_repeated_perm_values():
    clips = _random((3, 4, 17, 17, 3), seed=2)
    mask = (torch.rand(3, 17, 17, generator=torch.Generator().manual_seed(1)) < 0.4).transpose(1, 2)
    assert not mask.is_contiguous()
    perm = torch.tensor([2, 2, 0, 1, 1, 0])[::2]  # [2, 0, 1], a strided view
    assert not perm.is_contiguous()
    _assert_equal(
        native.merge_native(clips, mask, perm),
        merge_ref(clips, mask.contiguous(), perm.contiguous()),
        "strided",
    )
    # merge_native checks the range only (the API checks the permutation): repeats select fine
    repeated = torch.tensor([0, 0, 0])
    _assert_equal(
        native.merge_native(clips, mask, repeated),
        merge_ref(clips, mask.contiguous(), repeated),
        "repeated perm",
    )


# --------------------------------------------------------------------------------------------
# 2. long clips: the C++ accumulators switch from uint16 to int32 when 255 T > 65535
# --------------------------------------------------------------------------------------------


def _extreme_long(b: int, t: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Per pixel one of: always 255 (channel sum 255 T, the uint16 limit at T = 257),
    alternating 0 / 255 (difference sum 255 (T - 1)), or noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (b, t, h, w, 3), generator=g, dtype=torch.uint8)
    alternating = (torch.arange(t) % 2 * 255).to(torch.uint8).view(1, t, 1, 1, 1)
    kinds = torch.randint(0, 3, (b, 1, h, w, 1), generator=g)
    out = torch.where(kinds == 0, torch.full_like(noise, 255), noise)
    out = torch.where(kinds == 1, alternating.expand_as(noise), out)
    return out.contiguous()


@pytest.mark.parametrize("t", [257, 258, 300])
@pytest.mark.parametrize("kind", ["random", "extreme", "scene"])
def test_long_clips_equal_reference(t, kind):
    b, h, w = 2, 7, 9
    if kind == "random":
        clips = _random((b, t, h, w, 3), seed=t)
    elif kind == "extreme":
        clips = _extreme_long(b, t, h, w, seed=t)
    else:
        clips = _scene(b, t, 23, 31, seed=t)
        h, w = 23, 31
    for legacy_hue in (False, True):
        motion, bins = native.motion_and_bins_native(clips, legacy_hue=legacy_hue)
        ref_motion, ref_bins = motion_and_bins_ref(clips, legacy_hue=legacy_hue)
        assert torch.equal(motion, ref_motion) and torch.equal(bins, ref_bins), legacy_hue
    if kind == "extreme":  # the sums reach the uint16 limit: D = 3 on alternating pixels
        assert float(motion.max()) == 3.0
    for variant in ("fame", "seed"):
        kw = {"beta": 0.3, "variant": variant}
        _assert_equal(
            fame_mask(clips, backend="native", **kw),
            fame_mask(clips, backend="torch", **kw),
            f"T={t} {kind} {variant}",
        )


# --------------------------------------------------------------------------------------------
# 3. threads
# --------------------------------------------------------------------------------------------


@pytest.fixture
def restore_num_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _everything(clips: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor):
    return (
        *native.motion_and_bins_native(clips),
        *native.motion_and_bins_native(clips, legacy_hue=True),
        native.fame_mask_native(clips),
        native.fame_mask_native(clips, variant="seed", beta=0.3),
        native.fame_mask_native(clips, legacy_hue=True, fg_fraction=0.0),
        native.merge_native(clips, mask, perm),
    )


def _reference_everything(clips: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor):
    return (
        *motion_and_bins_ref(clips),
        *motion_and_bins_ref(clips, legacy_hue=True),
        fame_mask(clips, backend="torch"),
        fame_mask(clips, variant="seed", beta=0.3, backend="torch"),
        fame_mask(clips, legacy_hue=True, fg_fraction=0.0, backend="torch"),
        merge_ref(clips, mask, perm),
    )


def _inputs(b: int, t: int, h: int, w: int, seed: int):
    clips = _scene(b, t, h, w, seed) if seed % 2 else _random((b, t, h, w, 3), seed)
    g = torch.Generator().manual_seed(seed)
    return clips, torch.rand(b, h, w, generator=g) < 0.5, torch.randperm(b, generator=g)


def test_results_do_not_depend_on_the_thread_count(restore_num_threads):
    inputs = _inputs(5, 5, 37, 41, seed=3)  # 5 clips: uneven over 2 and 3 workers
    expected = _reference_everything(*inputs)
    for n in (1, 2, 3, 8):
        torch.set_num_threads(n)
        assert torch.get_num_threads() == n
        for i, (got, ref) in enumerate(zip(_everything(*inputs), expected, strict=True)):
            _assert_equal(got, ref, f"{n} threads, output {i}")


def test_concurrent_python_threads(restore_num_threads):
    torch.set_num_threads(2)
    # different sizes per thread: the library's per-worker buffers are resized between calls
    sizes = [(3, 5, 37, 41), (1, 17, 113, 127), (4, 2, 7, 9), (2, 300, 8, 8)]
    inputs = [_inputs(*s, seed=i) for i, s in enumerate(sizes)]
    expected = [_reference_everything(*x) for x in inputs]

    def work(i: int) -> int:
        for _ in range(6):
            for j, (got, ref) in enumerate(zip(_everything(*inputs[i]), expected[i], strict=True)):
                _assert_equal(got, ref, f"thread {i}, output {j}")
        return i

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# 4. errors
# --------------------------------------------------------------------------------------------

_FUNCS = {
    "motion_and_bins_native": lambda x: native.motion_and_bins_native(x),
    "fame_mask_native": lambda x: native.fame_mask_native(x),
    "merge_native": lambda x: native.merge_native(
        x,
        torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=torch.bool),
        torch.arange(x.shape[0]),
    ),
}


@pytest.mark.parametrize("name", list(_FUNCS))
def test_bad_clips_raise_value_errors(name):
    fn = _FUNCS[name]
    good = _random((2, 3, 6, 8, 3), seed=0)
    strided = good.transpose(2, 3)  # (2, 3, 8, 6, 3), not contiguous
    assert not strided.is_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        fn(strided)
    with pytest.raises(ValueError, match="must be uint8, got torch.float32"):
        fn(good.float() / 255)
    with pytest.raises(ValueError, match="must be uint8, got torch.int16"):
        fn(good.to(torch.int16))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        fn(good[..., :2].contiguous())
    with pytest.raises(ValueError, match="T >= 2"):
        fn(good[:, :1].contiguous())
    with pytest.raises(ValueError, match="CPU"):  # a device tensor (no data: meta)
        fn(torch.empty(2, 3, 6, 8, 3, dtype=torch.uint8, device="meta"))
    fn(good)  # still works after the errors


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(_FUNCS))
def test_cuda_clips_raise_value_errors(name):
    clips = _random((2, 3, 6, 8, 3), seed=0).cuda()
    with pytest.raises(ValueError, match="CPU"):
        _FUNCS[name](clips)


def test_bad_variant_and_merge_arguments_raise():
    clips = _random((2, 3, 6, 8, 3), seed=1)
    mask = torch.ones(2, 6, 8, dtype=torch.bool)
    perm = torch.tensor([1, 0])
    with pytest.raises(ValueError, match="variants 'fame' and 'seed'.*'gauss'"):
        native.fame_mask_native(clips, variant="gauss")
    with pytest.raises(ValueError, match="mask must be bool or uint8.*int64"):
        native.merge_native(clips, mask.long(), perm)
    with pytest.raises(ValueError, match=r"mask must be bool or uint8 \(2, 6, 8\)"):
        native.merge_native(clips, mask[:, :5], perm)
    with pytest.raises(ValueError, match="perm must be int64.*int32"):
        native.merge_native(clips, mask, perm.int())
    with pytest.raises(ValueError, match=r"perm must be int64 \(2,\)"):
        native.merge_native(clips, mask, torch.tensor([1, 0, 2]))
    for bad in ([0, 2], [-1, 0], [1, 2**40], [-(2**62), 1]):
        with pytest.raises(ValueError, match=r"perm values must lie in 0\.\.1"):
            native.merge_native(clips, mask, torch.tensor(bad))
    assert torch.equal(native.merge_native(clips, mask, perm), clips)  # no damage done


# --------------------------------------------------------------------------------------------
# 5. build and cache
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_native_caches(monkeypatch):
    """Clear the process-wide library caches before and after (their teardown runs before
    monkeypatch restores the environment), so the other tests load the usual library."""
    native.load_library.cache_clear()
    dispatch._load_native_ops.cache_clear()
    dispatch._warn_fallback.cache_clear()
    yield monkeypatch
    native.load_library.cache_clear()
    dispatch._load_native_ops.cache_clear()
    dispatch._warn_fallback.cache_clear()


def test_library_is_built_into_the_cache_once(fresh_native_caches, tmp_path):
    monkeypatch = fresh_native_caches
    monkeypatch.setenv("DALI_FAME_CACHE", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    lib = native.load_library()
    assert not isinstance(lib, Exception), lib
    built = list(tmp_path.glob("native/*/libfame_cpu.so"))
    assert len(built) == 1, list(tmp_path.rglob("*"))
    path = built[0]
    assert len(path.parent.name) == 20 and int(path.parent.name, 16) >= 0
    assert Path(lib._name) == path
    assert [p.name for p in path.parent.iterdir()] == ["libfame_cpu.so"]  # no temporary left
    mtime = path.stat().st_mtime_ns
    # what the library computes is right (the dispatcher's probe too)
    clips = _clips("scene", (3, 5, 23, 31))
    _assert_equal(native.fame_mask_native(clips), fame_mask(clips, backend="torch"), "tmp lib")
    assert dispatch.native_ops_status()[0]

    native.load_library.cache_clear()
    again = native.load_library()
    assert not isinstance(again, Exception), again
    assert Path(again._name) == path
    assert path.stat().st_mtime_ns == mtime, "rebuilt although the cached library was there"
    assert list(tmp_path.glob("native/*/libfame_cpu.so")) == [path]


def test_cache_key_follows_flags_and_sources(tmp_path, monkeypatch):
    from dali_fame.fame.cuda import kernels_dir

    monkeypatch.setenv("DALI_FAME_CACHE", str(tmp_path / "cache"))
    kernels = kernels_dir()
    cxx = os.environ.get("CXX", "g++")
    base = native._library_path(kernels, cxx)
    assert base.parent.parent == tmp_path / "cache" / "native"
    assert native._library_path(kernels, cxx) == base  # deterministic
    copy = tmp_path / "kernels"
    shutil.copytree(kernels, copy)
    assert native._library_path(copy, cxx) == base  # the contents count, not the location
    for name in native.SOURCES:
        original = (copy / name).read_bytes()
        (copy / name).write_bytes(original + b"\n// edited\n")
        assert native._library_path(copy, cxx) != base, name
        (copy / name).write_bytes(original)
    monkeypatch.setattr(native, "CXX_FLAGS", (*native.CXX_FLAGS, "-DEXTRA"))
    assert native._library_path(kernels, cxx) != base


def test_missing_compiler_is_reported_not_raised(fresh_native_caches, tmp_path):
    monkeypatch = fresh_native_caches
    monkeypatch.setenv("DALI_FAME_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    exc = native.load_library()
    assert isinstance(exc, FileNotFoundError), exc
    assert "/nonexistent/g++" in str(exc)
    ok, why = native.native_status()
    assert not ok and "/nonexistent/g++" in why
    assert not list(tmp_path.rglob("*.so"))
    # the dispatcher: "native" raises with the reason, "auto" falls back to torch with a warning
    cpu = torch.device("cpu")
    with pytest.raises(
        RuntimeError, match="backend='native' requested but unavailable.*nonexistent"
    ):
        dispatch.resolve_ops("native", cpu)
    with pytest.warns(RuntimeWarning, match="native FAME backend is unavailable.*nonexistent"):
        assert dispatch.resolve_ops("auto", cpu).name == "torch"
    with pytest.raises(RuntimeError, match="C\\+\\+ backend is unavailable"):
        native.fame_mask_native(_random((1, 2, 5, 5, 3), seed=0))


def _fake_compiler(tmp_path: Path, *, version_ok: bool) -> Path:
    """A "compiler" that answers --version (or not) and otherwise writes a partial output file,
    prints an error and exits 1."""
    script = tmp_path / "bin" / "fakecxx"
    script.parent.mkdir()
    version = "echo fakecxx 1.0; exit 0" if version_ok else "echo version broken >&2; exit 1"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then {version}; fi\n'
        'while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then echo partial > "$2"; fi; shift; done\n'
        'echo "fame_cpu.cpp:1:1: error: fake compiler says no" >&2\n'
        "exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_failing_compiler_returns_its_message(fresh_native_caches, tmp_path):
    monkeypatch = fresh_native_caches
    monkeypatch.setenv("DALI_FAME_CACHE", str(tmp_path / "cache"))
    script = _fake_compiler(tmp_path, version_ok=True)
    monkeypatch.setenv("CXX", str(script))
    exc = native.load_library()
    assert isinstance(exc, RuntimeError), repr(exc)
    assert "fake compiler says no" in str(exc)
    assert "compiling fame_cpu.cpp failed" in str(exc) and str(script) in str(exc)
    ok, why = native.native_status()
    assert not ok and "fake compiler says no" in why
    # the partial output was removed: nothing is published, a later build starts clean
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_compiler_failing_even_its_version_is_reported(fresh_native_caches, tmp_path):
    monkeypatch = fresh_native_caches
    monkeypatch.setenv("DALI_FAME_CACHE", str(tmp_path / "cache"))
    script = _fake_compiler(tmp_path, version_ok=False)
    monkeypatch.setenv("CXX", str(script))
    exc = native.load_library()  # returned, not raised
    assert isinstance(exc, Exception), exc
    assert str(script) in str(exc)
    assert not native.native_status()[0]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.so"))


def test_library_is_usable_again_after_the_cache_tests():
    # runs after the tests above (file order): the fixture restored the usual library
    ok, why = native.native_status()
    assert ok, why
    clips = _clips("random", (3, 5, 23, 31))
    _assert_equal(native.fame_mask_native(clips), fame_mask(clips, backend="torch"), "restored")
    assert dispatch.resolve_ops("auto", torch.device("cpu")).name == "native"


# --------------------------------------------------------------------------------------------
# 6. every uint8 colour (slow)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_exhaustive_all_colours_bins_equal_reference(capsys):
    """All 2**24 RGB colours as one 4096 x 4096 T = 2 clip whose two frames are equal: the mean
    2x / 510 is x / 255 exactly, every colour's T = 1 mean. The native library takes the whole
    clip at once; the reference runs in four 1024-row blocks (memory)."""
    start = time.perf_counter()
    idx = torch.arange(2**24, dtype=torch.int32)
    frame = torch.stack([idx >> 16, (idx >> 8) & 255, idx & 255], dim=-1).to(torch.uint8)
    frame = frame.view(4096, 4096, 3)
    del idx
    clips = frame.expand(1, 2, 4096, 4096, 3).contiguous()
    del frame
    checked = 0
    for legacy_hue in (False, True):
        motion, bins = native.motion_and_bins_native(clips, legacy_hue=legacy_hue)
        assert not motion.any()
        assert int(bins.min()) >= 0 and int(bins.max()) <= 999
        for r in range(0, 4096, 1024):
            block = clips[:, :, r : r + 1024].contiguous()
            ref_motion, ref_bins = motion_and_bins_ref(block, legacy_hue=legacy_hue)
            assert not ref_motion.any()
            diff = bins[:, r : r + 1024] != ref_bins
            if diff.any():
                where = diff.nonzero()[:5].tolist()
                colours = [block[0, 0, y, x].tolist() for _, y, x in where]
                raise AssertionError(
                    f"legacy_hue={legacy_hue}: {int(diff.sum())} bins differ, e.g. colours "
                    f"{colours}: native {[int(bins[0, r + y, x]) for _, y, x in where]} "
                    f"reference {[int(ref_bins[0, y, x]) for _, y, x in where]}"
                )
            checked += block[0, 0].numel() // 3
            del block, ref_motion, ref_bins, diff
        del motion, bins
    assert checked == 2 * 2**24
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nexhaustive colours: {checked} bins compared in {elapsed:.1f} s, "
            f"peak RSS {peak_gib:.2f} GiB"
        )
    assert peak_gib < 4.0


# --------------------------------------------------------------------------------------------
# 7. the exact-trigonometry fallback, reached on purpose
# --------------------------------------------------------------------------------------------
# The double polynomial is accurate enough that no input above ever reaches the near_half
# fallback's repair. Test builds move every float cos / sin by 2 ulps (the bound color_bin's
# argument allows): with the fallback the bins must still equal the reference; without it
# (FAME_CPU_NO_EXACT_FALLBACK) some must differ, or this test could not catch a broken fallback.


@pytest.fixture(scope="module")
def skewed_builds(tmp_path_factory):
    from dali_fame.fame.cuda import kernels_dir

    out = tmp_path_factory.mktemp("native_skew")
    variants = {
        "skew+2": ("FAME_CPU_TRIG_SKEW_ULP=2",),
        "skew-2": ("FAME_CPU_TRIG_SKEW_ULP=-2",),
        "skew+2 no fallback": ("FAME_CPU_TRIG_SKEW_ULP=2", "FAME_CPU_NO_EXACT_FALLBACK=1"),
    }
    libs = {}
    for i, (name, defines) in enumerate(variants.items()):
        path = out / f"libfame_cpu_{i}.so"
        native._build(kernels_dir(), native._compiler(), path, defines)
        libs[name] = native.declare(ctypes.CDLL(str(path)))
    return libs


def _bins_with(lib, clips: torch.Tensor, legacy_hue: bool) -> torch.Tensor:
    bsz, t, h, w, _ = clips.shape
    motion = torch.empty(bsz, h, w)
    bins = torch.empty(bsz, h, w, dtype=torch.int32)
    lib.fame_cpu_motion_bins(clips.data_ptr(), bsz, t, h, w, int(legacy_hue), motion.data_ptr(),
                             bins.data_ptr(), 2)
    return bins


def _colour_clip(colours: torch.Tensor, side: int) -> torch.Tensor:
    """int (N,) colours 0xRRGGBB -> a (1, 2, side, N // side, 3) clip of two equal frames."""
    rgb = torch.stack([colours >> 16, (colours >> 8) & 255, colours & 255], dim=-1)
    frame = rgb.to(torch.uint8).view(side, -1, 3)
    return frame.expand(1, 2, *frame.shape).contiguous()


@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
def test_fallback_repairs_bins_moved_by_a_2_ulp_trig_error(skewed_builds, legacy_hue):
    gen = torch.Generator().manual_seed(12)
    clips = _colour_clip(torch.randint(0, 2**24, (1024 * 1024,), generator=gen), 1024)
    ref = motion_and_bins_ref(clips, legacy_hue=legacy_hue)[1]
    for name in ("skew+2", "skew-2"):
        _assert_equal(_bins_with(skewed_builds[name], clips, legacy_hue), ref, name)
    broken = int((_bins_with(skewed_builds["skew+2 no fallback"], clips, legacy_hue) != ref).sum())
    assert broken > 0, "a 2-ulp skew without the fallback moved no bin: the test is blind"


@pytest.mark.slow
@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
def test_fallback_exhaustive_with_skewed_trig(skewed_builds, legacy_hue):
    """Every uint8 colour, both skews: the fallback leaves no bin moved."""
    clips = _colour_clip(torch.arange(2**24, dtype=torch.int32), 4096)
    for name in ("skew+2", "skew-2"):
        bins = _bins_with(skewed_builds[name], clips, legacy_hue)
        for r in range(0, 4096, 1024):
            block = clips[:, :, r : r + 1024].contiguous()
            _assert_equal(bins[:, r : r + 1024], motion_and_bins_ref(block, legacy_hue=legacy_hue)[1],
                          f"{name} rows {r}..{r + 1023}")

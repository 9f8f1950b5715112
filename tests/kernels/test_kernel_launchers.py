"""dali_fame.fame.cuda: import hygiene, input checks, launch configuration, and (marked ``cuda``,
skipped without a GPU) the launchers against the torch reference on the device."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from kernel_inputs import (
    K400_MEAN,
    K400_STD,
    ODD_SIZES,
    VEC_SIZES,
    misaligned_copy,
    random_perm,
    seed_inputs,
    structured_mask,
    tricky_clips,
)

from dali_fame.fame import cuda as fcuda
from dali_fame.fame import reference as ref

MEAN = torch.tensor(K400_MEAN, dtype=torch.float32)
STD = torch.tensor(K400_STD, dtype=torch.float32)


def test_import_touches_neither_cupy_nor_cuda():
    code = (
        "import sys, torch\n"
        "import dali_fame.fame.cuda\n"
        "assert 'cupy' not in sys.modules, 'cupy imported at module import time'\n"
        "assert 'nvtx' not in sys.modules, 'nvtx imported at module import time'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised at import time'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# ---- input checks (all raise before anything touches CUDA, so they run without a GPU) -------


def _clips(b=2, t=3, h=8, w=14, device="cpu"):
    return torch.zeros((b, t, h, w, 3), dtype=torch.uint8, device=device)


@pytest.mark.parametrize(
    "clips,match",
    [
        (_clips(), "must be a CUDA tensor"),
        (_clips().float(), "must be uint8"),
        (torch.zeros(2, 3, 3, 8, 14, dtype=torch.uint8), r"\(B, T, H, W, 3\)"),
        (torch.zeros(3, 8, 14, 3, dtype=torch.uint8), r"\(B, T, H, W, 3\)"),
        (_clips(t=1), "T >= 2"),
        (_clips().transpose(2, 3), "contiguous"),
    ],
    ids=["cpu", "float", "bcthw", "rank4", "one_frame", "non_contiguous"],
)
def test_motion_and_bins_cuda_rejects_bad_clips(clips, match):
    with pytest.raises(ValueError, match=match):
        fcuda.motion_and_bins_cuda(clips)


def test_merge_launchers_reject_bad_inputs():
    clips = _clips()
    mask = torch.ones(2, 8, 14, dtype=torch.bool)
    perm = torch.tensor([1, 0])
    with pytest.raises(ValueError, match="mask must be bool or uint8"):
        fcuda.merge_cuda(clips, mask.float(), perm)
    with pytest.raises(ValueError, match="mask must be"):
        fcuda.merge_cuda(clips, mask[:, :7], perm)
    with pytest.raises(ValueError, match="perm must be int64"):
        fcuda.merge_cuda(clips, mask, perm.int())
    with pytest.raises(ValueError, match="CUDA tensor"):
        fcuda.merge_cuda(clips, mask, perm)
    with pytest.raises(ValueError, match="std must be float32"):
        fcuda.merge_normalize_cuda(clips, mask, perm, torch.zeros(3), torch.ones(3).double())


def test_color_histograms_cuda_rejects_bad_inputs():
    bins, seed, thr_fg, thr_bg = seed_inputs(2, 7, 9, seed=0)
    with pytest.raises(ValueError, match="bins must be int32"):
        fcuda.color_histograms_cuda(bins.long(), seed, thr_fg, thr_bg)
    with pytest.raises(ValueError, match="seed must be float32"):
        fcuda.color_histograms_cuda(bins, seed.double(), thr_fg, thr_bg)
    with pytest.raises(ValueError, match=r"thr_bg must be float32 \(B,\)"):
        fcuda.color_histograms_cuda(bins, seed, thr_fg, thr_bg[:1])
    with pytest.raises(ValueError, match="CUDA tensor"):
        fcuda.color_histograms_cuda(bins, seed, thr_fg, thr_bg)


# ---- launch configuration and kernel sources -----------------------------------------------


def test_grid_1d_covers_the_work_or_caps():
    assert fcuda.grid_1d(0, max_blocks=64) == 1
    assert fcuda.grid_1d(1, max_blocks=64) == 1
    assert fcuda.grid_1d(256 * 5 + 1, max_blocks=64) == 6
    assert fcuda.grid_1d(10**9, max_blocks=64) == 64


def test_hist_grid():
    assert fcuda.hist_grid(224 * 224, 8, max_blocks_per_clip=132) == (13, 8)
    assert fcuda.hist_grid(63, 3, max_blocks_per_clip=132) == (1, 3)
    assert fcuda.hist_grid(224 * 224, 8, max_blocks_per_clip=4) == (4, 8)


def test_vector_paths_need_divisible_sizes_and_alignment():
    clips = _clips(h=8, w=14)
    mask = torch.zeros(2, 8, 14, dtype=torch.uint8)
    out = torch.empty_like(clips)
    assert fcuda.merge_vec16_ok(112, clips, mask, out)
    assert not fcuda.merge_vec16_ok(7 * 9, clips, mask, out)
    assert not fcuda.merge_vec16_ok(112, misaligned_copy(clips, 4), mask, out)
    motion, bins = torch.empty(2, 8, 14), torch.empty(2, 8, 14, dtype=torch.int32)
    assert fcuda.motion_vec4_ok(112, clips, motion, bins)
    assert not fcuda.motion_vec4_ok(7 * 9, clips, motion, bins)
    assert not fcuda.motion_vec4_ok(112, misaligned_copy(clips, 2), motion, bins)


def test_kernels_dir_search(tmp_path, monkeypatch):
    repo_kernels = fcuda.kernels_dir()
    assert all((repo_kernels / f"{s}.cu").is_file() for s in fcuda.KERNEL_FILES)
    # an explicit directory wins (e.g. a non-editable install without the sources)
    for f in repo_kernels.glob("*.cu*"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setenv(fcuda.KERNELS_DIR_ENV, str(tmp_path))
    assert fcuda.kernels_dir() == tmp_path
    assert "fame_merge_vec16" in fcuda.kernel_source("merge")
    with pytest.raises(ValueError, match="unknown kernel file"):
        fcuda.kernel_source("blur")


def test_kernels_dir_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(fcuda, "_kernels_dir_candidates", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match=fcuda.KERNELS_DIR_ENV):
        fcuda.kernels_dir()


# ---- the launchers end to end on the host-emulated kernels ---------------------------------
# Everything of a launcher but CuPy itself runs: checks, output allocation, path selection, grid,
# the kernel's name and the order and types of its arguments (a wrong order would only show on a
# GPU otherwise). The device check and the CuPy launch are replaced by the emulation.

_EMU_ENTRY = {
    "fame_motion_bins": ("motion_bins", "emu_motion_bins", 0),
    "fame_motion_bins_vec4": ("motion_bins", "emu_motion_bins", 1),
    "fame_merge": ("merge", "emu_merge", 0),
    "fame_merge_vec16": ("merge", "emu_merge", 1),
    "fame_merge_normalize": ("merge", "emu_merge_normalize", 0),
    "fame_merge_normalize_vec16": ("merge", "emu_merge_normalize", 1),
}


@pytest.fixture
def emu_launchers(emu, monkeypatch):
    launched = []

    def fake_launch(name, device, grid, args, nvtx_name):
        assert nvtx_name.startswith("fame.")
        # CuPy passes a Python int as 64 bits: every scalar must be typed
        assert all(isinstance(a, torch.Tensor) or type(a) is np.int32 for a in args), args
        values = [a.data_ptr() if isinstance(a, torch.Tensor) else int(a) for a in args]
        launched.append(name)
        if name == "fame_color_hist":
            emu.libs["color_hist"].emu_color_hist(grid[0], grid[1], fcuda.BLOCK, *values)
            return
        lib, fn, vec = _EMU_ENTRY[name]
        assert len(grid) == 1
        getattr(emu.libs[lib], fn)(vec, grid[0], fcuda.BLOCK, *values)

    monkeypatch.setattr(fcuda, "_launch", fake_launch)
    monkeypatch.setattr(fcuda, "_check_one_cuda_device", lambda **t: torch.device("cpu"))
    monkeypatch.setattr(fcuda, "_max_blocks", lambda index, kernel: 6)
    monkeypatch.setattr(fcuda, "_sm_count", lambda index: 3)
    return launched


@pytest.mark.parametrize(
    "size", [(3, 17, 7, 9), (1, 2, 113, 127), (3, 2, 8, 14)], ids=lambda s: "x".join(map(str, s))
)
def test_launchers_on_emulated_kernels_match_reference(emu_launchers, size):
    b, t, h, w = size
    clips = tricky_clips(b, t, h, w, seed=21)
    motion, bins = fcuda.motion_and_bins_cuda(clips, legacy_hue=True)
    ref_motion, ref_bins = ref.motion_and_bins_ref(clips, legacy_hue=True)
    assert torch.equal(bins, ref_bins)
    torch.testing.assert_close(motion, ref_motion)
    inputs = seed_inputs(b, h, w, seed=22)
    assert torch.equal(fcuda.color_histograms_cuda(*inputs), ref.color_histograms_ref(*inputs))
    mask = structured_mask(b, h, w, seed=23)
    perm = random_perm(b, seed=24)
    assert torch.equal(fcuda.merge_cuda(clips, mask, perm), ref.merge_ref(clips, mask, perm))
    out_n = fcuda.merge_normalize_cuda(clips, mask, perm, MEAN, STD)
    assert torch.equal(out_n, ref.merge_normalize_ref(clips, mask, perm, MEAN, STD))
    # intra-video: a second batch supplies the backgrounds, still one launch per merge
    other = tricky_clips(b, t, h, w, seed=25)
    ident = torch.arange(b)
    assert torch.equal(fcuda.merge_cuda(clips, mask, ident, background=other),
                       ref.merge_ref(clips, mask, ident, background=other))
    out_n = fcuda.merge_normalize_cuda(clips, mask, perm, MEAN, STD, background=other)
    assert torch.equal(out_n, ref.merge_normalize_ref(clips, mask, perm, MEAN, STD, background=other))
    vec = (h * w) % 16 == 0
    merges = ["fame_merge_vec16" if vec else "fame_merge",
              "fame_merge_normalize_vec16" if vec else "fame_merge_normalize"]
    assert emu_launchers == [
        "fame_motion_bins_vec4" if vec else "fame_motion_bins",
        "fame_color_hist",
        *merges,
        *merges,
    ]


def test_merge_launchers_reject_a_bad_background(emu_launchers):
    clips = tricky_clips(2, 3, 8, 14, seed=1)
    mask = structured_mask(2, 8, 14, seed=2)
    perm = torch.tensor([1, 0])
    for bad in (clips[:, :2].contiguous(), clips.float()):  # wrong shape, wrong dtype
        with pytest.raises(ValueError, match="background"):
            fcuda.merge_cuda(clips, mask, perm, background=bad)
    with pytest.raises(ValueError, match="background must be contiguous"):
        fcuda.merge_normalize_cuda(clips, mask, perm, MEAN, STD,
                                   background=clips.transpose(2, 3).contiguous().transpose(2, 3))
    assert emu_launchers == []


# ---- on the GPU ------------------------------------------------------------------------------

GPU_SIZES = ODD_SIZES + VEC_SIZES


@pytest.mark.cuda
@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
@pytest.mark.parametrize("size", GPU_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_motion_and_bins_cuda_matches_reference(size, legacy_hue):
    clips = tricky_clips(*size, seed=sum(size))
    motion, bins = fcuda.motion_and_bins_cuda(clips.cuda(), legacy_hue=legacy_hue)
    ref_motion, ref_bins = ref.motion_and_bins_ref(clips, legacy_hue=legacy_hue)  # on the CPU
    assert motion.is_cuda and bins.dtype == torch.int32
    assert torch.equal(bins.cpu(), ref_bins)
    torch.testing.assert_close(motion.cpu(), ref_motion)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "size", sorted({(b, h, w) for b, _, h, w in GPU_SIZES}), ids=lambda s: "x".join(map(str, s))
)
def test_color_histograms_cuda_matches_reference(size):
    inputs = seed_inputs(*size, seed=sum(size))
    hist = fcuda.color_histograms_cuda(*(x.cuda() for x in inputs))
    assert torch.equal(hist.cpu(), ref.color_histograms_ref(*inputs))


@pytest.mark.cuda
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8], ids=["bool", "uint8"])
@pytest.mark.parametrize("size", GPU_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_merge_cuda_matches_reference(size, mask_dtype):
    b, t, h, w = size
    clips = tricky_clips(b, t, h, w, seed=sum(size))
    mask = structured_mask(b, h, w, seed=1, dtype=mask_dtype)
    perm = random_perm(b, seed=2)
    out = fcuda.merge_cuda(clips.cuda(), mask.cuda(), perm.cuda())
    assert torch.equal(out.cpu(), ref.merge_ref(clips, mask, perm))
    out_n = fcuda.merge_normalize_cuda(clips.cuda(), mask.cuda(), perm.cuda(), MEAN, STD)
    ref_n = ref.merge_normalize_ref(clips, mask, perm, MEAN, STD)
    torch.testing.assert_close(out_n.cpu(), ref_n)
    assert torch.equal(out_n.cpu(), ref_n)  # the kernels' lookup table uses the CPU formula
    other = tricky_clips(b, t, h, w, seed=sum(size) + 1)
    out_i = fcuda.merge_cuda(clips.cuda(), mask.cuda(), perm.cuda(), background=other.cuda())
    assert torch.equal(out_i.cpu(), ref.merge_ref(clips, mask, perm, background=other))
    out_ni = fcuda.merge_normalize_cuda(clips.cuda(), mask.cuda(), perm.cuda(), MEAN, STD,
                                        background=other.cuda())
    assert torch.equal(out_ni.cpu(),
                       ref.merge_normalize_ref(clips, mask, perm, MEAN, STD, background=other))


@pytest.mark.cuda
def test_launchers_run_on_torchs_current_stream_and_misaligned_inputs():
    b, t, h, w = 3, 17, 16, 32
    clips = tricky_clips(b, t, h, w, seed=5)
    mask = structured_mask(b, h, w, seed=6)
    perm = random_perm(b, seed=7)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        # a large producer on the side stream right before the launch: without stream ordering
        # the kernel would read clips_d before the copy lands
        clips_d = torch.empty(clips.shape, dtype=torch.uint8, device="cuda")
        clips_d.copy_(clips.pin_memory(), non_blocking=True)
        clips_m = misaligned_copy(clips_d, offset=4)  # scalar fallback path
        out = fcuda.merge_cuda(clips_m, mask.cuda(), perm.cuda())
        _, bins = fcuda.motion_and_bins_cuda(clips_m)
    stream.synchronize()
    assert torch.equal(out.cpu(), ref.merge_ref(clips, mask, perm))
    assert torch.equal(bins.cpu(), ref.motion_and_bins_ref(clips)[1])


@pytest.mark.cuda
def test_launchers_reject_mixed_devices():
    clips = _clips(device="cuda")
    with pytest.raises(ValueError, match="same device|CUDA tensor"):
        fcuda.merge_cuda(clips, torch.ones(2, 8, 14, dtype=torch.bool), torch.tensor([1, 0]))


# ---- the fused mask launcher end to end on the emulated kernels ----------------------------


@pytest.fixture
def emu_fused(emu_runner, monkeypatch):
    """fame_mask_cuda with only CuPy replaced: CupyRunner -> _launch -> the emulated kernels."""
    runner = emu_runner
    nvtx_names = []

    def fake_launch(name, device, grid, args, nvtx_name, *, block=fcuda.BLOCK):
        nvtx_names.append(nvtx_name)
        runner.launch(name, grid, args, block=block)

    monkeypatch.setattr(fcuda, "_launch", fake_launch)
    monkeypatch.setattr(fcuda, "_check_one_cuda_device", lambda **t: torch.device("cpu"))
    monkeypatch.setattr(fcuda, "_max_blocks", lambda index, kernel: 6)
    return runner, nvtx_names


@pytest.mark.parametrize("variant", ["fame", "seed"])
def test_fame_mask_cuda_on_emulated_kernels(emu_fused, variant):
    from dali_fame.fame import fame_mask

    runner, nvtx_names = emu_fused
    clips = tricky_clips(3, 4, 15, 22, seed=31)
    mask = fcuda.fame_mask_cuda(clips, beta=0.3, variant=variant, legacy_hue=True)
    expected = fame_mask(clips, beta=0.3, variant=variant, legacy_hue=True, backend="torch")
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    assert len(runner.launched) == (7 if variant == "fame" else 4)
    assert nvtx_names[0] == "fame.motion_bins" and nvtx_names[-1] == "fame.select_top"


def test_fame_mask_cuda_rejects_bad_clips():
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        fcuda.fame_mask_cuda(_clips())
    with pytest.raises(ValueError, match="T >= 2"):
        fcuda.fame_mask_cuda(_clips(t=1))
    with pytest.raises(ValueError, match="contiguous"):
        fcuda.fame_mask_cuda(_clips().transpose(2, 3))


def test_clip_grid():
    assert fcuda.clip_grid(224 * 224, 8, resident=132 * 5) == (83, 8)
    assert fcuda.clip_grid(7 * 9, 3, resident=660) == (1, 3)  # never more blocks than pixels
    assert fcuda.clip_grid(224 * 224, 1000, resident=660) == (1, 1000)


@pytest.mark.cuda
@pytest.mark.parametrize("legacy_hue", [False, True], ids=["hue", "legacy_hue"])
@pytest.mark.parametrize("size", GPU_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_fused_mask_on_the_gpu_equals_the_reference_stage_by_stage(size, legacy_hue):
    from test_kernel_fame_mask import _reference_stages

    clips = tricky_clips(*size, seed=sum(size) + legacy_hue)
    runner = fcuda.CupyRunner(torch.device("cuda", torch.cuda.current_device()))
    result = fcuda.run_fame_mask(clips.cuda(), runner=runner, legacy_hue=legacy_hue)
    for name, expected in _reference_stages(clips, legacy_hue=legacy_hue).items():
        got = getattr(result, name).cpu()
        assert torch.equal(got, expected), f"{name}: {int((got != expected).sum())} differ"
    assert runner.launches == result.launches == 7

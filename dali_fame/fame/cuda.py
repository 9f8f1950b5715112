"""CuPy launchers of the FAME CUDA kernels (``kernels/*.cu``), the GPU twins of the references.

Each ``<name>_cuda`` here has the signature and the outputs of ``<name>_ref`` in
:mod:`dali_fame.fame.reference`, for CUDA tensors:

==========================  =====================  =========================================
launcher                    kernel file            kernels
==========================  =====================  =========================================
motion_and_bins_cuda        motion_bins.cu         fame_motion_bins(_vec4)
color_histograms_cuda       color_hist.cu          fame_color_hist
merge_cuda                  merge.cu               fame_merge(_vec16)
merge_normalize_cuda        merge.cu               fame_merge_normalize(_vec16)
fame_mask_cuda              motion_bins.cu +       the whole mask in 7 launches per batch
                            fame_mask.cu           (:func:`run_fame_mask`, kernels/README.md)
==========================  =====================  =========================================

Conventions (shared/design/architecture.md item 3): inputs are checked (dtype, rank, device,
contiguity; ``ValueError`` naming the argument); outputs are allocated with torch and handed to
CuPy zero-copy through DLPack; kernels run on torch's current CUDA stream of the tensors' device;
grid and block are passed by keyword and every scalar is a typed ``np.int32`` / ``np.float32``;
grids are sized from CUDA's occupancy API per kernel and device (:func:`resident_blocks`); each
kernel file is compiled by NVRTC once per device (``functools.lru_cache`` keyed by the device index; CuPy also
keeps its on-disk kernel cache). Every launch is wrapped in an NVTX range named
``fame.<launcher stem>`` in the ``dali_fame`` domain (see kernels/README.md for nsys / ncu).

Nothing here imports CuPy or touches CUDA at import time; the pure-Python launch-configuration
helpers (:func:`grid_1d`, :func:`hist_grid`, :func:`clip_grid`, :func:`motion_vec4_ok`,
:func:`merge_vec16_ok`) and the launch sequence of the fused mask (:func:`run_fame_mask`, which
takes a :class:`KernelRunner`) are also used by the host-emulation tests, so those tests run the
real configurations and the real sequence of launches, and count them.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dali_fame.fame.ops import blur_kernel_size, gaussian_taps, likelihood_denominator
from dali_fame.fame.reference import NUM_BINS, check_clips

__all__ = [
    "BLOCK",
    "CLIP_BLOCK",
    "FUSED_VARIANTS",
    "KERNEL_FILES",
    "MAX_LAUNCHES_PER_CALL",
    "NVRTC_OPTIONS",
    "FameMaskResult",
    "KernelRunner",
    "clip_grid",
    "color_histograms_cuda",
    "fame_mask_cuda",
    "grid_1d",
    "hist_grid",
    "kernel_source",
    "kernels_dir",
    "merge_cuda",
    "merge_normalize_cuda",
    "merge_vec16_ok",
    "motion_and_bins_cuda",
    "motion_vec4_ok",
    "resident_blocks",
    "run_fame_mask",
]

#: threads per block of every kernel but the per-clip ones (a multiple of the warp size)
BLOCK = 256
#: threads per block of the one-block-per-clip kernels of the fused mask (fame_seed_hist_soft,
#: fame_select_top): a block walks its whole clip 6-7 times, latency-bound, so the most threads
#: a block can have (fame_mask.cu supports any multiple of 32 up to 1024)
CLIP_BLOCK = 1024
#: pixels each histogram block should cover at least (amortises zeroing and flushing the
#: 4 x 1000 shared histogram, 16 KB, against the pixels it counts)
HIST_PIXELS_PER_BLOCK = 4096
#: kernel file stem -> the extern "C" kernels it defines
KERNEL_FILES: dict[str, tuple[str, ...]] = {
    "motion_bins": ("fame_motion_bins", "fame_motion_bins_vec4"),
    "color_hist": ("fame_color_hist",),
    "merge": (
        "fame_merge",
        "fame_merge_vec16",
        "fame_merge_normalize",
        "fame_merge_normalize_vec16",
    ),
    "fame_mask": (
        "fame_blur_rows",
        "fame_blur_cols_minmax",
        "fame_seed_hist_soft",
        "fame_select_top",
    ),
}
#: mask variants the fused kernel path computes (gauss and grid stay torch: no motion kernels)
FUSED_VARIANTS = ("fame", "seed")
#: the bound the fused mask path is held to (issue 12): kernel launches per batch call
MAX_LAUNCHES_PER_CALL = 10
#: NVRTC options (CuPy adds -arch for the device). No fast-math: the bins are float-exact.
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)
#: NVTX domain of the launch ranges (nsys: --nvtx-domain-include=dali_fame)
NVTX_DOMAIN = "dali_fame"
#: environment variable that points at a kernels directory explicitly
KERNELS_DIR_ENV = "DALI_FAME_KERNELS_DIR"


# ---------------------------------------------------------------------------------------------
# Kernel sources


def _kernels_dir_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    candidates = []
    env = os.environ.get(KERNELS_DIR_ENV)
    if env:
        candidates.append(Path(env))
    candidates += [
        here.parents[2] / "kernels",  # source checkout / editable install: <repo>/kernels
        here.parent / "kernels",  # shipped as package data: dali_fame/fame/kernels
        # wheel data-files (share/dali_fame/kernels) of this interpreter's prefix
        Path(sysconfig.get_path("data")) / "share" / "dali_fame" / "kernels",
        Path(sys.prefix) / "share" / "dali_fame" / "kernels",
    ]
    # ... or of the prefix the package was installed into: <prefix>/lib/pythonX.Y/site-packages
    if len(here.parents) > 5 and here.parents[2].name.endswith("-packages"):
        candidates.append(here.parents[5] / "share" / "dali_fame" / "kernels")
    return candidates


def kernels_dir() -> Path:
    """The directory holding ``motion_bins.cu``, ``color_hist.cu``, ``merge.cu``, ``fame_mask.cu``.

    Searched in order: ``$DALI_FAME_KERNELS_DIR``, ``<repo>/kernels`` next to the package (source
    checkout or editable install), ``dali_fame/fame/kernels`` (package data),
    ``<prefix>/share/dali_fame/kernels`` (wheel data files).

    Raises:
        FileNotFoundError: no candidate holds all kernel files.
    """
    candidates = _kernels_dir_candidates()
    for d in candidates:
        if all((d / f"{stem}.cu").is_file() for stem in KERNEL_FILES):
            return d
    raise FileNotFoundError(
        "dali_fame.fame.cuda: kernel sources (motion_bins.cu, color_hist.cu, merge.cu, "
        "fame_mask.cu) not found "
        f"in any of {[str(d) for d in candidates]}; set {KERNELS_DIR_ENV} to the repo's kernels/"
    )


def kernel_source(stem: str) -> str:
    """CUDA C source of ``kernels/<stem>.cu`` (stem in :data:`KERNEL_FILES`)."""
    if stem not in KERNEL_FILES:
        raise ValueError(
            f"dali_fame.fame.cuda: unknown kernel file {stem!r}; expected one of "
            f"{sorted(KERNEL_FILES)}"
        )
    return (kernels_dir() / f"{stem}.cu").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Launch configuration (pure Python; shared with the host-emulation tests)


def grid_1d(work_items: int, *, max_blocks: int, block: int = BLOCK) -> int:
    """Blocks of a 1-D grid-stride launch: enough for one item per thread, at most max_blocks.

    Args:
        work_items: items of the grid-stride loop (>= 0).
        max_blocks: cap, e.g. one wave of resident blocks (:func:`resident_blocks`); the
            kernels loop over the rest.
        block: threads per block.
    """
    return max(1, min(math.ceil(work_items / block), max_blocks))


def hist_grid(
    hw: int,
    num_clips: int,
    *,
    max_blocks_per_clip: int,
    pixels_per_block: int = HIST_PIXELS_PER_BLOCK,
) -> tuple[int, int]:
    """Grid (blocks per clip, clips) of ``fame_color_hist``.

    Each block privatises a 4 x 1000 histogram, so a block should count several thousand pixels;
    blockIdx.y is the clip (at most 65535 clips per launch, a CUDA limit on gridDim.y).
    """
    per_clip = max(1, min(math.ceil(hw / pixels_per_block), max_blocks_per_clip))
    return per_clip, num_clips


def clip_grid(hw: int, num_clips: int, *, resident: int, block: int = BLOCK) -> tuple[int, int]:
    """Grid (blocks per clip, clips) of the blur kernels: blockIdx.y is the clip, a grid-stride
    loop over its H*W pixels; together about one wave of ``resident`` blocks, at least one block
    per clip, never more blocks than pixels / block."""
    per_clip = max(1, min(math.ceil(hw / block), math.ceil(resident / num_clips)))
    return per_clip, num_clips


def _aligned(t: torch.Tensor, nbytes: int) -> bool:
    return t.data_ptr() % nbytes == 0


def motion_vec4_ok(hw: int, clips: torch.Tensor, motion: torch.Tensor, bins: torch.Tensor) -> bool:
    """Whether ``fame_motion_bins_vec4`` may run: H*W % 4 == 0 and aligned pointers."""
    return hw % 4 == 0 and _aligned(clips, 4) and _aligned(motion, 16) and _aligned(bins, 16)


def merge_vec16_ok(hw: int, *tensors: torch.Tensor) -> bool:
    """Whether the ``*_vec16`` merge kernels may run: H*W % 16 == 0, 16-byte aligned tensors."""
    return hw % 16 == 0 and all(_aligned(t, 16) for t in tensors)


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_tensor(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        # ValueError, not TypeError: one exception type for every bad input (architecture.md)
        raise ValueError(  # noqa: TRY004
            f"dali_fame.fame.cuda: {name} must be a torch.Tensor, got {type(t).__name__}"
        )


def _check_dtype_shape(
    name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], shape: tuple[int, ...], layout: str
) -> None:
    _check_tensor(name, t)
    if t.dtype not in dtypes or tuple(t.shape) != shape:
        want = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(
            f"dali_fame.fame.cuda: {name} must be {want} {layout} = {shape}, got {t.dtype} "
            f"{tuple(t.shape)}"
        )


def _check_placement(**tensors: torch.Tensor) -> torch.device:
    """Contiguity first, then one CUDA device for all; returns that device.

    Checked after every dtype and shape, so that those errors read the same on any machine.
    """
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(
                f"dali_fame.fame.cuda: {name} must be contiguous (call .contiguous() first)"
            )
    return _check_one_cuda_device(**tensors)


def _check_one_cuda_device(**tensors: torch.Tensor) -> torch.device:
    device = None
    for name, t in tensors.items():
        if t.device.type != "cuda":
            raise ValueError(
                f"dali_fame.fame.cuda: {name} must be a CUDA tensor, got one on {t.device} "
                "(use the torch reference, backend='torch', for CPU tensors)"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(
                f"dali_fame.fame.cuda: {name} is on {t.device} but the other inputs are on {device}"
            )
    assert device is not None
    return device


def _check_clips_shape(clips: torch.Tensor) -> None:
    check_clips(clips)  # (B, T, H, W, 3) uint8, T >= 2, non-empty: the reference's own checks
    _, t, h, w, _ = clips.shape
    # int32 kernel arguments; 255 * T must stay exact in float32 (the mean-frame divisor)
    if 3 * h * w >= 2**31 or 255 * t >= 2**24:
        raise ValueError(
            f"dali_fame.fame.cuda: clips of T x H x W = {t} x {h} x {w} exceed the kernels' "
            "limits (3 H W < 2^31, T <= 65793)"
        )


def _check_merge_inputs(
    clips: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor, background: torch.Tensor | None
) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """(device, mask as uint8, background sources): ``clips`` itself when background is None."""
    _check_clips_shape(clips)
    bsz, t, h, w, _ = clips.shape
    _check_dtype_shape("mask", mask, (torch.bool, torch.uint8), (bsz, h, w), "(B, H, W)")
    _check_dtype_shape("perm", perm, (torch.int64,), (bsz,), "(B,)")
    if background is None:
        background = clips
    else:  # the kernels index it exactly like clips: same shape and byte layout
        _check_dtype_shape("background", background, (torch.uint8,), (bsz, t, h, w, 3),
                           "(B, T, H, W, 3) like clips")
    device = _check_placement(clips=clips, mask=mask, perm=perm, background=background)
    # bool and uint8 share the byte layout (0 / 1); the kernels read bytes, non-zero = foreground
    return device, mask.view(torch.uint8), background


# ---------------------------------------------------------------------------------------------
# Compilation and launch


@functools.cache
def _kernels(device_index: int) -> dict[str, object]:
    """All RawKernels compiled for one device: {kernel name: cupy.RawKernel}."""
    import cupy

    kernels: dict[str, object] = {}
    with cupy.cuda.Device(device_index):
        for stem, names in KERNEL_FILES.items():
            module = cupy.RawModule(code=kernel_source(stem), options=NVRTC_OPTIONS)
            for name in names:
                kernels[name] = module.get_function(name)  # compiles for this device
    return kernels


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def resident_blocks(device_index: int, kernel: str) -> int:
    """Blocks of ``kernel`` (at :data:`BLOCK` threads) the device keeps resident at once: SMs x
    ``cuOccupancyMaxActiveBlocksPerMultiprocessor``, which accounts for the kernel's registers
    and static shared memory on this device (e.g. 48 registers -> 5 blocks of 256 on sm_80/90,
    where a fixed SMs x 8 would queue a second wave). Grid-stride grids of that size run in one
    wave. Once per (device, kernel).

    CuPy binding (cupy_backends.cuda.api.driver, CuPy 14):
    ``occupancyMaxActiveBlocksPerMultiprocessor(intptr_t func, int blockSize, size_t
    dynamicSMemSize) -> int``, ``func`` being the CUfunction (``RawKernel.kernel.ptr``).
    """
    import cupy
    from cupy_backends.cuda.api import driver

    raw = _kernels(device_index)[kernel]
    with cupy.cuda.Device(device_index):
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(raw.kernel.ptr, BLOCK, 0)
    return _sm_count(device_index) * max(1, int(per_sm))


def _max_blocks(device_index: int, kernel: str) -> int:
    """Grid cap of a grid-stride launch of ``kernel``: one full wave of resident blocks."""
    return resident_blocks(device_index, kernel)


def _nvtx_range(name: str):
    """NVTX range ``name`` in the ``dali_fame`` domain (torch's NVTX binding if nvtx is absent)."""
    try:
        import nvtx
    except ImportError:
        return torch.cuda.nvtx.range(name)
    return nvtx.annotate(name, domain=NVTX_DOMAIN)


@contextmanager
def _on_torch_stream(device: torch.device, nvtx_name: str) -> Iterator[object]:
    """CuPy device + torch's current stream of ``device`` + an NVTX range; yields cupy."""
    import cupy

    torch_stream = torch.cuda.current_stream(device)
    if hasattr(cupy.cuda.Stream, "from_external"):  # CuPy >= 14 (ExternalStream deprecated)
        stream = cupy.cuda.Stream.from_external(torch_stream)
    else:
        stream = cupy.cuda.ExternalStream(torch_stream.cuda_stream, device.index)
    with _nvtx_range(nvtx_name), cupy.cuda.Device(device.index), stream:
        yield cupy


def _launch(
    name: str,
    device: torch.device,
    grid: tuple[int, ...],
    args: tuple,
    nvtx_name: str,
    *,
    block: int = BLOCK,
) -> None:
    kernel = _kernels(device.index)[name]
    with _on_torch_stream(device, nvtx_name) as cupy:
        cargs = tuple(cupy.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args)
        kernel(grid=grid, block=(block,), args=cargs)


# ---------------------------------------------------------------------------------------------
# Launchers


def motion_and_bins_cuda(
    clips: torch.Tensor, *, legacy_hue: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion map D (spec step 1) and the colour bin of the mean frame (steps 3-4), on the GPU.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, CUDA, T >= 2.
        legacy_hue: reproduce the released code's doubly scaled hue angle (spec step 4).

    Returns:
        motion: float32 (B, H, W), D on the [0, 1] scale, on clips' device.
        bins: int32 (B, H, W) in 0..999, equal to motion_and_bins_ref's bins.
    """
    _check_clips_shape(clips)
    device = _check_placement(clips=clips)
    bsz, t, h, w, _ = clips.shape
    hw = h * w
    motion = torch.empty((bsz, h, w), dtype=torch.float32, device=device)
    bins = torch.empty((bsz, h, w), dtype=torch.int32, device=device)
    vec4 = motion_vec4_ok(hw, clips, motion, bins)
    work = bsz * hw // 4 if vec4 else bsz * hw
    name = "fame_motion_bins_vec4" if vec4 else "fame_motion_bins"
    grid = grid_1d(work, max_blocks=_max_blocks(device.index, name))
    _launch(
        name,
        device,
        (grid,),
        (clips, motion, bins, np.int32(bsz), np.int32(t), np.int32(hw), np.int32(bool(legacy_hue))),
        "fame.motion_and_bins",
    )
    return motion, bins


def color_histograms_cuda(
    bins: torch.Tensor, seed: torch.Tensor, thr_fg: torch.Tensor, thr_bg: torch.Tensor
) -> torch.Tensor:
    """Per-clip colour-bin counts of the foreground / background seed pixels (steps 5-6).

    Args:
        bins: int32 (B, H, W) in 0..999 (a bin outside that range is not counted), CUDA.
        seed: float32 (B, H, W), the seed map S, same device.
        thr_fg: float32 (B,), the kF-th largest seed value of each clip.
        thr_bg: float32 (B,), the kB-th smallest seed value of each clip.

    Returns:
        int32 (B, 4, 1000): counts per bin of the pixels with [0] seed > thr_fg,
        [1] seed == thr_fg, [2] seed < thr_bg, [3] seed == thr_bg (= color_histograms_ref).
    """
    _check_tensor("bins", bins)
    if bins.dim() != 3:
        raise ValueError(
            f"dali_fame.fame.cuda: bins must be int32 (B, H, W), got {bins.dtype} {tuple(bins.shape)}"
        )
    bsz, h, w = bins.shape
    _check_dtype_shape("bins", bins, (torch.int32,), (bsz, h, w), "(B, H, W)")
    _check_dtype_shape("seed", seed, (torch.float32,), (bsz, h, w), "(B, H, W)")
    _check_dtype_shape("thr_fg", thr_fg, (torch.float32,), (bsz,), "(B,)")
    _check_dtype_shape("thr_bg", thr_bg, (torch.float32,), (bsz,), "(B,)")
    device = _check_placement(bins=bins, seed=seed, thr_fg=thr_fg, thr_bg=thr_bg)
    if bsz > 65535:
        raise ValueError(f"dali_fame.fame.cuda: at most 65535 clips per call, got {bsz}")
    hist = torch.zeros((bsz, 4, NUM_BINS), dtype=torch.int32, device=device)
    if bsz == 0 or h * w == 0:
        return hist
    grid = hist_grid(h * w, bsz, max_blocks_per_clip=_sm_count(device.index))
    _launch(
        "fame_color_hist",
        device,
        grid,
        (bins, seed, thr_fg, thr_bg, hist, np.int32(h * w)),
        "fame.color_histograms",
    )
    return hist


def merge_cuda(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Foreground-background merge (spec section 2), a per-pixel select over all frames.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, CUDA.
        mask: bool or uint8 (B, H, W), non-zero = foreground (kept from the clip itself).
        perm: int64 (B,), a permutation of 0..B-1: clip b takes its background from perm[b]
            (an entry outside 0..B-1 reads background[b]).
        background: None (the backgrounds are ``clips``: inter-video) or uint8 (B, T, H, W, 3)
            contiguous like clips (intra-video); one launch either way.

    Returns:
        uint8 (B, T, H, W, 3) contiguous, equal to merge_ref.
    """
    device, mask_u8, bg = _check_merge_inputs(clips, mask, perm, background)
    bsz, t, h, w, _ = clips.shape
    hw = h * w
    out = torch.empty_like(clips, memory_format=torch.contiguous_format)
    vec16 = merge_vec16_ok(hw, clips, bg, mask_u8, out)
    work = bsz * t * (hw // 16 if vec16 else hw)
    name = "fame_merge_vec16" if vec16 else "fame_merge"
    _launch(
        name,
        device,
        (grid_1d(work, max_blocks=_max_blocks(device.index, name)),),
        (clips, bg, mask_u8, perm, out, np.int32(bsz), np.int32(t), np.int32(hw)),
        "fame.merge",
    )
    return out


def merge_normalize_cuda(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge (as :func:`merge_cuda`) fused with normalisation into the model's layout.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, CUDA.
        mask: bool or uint8 (B, H, W).
        perm: int64 (B,).
        mean: float32 (3,) per-channel mean on the [0, 1] scale (any device; copied if needed).
        std: float32 (3,) per-channel standard deviation on the [0, 1] scale.
        background: as :func:`merge_cuda`.

    Returns:
        float32 (B, 3, T, H, W) contiguous: ``(x / 255 - mean[c]) / std[c]`` of the merged clip
        in float32 in exactly that order of operations (bit-equal to merge_normalize_ref on CPU).
    """
    for name, v in (("mean", mean), ("std", std)):
        _check_dtype_shape(name, v, (torch.float32,), (3,), "(3,)")
    device, mask_u8, bg = _check_merge_inputs(clips, mask, perm, background)
    mean_d = mean.to(device).contiguous()
    std_d = std.to(device).contiguous()
    bsz, t, h, w, _ = clips.shape
    hw = h * w
    out = torch.empty((bsz, 3, t, h, w), dtype=torch.float32, device=device)
    vec16 = merge_vec16_ok(hw, clips, bg, mask_u8, out)
    work = bsz * t * (hw // 16 if vec16 else hw)
    name = "fame_merge_normalize_vec16" if vec16 else "fame_merge_normalize"
    _launch(
        name,
        device,
        (grid_1d(work, max_blocks=_max_blocks(device.index, name)),),
        (clips, bg, mask_u8, perm, mean_d, std_d, out, np.int32(bsz), np.int32(t),
         np.int32(hw)),
        "fame.merge_normalize",
    )
    return out


# ---------------------------------------------------------------------------------------------
# The fused mask: the whole FAME mask of a batch as one fixed sequence of launches


class KernelRunner(Protocol):
    """Where the launches of :func:`run_fame_mask` go: CuPy on a GPU (:class:`CupyRunner`), or
    the host emulation in the tests (tests/kernels/conftest.py), which also counts them."""

    def resident_blocks(self, kernel: str) -> int:
        """Blocks of ``kernel`` resident at once on the device (one wave)."""
        ...

    def launch(self, kernel: str, grid: tuple[int, ...], args: tuple, *, block: int) -> None:
        """Launch ``kernel`` with ``grid`` x (``block``,) threads; ``args`` are tensors on the
        clips' device and ``np.int32`` / ``np.float32`` scalars, in the kernel's order."""
        ...


class CupyRunner:
    """Launches on torch's current CUDA stream of ``device`` through CuPy (:func:`_launch`);
    ``launches`` counts them (the benchmark reports launches per call)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.launches = 0

    def resident_blocks(self, kernel: str) -> int:
        return _max_blocks(self.device.index, kernel)

    def launch(self, kernel: str, grid: tuple[int, ...], args: tuple, *, block: int) -> None:
        self.launches += 1
        nvtx_name = f"fame.{kernel.removeprefix('fame_')}"
        _launch(kernel, self.device, grid, args, nvtx_name, block=block)


@dataclass
class FameMaskResult:
    """The mask and every intermediate of one :func:`run_fame_mask` call.

    All (B, H, W) maps are contiguous on the clips' device; ``None`` where the variant does not
    compute it (variant "seed": no thresholds, counts, soft mask).

    Attributes:
        mask: bool (B, H, W), exactly int(beta * H * W) True per clip.
        motion: float32 (B, H, W), the motion map D (spec step 1).
        bins: int32 (B, H, W), colour bins 0..999 (step 4).
        seed: float32 (B, H, W), S = minmax(blur(D)) (step 2).
        thresholds: float32 (B, 2), (thr_fg, thr_bg) of step 5 (+inf / -inf for empty sets).
        counts: int32 (B, 4, 1000), color_histograms_ref's counts (steps 5-6).
        soft: float32 (B, H, W), M before the blur (step 7).
        score: float32 (B, H, W), the score the top-beta selection ranks (step 8).
        launches: kernel launches of this call.
    """

    mask: torch.Tensor
    motion: torch.Tensor
    bins: torch.Tensor
    seed: torch.Tensor
    thresholds: torch.Tensor | None
    counts: torch.Tensor | None
    soft: torch.Tensor | None
    score: torch.Tensor
    launches: int


def run_fame_mask(
    clips: torch.Tensor,
    *,
    runner: KernelRunner,
    beta: float = 0.5,
    variant: str = "fame",
    legacy_hue: bool = False,
    fg_fraction: float = 0.5,
    bg_fraction: float = 0.1,
) -> FameMaskResult:
    """The FAME mask (spec section 1) as a fixed sequence of kernel launches, no torch op between.

    Variant "fame", 7 launches for the whole batch whatever B (kernels/fame_mask.cu):
    motion_bins, blur_rows, blur_cols_minmax, seed_hist_soft, blur_rows, blur_cols_minmax,
    select_top. Variant "seed": motion_bins, blur_rows, blur_cols_minmax, select_top (4).
    Only ``torch.empty`` allocations happen in between (no kernel; the caching allocator); the
    Gaussian taps are a constant built once per device.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, T >= 2, on the runner's
            device (validated by the caller: :func:`fame_mask_cuda` or the public API).
        runner: where the launches go (:class:`CupyRunner`, or the host emulation).
        beta, variant, legacy_hue, fg_fraction, bg_fraction: as :func:`dali_fame.fame.fame_mask`.

    Returns:
        :class:`FameMaskResult`; ``mask`` equals ``fame_mask(clips, backend="torch")`` bit for
        bit (measured in tests/kernels/test_kernel_fame_mask.py).
    """
    if variant not in FUSED_VARIANTS:
        raise ValueError(
            f"dali_fame.fame.cuda: the fused mask computes variants {FUSED_VARIANTS}, got "
            f"{variant!r}"
        )
    bsz, t, h, w, _ = clips.shape
    if bsz > 65535:
        raise ValueError(f"dali_fame.fame.cuda: at most 65535 clips per call, got {bsz}")
    device = clips.device
    hw = h * w
    i32 = np.int32
    launches = 0

    def launch(kernel: str, grid: tuple[int, ...], args: tuple, block: int = BLOCK) -> None:
        nonlocal launches
        launches += 1
        runner.launch(kernel, grid, args, block=block)

    def new(dtype: torch.dtype, *shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device)

    motion, bins = new(torch.float32, bsz, h, w), new(torch.int32, bsz, h, w)
    vec4 = motion_vec4_ok(hw, clips, motion, bins)
    name = "fame_motion_bins_vec4" if vec4 else "fame_motion_bins"
    grid = grid_1d(bsz * hw // 4 if vec4 else bsz * hw, max_blocks=runner.resident_blocks(name))
    launch(name, (grid,), (clips, motion, bins, i32(bsz), i32(t), i32(hw), i32(bool(legacy_hue))))

    size = blur_kernel_size(h, w)  # radius = size // 2 < min(H, W): reflect padding is valid
    taps, radius = gaussian_taps(size, str(device)), i32(size // 2)
    tmp = new(torch.float32, bsz, h, w)

    def blur_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blur x along W then H; returns the blurred map and its per-clip (min, max) keys."""
        out, stats = new(torch.float32, bsz, h, w), new(torch.int32, bsz, 2)  # uint32 keys
        for kernel, src, dst in (("fame_blur_rows", x, tmp), ("fame_blur_cols_minmax", tmp, out)):
            grid = clip_grid(hw, bsz, resident=runner.resident_blocks(kernel))
            launch(kernel, grid, (src, dst, taps, radius, i32(h), i32(w), stats))
        return out, stats

    blurred, stats = blur_minmax(motion)
    thresholds = counts = soft = None
    if variant == "fame":
        k_fg, k_bg = int(fg_fraction * h * w), int(bg_fraction * h * w)
        seed, soft = new(torch.float32, bsz, h, w), new(torch.float32, bsz, h, w)
        thresholds, counts = new(torch.float32, bsz, 2), new(torch.int32, bsz, 4, NUM_BINS)
        launch(
            "fame_seed_hist_soft",
            (bsz,),
            (
                blurred,
                stats,
                bins,
                seed,
                thresholds,
                counts,
                soft,
                i32(hw),
                i32(k_fg),
                i32(k_bg),
                np.float32(likelihood_denominator(k_fg)),
                np.float32(likelihood_denominator(k_bg + NUM_BINS)),
            ),
            CLIP_BLOCK,
        )
        blurred, stats = blur_minmax(soft)
    score = new(torch.float32, bsz, h, w)
    mask = new(torch.uint8, bsz, h, w)
    num_fg = int(beta * h * w)  # left to right, as fame_mask evaluates it
    launch(
        "fame_select_top",
        (bsz,),
        (blurred, stats, score, mask, i32(hw), i32(num_fg)),
        CLIP_BLOCK,
    )
    if variant == "seed":
        seed = score  # select_top's min-max of the blurred motion map is the seed itself
    return FameMaskResult(
        mask=mask.view(torch.bool),
        motion=motion,
        bins=bins,
        seed=seed,
        thresholds=thresholds,
        counts=counts,
        soft=soft,
        score=score,
        launches=launches,
    )


def fame_mask_cuda(
    clips: torch.Tensor,
    *,
    beta: float = 0.5,
    variant: str = "fame",
    legacy_hue: bool = False,
    fg_fraction: float = 0.5,
    bg_fraction: float = 0.1,
) -> torch.Tensor:
    """The FAME mask of CUDA clips in at most 7 kernel launches per batch (:func:`run_fame_mask`).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, CUDA, T >= 2.
        beta, variant ("fame" or "seed"), legacy_hue, fg_fraction, bg_fraction: as
            :func:`dali_fame.fame.fame_mask` (which validates their ranges).

    Returns:
        bool (B, H, W) on the clips' device, equal to ``fame_mask(clips, backend="torch")``.
    """
    _check_clips_shape(clips)
    device = _check_placement(clips=clips)
    return run_fame_mask(
        clips,
        runner=CupyRunner(device),
        beta=beta,
        variant=variant,
        legacy_hue=legacy_hue,
        fg_fraction=fg_fraction,
        bg_fraction=bg_fraction,
    ).mask

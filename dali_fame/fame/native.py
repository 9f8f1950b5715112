"""Backend "native": the FAME mask and merge as compiled C++ on the CPU (kernels/fame_cpu.cpp).

The C++ file includes the CUDA sources ``motion_bins.cu`` and ``fame_mask.cu`` as host code and
calls their device helpers, so the arithmetic is the kernels' (and the torch reference's, bit for
bit); it only lays the loops out for the CPU: one thread per clip, SIMD-vectorised inner loops.
It is compiled with the system C++ compiler on first use (``$CXX`` or g++, about 2 s), for this
machine's CPU (``-march=native``), into ``<cache>/native/<hash>/`` (:func:`default_cache_dir`),
keyed by the sources, the flags, the compiler version and the CPU; later processes load the
cached library. Without a compiler the ``auto`` backend falls back to the torch reference
(:func:`native_status` says why).

Threads: each call uses ``torch.get_num_threads()`` workers (one clip per worker at a time);
calls from several Python threads are serialised inside the library (ctypes releases the GIL,
the per-worker buffers are shared).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from dali_fame.fame import ops as _ops
from dali_fame.fame.reference import NUM_BINS, check_clips, check_merge_inputs, scratch

__all__ = [
    "CXX_FLAGS",
    "declare",
    "fame_mask_native",
    "load_library",
    "merge_native",
    "motion_and_bins_native",
    "native_status",
]

#: compiler flags. -ffp-contract=off: never fuse a*b+c (the float steps are exact IEEE operations
#: in the reference's order); no -ffast-math. -fno-math-errno / -fno-trapping-math change no
#: result (errno and FP exception flags only) and let the vectoriser if-convert the HSV selects.
CXX_FLAGS: tuple[str, ...] = (
    "-std=c++20",
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-strict-aliasing",
    "-shared",
    "-fPIC",
    "-pthread",
    "-Wall",
    "-Wextra",
    "-Wno-unknown-pragmas",  # the kernels' #pragma unroll
)
SOURCE = "fame_cpu.cpp"
#: the files the library is built from (kernels/)
SOURCES = (SOURCE, "motion_bins.cu", "fame_mask.cu", "cuda_host_emu.cuh")

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU model and its feature flags (Linux), else the
    machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _library_path(kernels: Path, cxx: str) -> Path:
    from dali_fame.engine.data import default_cache_dir  # lazy: engine imports fame

    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    if version.returncode != 0:
        raise RuntimeError(f"{cxx} --version failed: {version.stderr.strip() or version.stdout}")
    h = hashlib.sha256()
    for part in (version.stdout, " ".join(CXX_FLAGS), _cpu_signature()):
        h.update(part.encode())
    for name in SOURCES:
        h.update(name.encode())
        h.update((kernels / name).read_bytes())
    return default_cache_dir() / "native" / h.hexdigest()[:20] / "libfame_cpu.so"


def _build(kernels: Path, cxx: str, out: Path, defines: tuple[str, ...] = ()) -> None:
    """Compile kernels/fame_cpu.cpp into ``out``; ``defines`` (``NAME=VALUE``) are the tests'
    hooks (FAME_CPU_TRIG_SKEW_ULP, FAME_CPU_NO_EXACT_FALLBACK), never used by the library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # atomic publish: concurrent builds
    flags = [f"-D{d}" for d in defines]
    cmd = [cxx, *CXX_FLAGS, *flags, f"-I{kernels}", str(kernels / SOURCE), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {SOURCE} failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
    os.replace(tmp, out)


@functools.cache
def load_library() -> ctypes.CDLL | Exception:
    """Build (once per source version and machine) and load kernels/fame_cpu.cpp; the exception
    instead when there is no compiler, no kernels directory, or the build fails."""
    try:
        from dali_fame.fame.cuda import kernels_dir

        kernels = kernels_dir()
        cxx = _compiler()
        if shutil.which(cxx) is None:
            raise FileNotFoundError(f"no C++ compiler: {cxx!r} is not on PATH (set $CXX)")
        path = _library_path(kernels, cxx)
        if not path.is_file():
            _build(kernels, cxx, path)
        lib = ctypes.CDLL(str(path))
    except Exception as exc:  # noqa: BLE001 - any reason is reported by native_status
        return exc
    return declare(lib)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the C signatures of the library's three entry points (kernels/fame_cpu.cpp)."""
    lib.fame_cpu_motion_bins.argtypes = [_P, _I, _I, _I, _I, _I, _P, _P, _I]
    lib.fame_cpu_mask.argtypes = [_P, *[_I] * 8, _F, _F, _I, _P, _I, *[_P] * 5, _I]
    lib.fame_cpu_merge.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _P, _I]
    for fn in (lib.fame_cpu_motion_bins, lib.fame_cpu_mask, lib.fame_cpu_merge):
        fn.restype = _I
    return lib


def _lib() -> ctypes.CDLL:
    lib = load_library()
    if isinstance(lib, Exception):
        raise RuntimeError(  # noqa: TRY004 - not a type error: the build failed
            f"dali_fame.fame.native: the C++ backend is unavailable ({lib})"
        ) from lib
    return lib


def native_status() -> tuple[bool, str]:
    """Whether the C++ CPU backend builds and loads here, and why not (the compile error)."""
    lib = load_library()
    if isinstance(lib, Exception):
        return False, f"{type(lib).__name__}: {lib}"
    return True, f"kernels/{SOURCE} compiled with {_compiler()} ({' '.join(CXX_FLAGS[:3])})"


def _check_cpu_clips(clips: torch.Tensor) -> None:
    check_clips(clips)
    if clips.device.type != "cpu" or not clips.is_contiguous():
        raise ValueError(
            "dali_fame.fame.native: clips must be contiguous CPU tensors, got "
            f"{clips.device} (contiguous: {clips.is_contiguous()})"
        )


def motion_and_bins_native(
    clips: torch.Tensor, *, legacy_hue: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dali_fame.fame.reference.motion_and_bins_ref` in C++ (same outputs, bit for bit).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, CPU, T >= 2.

    Returns:
        motion float32 (B, H, W); bins int32 (B, H, W) in 0..999.
    """
    _check_cpu_clips(clips)
    bsz, t, h, w, _ = clips.shape
    motion = torch.empty(bsz, h, w, dtype=torch.float32)
    bins = torch.empty(bsz, h, w, dtype=torch.int32)
    _lib().fame_cpu_motion_bins(
        clips.data_ptr(), bsz, t, h, w, int(bool(legacy_hue)), motion.data_ptr(),
        bins.data_ptr(), torch.get_num_threads(),
    )
    return motion, bins


def fame_mask_native(
    clips: torch.Tensor,
    *,
    beta: float = 0.5,
    variant: str = "fame",
    legacy_hue: bool = False,
    fg_fraction: float = 0.5,
    bg_fraction: float = 0.1,
) -> torch.Tensor:
    """The FAME mask of CPU clips in one C++ call (variants "fame" and "seed").

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, CPU, T >= 2.
        beta, variant, legacy_hue, fg_fraction, bg_fraction: as :func:`dali_fame.fame.fame_mask`
            (which validates their ranges).

    Returns:
        bool (B, H, W), equal to ``fame_mask(clips, backend="torch")`` bit for bit.
    """
    if variant not in ("fame", "seed"):
        raise ValueError(
            f"dali_fame.fame.native: the C++ mask computes variants 'fame' and 'seed', got "
            f"{variant!r}"
        )
    _check_cpu_clips(clips)
    bsz, t, h, w, _ = clips.shape
    # left to right, as api.fame_mask and the reference evaluate them: int(0.3 * 6 * 15) = 26,
    # int(0.3 * 90) = 27
    k_fg, k_bg = int(fg_fraction * h * w), int(bg_fraction * h * w)
    k_mask = int(beta * h * w)
    size = _ops.blur_kernel_size(h, w)
    # the intermediates (motion, bins as int32 bits, seed, soft) never leave this call: the
    # reference's per-thread scratch buffers, not fresh pages per call
    maps = scratch("native.maps", (4, bsz, h, w), torch.float32, clips.device)
    mask = torch.empty(bsz, h, w, dtype=torch.bool)
    _lib().fame_cpu_mask(
        clips.data_ptr(), bsz, t, h, w, int(bool(legacy_hue)), int(variant == "seed"),
        k_fg, k_bg, _ops.likelihood_denominator(k_fg),
        _ops.likelihood_denominator(k_bg + NUM_BINS),
        k_mask, _ops.gaussian_taps(size).data_ptr(), size // 2, maps[0].data_ptr(),
        maps[1].data_ptr(), maps[2].data_ptr(), maps[3].data_ptr(), mask.data_ptr(),
        torch.get_num_threads(),
    )
    return mask


def merge_native(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`dali_fame.fame.reference.merge_ref` in C++ (byte-identical).

    Args:
        clips: uint8 (B, T, H, W, 3) contiguous CPU; mask: bool / uint8 (B, H, W), nonzero =
            foreground; perm: int64 (B,), a permutation (checked by the public API).
        background: None (inter-video: the backgrounds are ``clips``) or uint8 (B, T, H, W, 3)
            contiguous like clips (intra-video).

    Returns:
        uint8 (B, T, H, W, 3).
    """
    _check_cpu_clips(clips)
    # the reference's checks: shapes, dtypes, devices, contiguity
    source = check_merge_inputs(clips, mask, perm, background)
    bsz, t, h, w, _ = clips.shape
    mask, perm = mask.cpu().contiguous(), perm.cpu().contiguous()
    if bsz and (int(perm.min()) < 0 or int(perm.max()) >= bsz):  # the C++ would read anywhere
        raise ValueError(f"dali_fame.fame.native: perm values must lie in 0..{bsz - 1}")
    out = torch.empty_like(clips)
    _lib().fame_cpu_merge(
        clips.data_ptr(), source.data_ptr(), mask.data_ptr(), perm.data_ptr(), bsz, t, h, w,
        out.data_ptr(), torch.get_num_threads(),
    )
    return out

"""Fixtures of the kernel tests: the host-emulated kernels and an NVRTC compiler.

``emu`` builds ``kernels/*.cu`` as host C++ (``kernels/cuda_host_emu.cuh``) with the small C ABI
shims in ``tests/kernels/emu/`` into shared libraries, once per test session, cached by a hash of
the sources, the compiler and its flags (in pytest's cache directory, so a rerun with unchanged
sources does not recompile). The wrapper launches the kernels with the same launch-configuration
helpers as :mod:`dali_fame.fame.cuda`, with a small block cap so that the grid-stride loops run
several rounds.

``nvrtc_compile`` calls NVRTC 12 (the nvidia-cuda-nvrtc-cu12 wheel) through ctypes; NVRTC needs
no GPU. CuPy's own NVRTC binding may load another NVRTC major version (13 drops compute_70), so
the tests pin the library they load.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_fame.fame import cuda as fcuda

EMU_DIR = Path(__file__).resolve().parent / "emu"
#: shim file -> the kernel file it includes
SHIMS = {
    "motion_bins": "motion_bins_shim.cpp",
    "color_hist": "color_hist_shim.cpp",
    "merge": "merge_shim.cpp",
    "fame_mask": "fame_mask_shim.cpp",  # every kernel of the fused mask, by name
    "selftest": "emu_selftest_shim.cpp",  # the emulator itself
    "bins_check": "bins_check_shim.cpp",  # FP64-free bins vs the exact bins, exhaustively
    "bins_check_skew_p2": "bins_check_shim.cpp",  # ... with sincosf 2 ulp too high
    "bins_check_skew_m2": "bins_check_shim.cpp",  # ... and 2 ulp too low
}
#: extra compiler flags per shim build
SHIM_FLAGS = {
    "bins_check_skew_p2": ("-DFAME_EMU_SINCOSF_SKEW_ULP=2",),
    "bins_check_skew_m2": ("-DFAME_EMU_SINCOSF_SKEW_ULP=-2",),
}
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = (
    "-std=c++20",
    "-O2",
    "-shared",
    "-fPIC",
    "-pthread",
    "-ffp-contract=off",  # never fuse a*b+c: the bins are float-exact IEEE operations
    "-fno-strict-aliasing",  # the vector paths reinterpret byte buffers as uint4 / float4
    "-Wall",
    "-Wextra",
    "-Wno-unknown-pragmas",  # #pragma unroll
)
#: block cap of the emulated launches (one std::thread per CUDA thread; a barrier per block)
EMU_MAX_BLOCKS = 6


def _source_hash(kernels: Path) -> str:
    h = hashlib.sha256()
    version = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    h.update(version.encode())
    h.update(" ".join(CXXFLAGS).encode())
    h.update(repr(sorted(SHIM_FLAGS.items())).encode())
    for path in sorted(kernels.glob("*.cu*")) + sorted(EMU_DIR.glob("*.cpp")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _build(kernels: Path, out_dir: Path) -> dict[str, Path]:
    """Compiles every shim (in parallel) into out_dir; returns {stem: .so path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    libs = {stem: out_dir / f"lib{stem}_emu.so" for stem in SHIMS}
    procs = {}
    for stem, shim in SHIMS.items():
        if libs[stem].is_file():
            continue
        tmp = out_dir / f".lib{stem}_emu.{os.getpid()}.so"  # atomic publish below
        flags = SHIM_FLAGS.get(stem, ())
        cmd = [CXX, *CXXFLAGS, *flags, f"-I{kernels}", str(EMU_DIR / shim), "-o", str(tmp)]
        procs[stem] = (subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), tmp, cmd)
    for stem, (proc, tmp, cmd) in procs.items():
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"host-emulation build failed: {' '.join(cmd)}\n{err}")
        if err.strip():
            raise RuntimeError(
                f"host-emulation build warned (keep the kernels warning-free):\n{err}"
            )
        os.replace(tmp, libs[stem])
    return libs


P = ctypes.c_void_p
I = ctypes.c_int
U = ctypes.c_uint


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


@dataclass
class Emu:
    """Host-emulated kernels with torch-tensor wrappers (CPU tensors, contiguous)."""

    libs: dict[str, ctypes.CDLL]
    build_seconds: float

    def __post_init__(self) -> None:
        mb, ch, mg = self.libs["motion_bins"], self.libs["color_hist"], self.libs["merge"]
        mb.emu_motion_bins.argtypes = [I, U, U, P, P, P, I, I, I, I]
        ch.emu_color_hist.argtypes = [U, U, U, P, P, P, P, P, I]
        mg.emu_merge.argtypes = [I, U, U, P, P, P, P, P, I, I, I]
        mg.emu_merge_normalize.argtypes = [I, U, U, P, P, P, P, P, P, P, I, I, I]
        st = self.libs["selftest"]
        st.emu_selftest_reverse.argtypes = [U, U, P, P, I]
        st.emu_selftest_ids.argtypes = [U, U, U, U, U, U, P]
        st.emu_selftest_atomics.argtypes = [U, U, P, P, I]
        for lib, fn in (
            (mb, "emu_motion_bins"),
            (ch, "emu_color_hist"),
            (mg, "emu_merge"),
            (mg, "emu_merge_normalize"),
            (st, "emu_selftest_reverse"),
            (st, "emu_selftest_ids"),
            (st, "emu_selftest_atomics"),
        ):
            getattr(lib, fn).restype = None

    @staticmethod
    def _use_vec(path: str, auto: bool) -> bool:
        if path == "auto":
            return auto
        if path == "vec" and not auto:
            raise AssertionError("the vector kernel was forced where its preconditions fail")
        return path == "vec"

    def motion_and_bins(
        self,
        clips: torch.Tensor,
        *,
        legacy_hue: bool = False,
        path: str = "auto",
        max_blocks: int = EMU_MAX_BLOCKS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, t, h, w, _ = clips.shape
        hw = h * w
        motion = torch.empty((bsz, h, w), dtype=torch.float32)
        bins = torch.empty((bsz, h, w), dtype=torch.int32)
        vec = self._use_vec(path, fcuda.motion_vec4_ok(hw, clips, motion, bins))
        grid = fcuda.grid_1d(bsz * hw // 4 if vec else bsz * hw, max_blocks=max_blocks)
        self.libs["motion_bins"].emu_motion_bins(
            int(vec),
            grid,
            fcuda.BLOCK,
            _ptr(clips),
            _ptr(motion),
            _ptr(bins),
            bsz,
            t,
            hw,
            int(legacy_hue),
        )
        return motion, bins

    def color_histograms(
        self,
        bins: torch.Tensor,
        seed: torch.Tensor,
        thr_fg: torch.Tensor,
        thr_bg: torch.Tensor,
        *,
        max_blocks_per_clip: int = 3,
        pixels_per_block: int = fcuda.HIST_PIXELS_PER_BLOCK,
    ) -> torch.Tensor:
        bsz, h, w = bins.shape
        hist = torch.zeros((bsz, 4, 1000), dtype=torch.int32)
        gx, gy = fcuda.hist_grid(
            h * w, bsz, max_blocks_per_clip=max_blocks_per_clip, pixels_per_block=pixels_per_block
        )
        self.libs["color_hist"].emu_color_hist(
            gx,
            gy,
            fcuda.BLOCK,
            _ptr(bins),
            _ptr(seed),
            _ptr(thr_fg),
            _ptr(thr_bg),
            _ptr(hist),
            h * w,
        )
        return hist

    def merge(
        self,
        clips: torch.Tensor,
        mask: torch.Tensor,
        perm: torch.Tensor,
        *,
        background: torch.Tensor | None = None,
        path: str = "auto",
        max_blocks: int = EMU_MAX_BLOCKS,
    ) -> torch.Tensor:
        bsz, t, h, w, _ = clips.shape
        hw = h * w
        mask_u8 = mask.view(torch.uint8)
        bg = clips if background is None else background
        out = torch.empty_like(clips)
        vec = self._use_vec(path, fcuda.merge_vec16_ok(hw, clips, bg, mask_u8, out))
        grid = fcuda.grid_1d(bsz * t * (hw // 16 if vec else hw), max_blocks=max_blocks)
        self.libs["merge"].emu_merge(
            int(vec),
            grid,
            fcuda.BLOCK,
            _ptr(clips),
            _ptr(bg),
            _ptr(mask_u8),
            _ptr(perm),
            _ptr(out),
            bsz,
            t,
            hw,
        )
        return out

    def merge_normalize(
        self,
        clips: torch.Tensor,
        mask: torch.Tensor,
        perm: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        background: torch.Tensor | None = None,
        path: str = "auto",
        max_blocks: int = EMU_MAX_BLOCKS,
    ) -> torch.Tensor:
        bsz, t, h, w, _ = clips.shape
        hw = h * w
        mask_u8 = mask.view(torch.uint8)
        bg = clips if background is None else background
        out = torch.empty((bsz, 3, t, h, w), dtype=torch.float32)
        vec = self._use_vec(path, fcuda.merge_vec16_ok(hw, clips, bg, mask_u8, out))
        grid = fcuda.grid_1d(bsz * t * (hw // 16 if vec else hw), max_blocks=max_blocks)
        self.libs["merge"].emu_merge_normalize(
            int(vec),
            grid,
            fcuda.BLOCK,
            _ptr(clips),
            _ptr(bg),
            _ptr(mask_u8),
            _ptr(perm),
            _ptr(mean),
            _ptr(std),
            _ptr(out),
            bsz,
            t,
            hw,
        )
        return out


class EmuRunner:
    """:class:`dali_fame.fame.cuda.KernelRunner` over the host-emulated kernels (CPU tensors).

    Launches any kernel of ``tests/kernels/emu/fame_mask_shim.cpp`` by name with the grid and
    block the caller computed (the real configuration), checks that every scalar is
    typed as the launchers must type it for CuPy (np.int32 / np.float32), and records each launch
    in ``launched`` (kernel name, grid), so that tests can count the launches of a whole path.
    """

    def __init__(self, lib: ctypes.CDLL, *, max_blocks: int = EMU_MAX_BLOCKS) -> None:
        self.lib = lib
        self.max_blocks = max_blocks
        self.launched: list[tuple[str, tuple[int, ...]]] = []
        self.blocks: list[int] = []  # threads per block of each launch

    def resident_blocks(self, kernel: str) -> int:
        return self.max_blocks

    def launch(self, kernel: str, grid: tuple[int, ...], args: tuple, *, block: int) -> None:
        values = []
        for a in args:
            if isinstance(a, torch.Tensor):
                assert a.is_contiguous() and a.device.type == "cpu", (kernel, a.shape)
                values.append(ctypes.c_void_p(a.data_ptr()))
            elif type(a) is np.int32:
                values.append(ctypes.c_int(int(a)))
            elif type(a) is np.float32:
                values.append(ctypes.c_float(float(a)))
            else:  # CuPy would pass a Python int / float as 64 bits
                raise AssertionError(f"{kernel}: untyped scalar argument {a!r}")
        assert 1 <= len(grid) <= 2 and all(g >= 1 for g in grid), (kernel, grid)
        gx, gy = (*grid, 1)[:2]
        assert block % 32 == 0 and 32 <= block <= 1024, (kernel, block)
        self.launched.append((kernel, tuple(grid)))
        self.blocks.append(block)
        getattr(self.lib, f"emu_{kernel}")(gx, gy, block, *values)


@pytest.fixture
def emu_runner(emu) -> EmuRunner:
    """A fresh launch-counting runner over the emulated fused-mask kernels."""
    return EmuRunner(emu.libs["fame_mask"])


@pytest.fixture(scope="session")
def emu(request, tmp_path_factory) -> Emu:
    """The kernels compiled as host C++ (built once per session, cached by source hash)."""
    if shutil.which(CXX) is None:
        pytest.skip(f"host emulation needs a C++20 compiler ({CXX} not found)")
    kernels = fcuda.kernels_dir()
    key = _source_hash(kernels)
    cache = getattr(request.config, "cache", None)
    root = (
        cache.mkdir("dali_fame_kernels_emu")
        if cache is not None
        else (tmp_path_factory.mktemp("kernels_emu"))
    )
    start = time.perf_counter()
    libs = _build(kernels, Path(root) / key)
    seconds = time.perf_counter() - start
    return Emu({stem: ctypes.CDLL(str(p)) for stem, p in libs.items()}, seconds)


# ---------------------------------------------------------------------------------------------
# NVRTC through ctypes


def _nvrtc_library() -> str | None:
    try:
        import nvidia.cuda_nvrtc as pkg  # nvidia-cuda-nvrtc-cu12
    except ImportError:
        return None
    for base in pkg.__path__:
        found = sorted(glob.glob(os.path.join(base, "lib", "libnvrtc.so.12*")))
        if found:
            return found[0]
    return None


@dataclass
class NvrtcResult:
    ok: bool
    log: str
    ptx: str


class Nvrtc:
    """Minimal NVRTC binding: source -> PTX for a virtual architecture, no GPU involved."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
        self.version = (major.value, minor.value)

    def _check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"NVRTC: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, source: str, name: str, options: tuple[str, ...]) -> NvrtcResult:
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), name.encode(), 0, None, None
            )
        )
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
            log = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetProgramLog(prog, log))
            ptx = ""
            if status == 0:
                self._check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
                buf = ctypes.create_string_buffer(size.value)
                self._check(self.lib.nvrtcGetPTX(prog, buf))
                ptx = buf.value.decode()
            return NvrtcResult(status == 0, log.value.decode(errors="replace"), ptx)
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="session")
def nvrtc() -> Nvrtc:
    path = _nvrtc_library()
    if path is None:
        pytest.skip("NVRTC 12 not installed (pip install nvidia-cuda-nvrtc-cu12)")
    return Nvrtc(path)

"""``dali-fame doctor``: what is installed, what hardware is visible, and what a run would use.

Exit code 0 when a run can start (torch and PyAV import, and any NVIDIA GPU present is usable
by the installed torch), 1 otherwise: a GPU that torch cannot use (driver too old for its CUDA
build, no kernels for the GPU's architecture) is reported with the exact fix
(:mod:`dali_fame.gpu_check`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shutil
import sys
from pathlib import Path

from dali_fame.backends import cuda_device_count, module_version, select_fame_backend, select_loader
from dali_fame.gpu_check import diagnose, read_facts

PACKAGES = [
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("DALI", "nvidia.dali"),
    ("CuPy", "cupy"),
    ("PyAV", "av"),
    ("accelerate", "accelerate"),
    ("timm", "timm"),
    ("tensorboard", "tensorboard"),
]


def nvrtc_libraries() -> list[tuple[str, str]]:
    """(path, "major.minor") of every NVRTC shared library shipped in the installed wheels.

    torch's CUDA 13 build carries NVRTC 13 (nvidia/cu13/lib); nvidia-cuda-nvrtc-cu12 carries
    NVRTC 12 (nvidia/cuda_nvrtc/lib). CuPy compiles with whichever one the process loaded
    first: torch loads its own at import, so CuPy's kernels use torch's NVRTC.
    """
    found = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        for lib in sorted(base.glob("*/lib/libnvrtc.so.*")) if base.is_dir() else []:
            if "builtins" in lib.name or "alt" in lib.name:
                continue
            try:
                handle = ctypes.CDLL(str(lib))
                major, minor = ctypes.c_int(), ctypes.c_int()
                handle.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
                found.append((str(lib), f"{major.value}.{minor.value}"))
            except OSError as err:
                found.append((str(lib), f"does not load: {err}"))
    return found


def loaded_nvrtc() -> str | None:
    """The NVRTC (``libnvrtc.so.N``) CuPy will compile with in this process, if one is loaded.

    CuPy's loader (cuda-pathfinder) first looks for an already-loaded ``libnvrtc.so.13``, then
    ``.so.12``; torch loads its own at import, so with a CUDA 13 torch that is NVRTC 13.
    """
    try:
        with open("/proc/self/maps") as fh:
            names = {Path(line.split()[-1]).name for line in fh if "libnvrtc.so" in line}
    except OSError:
        return None
    return next((n for n in ("libnvrtc.so.13", "libnvrtc.so.12") if n in names), None)


def report() -> tuple[list[str], bool]:
    """The doctor's lines and whether a run is possible."""
    lines = [f"python      {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs)"]
    for label, mod in PACKAGES:
        lines.append(f"{label:<11} {module_version(mod) or 'not importable'}")
    import torch

    lines.append(f"torch CUDA  {torch.version.cuda or 'CPU build'}")
    loaded = loaded_nvrtc()  # before nvrtc_libraries() opens every wheel's copy to read its version
    for path, version in nvrtc_libraries():
        lines.append(f"NVRTC       {version}  {path}")
    if not nvrtc_libraries():
        lines.append("NVRTC       none found (CuPy cannot compile the FAME kernels)")
    if loaded:
        lines.append(f"CuPy NVRTC  {loaded} (already loaded in this process: CuPy compiles the kernels with it)")
    cxx = os.environ.get("CXX", "g++")  # the compiler dali_fame.fame.native builds with
    found = shutil.which(cxx)
    lines.append(
        f"{cxx:<11.11s} {found or 'not found'} (builds the native CPU FAME backend and the tests' "
        "host emulation of the CUDA kernels)"
    )
    facts = read_facts()
    verdict = diagnose(facts)
    lines.append(f"NVIDIA      driver {facts.driver or 'none'}, device nodes {len(facts.device_nodes)}, "
                 f"nvidia-smi {'lists ' + str(len(facts.devices)) + ' GPU(s)' if facts.devices else 'absent or silent'}")
    for problem in verdict.problems:
        lines.append(f"GPU PROBLEM {problem}")
    if verdict.fix:
        lines.append(f"GPU FIX     {verdict.fix}")
    gpus = cuda_device_count()
    if gpus:
        for i in range(gpus):
            props = torch.cuda.get_device_properties(i)
            lines.append(
                f"GPU {i}       {props.name}, compute capability {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.1f} GiB"
            )
    else:
        lines.append("GPU         none visible to torch")
    loader, fame = select_loader(), select_fame_backend()
    lines.append(f"decoder     {loader.name}: {loader.reason}")
    lines.append(f"FAME        {fame.name}: {fame.reason}")
    usable = module_version("torch") is not None and module_version("av") is not None
    gpu_ok = not verdict.gpu_present or verdict.usable
    if not usable:
        status = "NOT USABLE: torch and PyAV are required"
    elif not gpu_ok:
        status = "GPU UNUSABLE: see GPU PROBLEM / GPU FIX above (runs stop unless --loader cpu)"
    else:
        status = "OK: ready to run" + ("" if verdict.gpu_present else " (no NVIDIA GPU on this machine)")
    lines.append("status      " + status)
    usable = usable and gpu_ok
    return lines, usable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Exit code 0 when a run can start on this machine."


def run(args: argparse.Namespace) -> int:
    lines, usable = report()
    print("\n".join(lines))
    return 0 if usable else 1

"""Which decoder and which FAME backend a run uses, and why.

One place decides, so that ``dali-fame doctor`` and the trainer always agree. Everything here
is probed lazily (nothing touches CUDA at import time) and cached per process.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """A selected implementation and the human-readable reason for it."""

    name: str
    reason: str


@functools.cache
def cuda_device_count() -> int:
    """Number of CUDA devices torch can use (0 on CPU-only machines or CPU builds)."""
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


@functools.cache
def module_version(name: str) -> str | None:
    """Version string of an importable module, or None when it does not import."""
    try:
        mod = importlib.import_module(name)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def select_loader(requested: str = "auto") -> Choice:
    """Pick the video loader: ``"dali"`` on a GPU with DALI, else ``"cpu"`` (PyAV workers).

    ``requested`` is ``"auto"``, ``"dali"`` or ``"cpu"``; forcing ``"dali"`` without a GPU is
    allowed (DALI's CPU decoder reads VP9 and MJPEG only) and says so in the reason.
    """
    if requested not in ("auto", "dali", "cpu"):
        raise ValueError(f"loader must be one of auto, dali, cpu; got {requested!r}")
    has_dali = module_version("nvidia.dali") is not None
    gpus = cuda_device_count()
    if requested == "cpu":
        return Choice("cpu", "forced with --loader cpu")
    if requested == "dali":
        if not has_dali:
            raise ValueError("--loader dali was requested but nvidia.dali does not import")
        where = "GPU (mixed decoding)" if gpus else "CPU (VP9 and MJPEG only: no CUDA device)"
        return Choice("dali", f"forced with --loader dali; decoding on {where}")
    if gpus and has_dali:
        return Choice("dali", f"{gpus} CUDA device(s) and DALI {module_version('nvidia.dali')}")
    if not gpus:
        return Choice("cpu", "no CUDA device: CPU loader (PyAV workers)")
    return Choice("cpu", "CUDA device present but nvidia.dali does not import: CPU loader")


def select_fame_backend(requested: str = "auto", device=None) -> Choice:
    """Pick the FAME backend for clips on ``device``: ``"cuda"`` (CuPy RawKernels) on a GPU and
    ``"native"`` (kernels/fame_cpu.cpp) on the CPU when they build and pass a tiny probe against
    the reference (:mod:`dali_fame.fame.dispatch`), else ``"torch"`` with the reason.

    Args:
        requested: "auto", "cuda", "native" or "torch".
        device: where the clips will be (a torch.device or its string); default: GPU 0 when a
            CUDA device exists, else the CPU. (A CPU run on a GPU machine, ACCELERATE_USE_CPU,
            passes its own device so that it gets the CPU backend.)

    Raises:
        ValueError: an unknown name, or a compiled backend requested where it cannot run (the
            reason).
    """
    import torch

    if requested not in ("auto", "cuda", "native", "torch"):
        raise ValueError(
            f"FAME backend must be one of auto, cuda, native, torch; got {requested!r}"
        )
    if requested == "torch":
        return Choice("torch", "forced: torch reference")
    if device is None:
        device = "cuda" if cuda_device_count() else "cpu"
    from dali_fame.fame import dispatch

    device = torch.device(device)
    compiled = dispatch.compiled_backend(device)
    if requested == "cuda" and not cuda_device_count():
        raise ValueError("FAME backend 'cuda' was requested but no CUDA device is available")
    if requested not in ("auto", compiled):
        raise ValueError(
            f"FAME backend {requested!r} was requested but the clips are on {device} "
            f"(use 'auto' or '{compiled}')"
        )
    ok, reason = dispatch.compiled_status(device)
    if compiled == "cuda":
        label, where = f"CuPy {module_version('cupy')}: {reason}", "GPU"
    else:
        label, where = f"C++ on the CPU: {reason}", "CPU"
    if ok:
        return Choice(compiled, label)
    if requested == compiled:
        raise ValueError(f"FAME backend {compiled!r} was requested but cannot run: {reason}")
    return Choice("torch", f"{compiled} kernels unavailable ({reason}): torch reference on the {where}")

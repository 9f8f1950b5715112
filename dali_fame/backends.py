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


def select_fame_backend(requested: str = "auto") -> Choice:
    """Pick the FAME backend: ``"cuda"`` (CuPy RawKernels) when they load, compile and pass a
    tiny probe on GPU 0 (:func:`dali_fame.fame.dispatch.cuda_ops_status`), else ``"torch"``.

    Raises:
        ValueError: an unknown name, or ``"cuda"`` requested where it cannot run (the reason).
    """
    if requested not in ("auto", "cuda", "torch"):
        raise ValueError(f"FAME backend must be one of auto, cuda, torch; got {requested!r}")
    if requested == "torch":
        return Choice("torch", "forced: torch reference")
    if not cuda_device_count():
        if requested == "cuda":
            raise ValueError("FAME backend 'cuda' was requested but no CUDA device is available")
        return Choice("torch", "no CUDA device: torch reference on the CPU")
    from dali_fame.fame.dispatch import cuda_ops_status

    ok, reason = cuda_ops_status(0)
    if ok:
        return Choice("cuda", f"CuPy {module_version('cupy')}: {reason}")
    if requested == "cuda":
        raise ValueError(f"FAME backend 'cuda' was requested but cannot run: {reason}")
    return Choice("torch", f"CUDA kernels unavailable ({reason}): torch reference on the GPU")

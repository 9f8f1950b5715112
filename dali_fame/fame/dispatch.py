"""Backend selection: which implementation of the four FAME intermediates runs.

``backend="torch"`` runs :mod:`dali_fame.fame.reference` on the tensors' device (CPU or CUDA).
``backend="cuda"`` runs the CuPy RawKernels of :mod:`dali_fame.fame.cuda` (CUDA tensors only;
an error if they cannot be loaded). ``backend="auto"`` picks ``"cuda"`` for CUDA tensors and
``"torch"`` for CPU tensors; if the CUDA backend cannot be loaded (CuPy missing, ...) it falls
back to the torch reference on the GPU with a one-time warning. Everything else (blur, min-max,
thresholds, top-k) is the same torch code on every backend.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dali_fame.fame import reference

__all__ = ["BACKENDS", "Ops", "resolve_ops"]

BACKENDS = ("auto", "torch", "cuda")


@dataclass(frozen=True)
class Ops:
    """The four swappable intermediates, with the signatures of the ``*_ref`` functions."""

    name: str
    motion_and_bins: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    color_histograms: Callable[..., torch.Tensor]
    merge: Callable[..., torch.Tensor]
    merge_normalize: Callable[..., torch.Tensor]


TORCH_OPS = Ops(
    name="torch",
    motion_and_bins=reference.motion_and_bins_ref,
    color_histograms=reference.color_histograms_ref,
    merge=reference.merge_ref,
    merge_normalize=reference.merge_normalize_ref,
)


@functools.cache
def _load_cuda_ops() -> Ops | Exception:
    """Import the CuPy backend once per process; returns the exception when it cannot load."""
    try:
        from dali_fame.fame import cuda as _cuda

        return Ops(
            name="cuda",
            motion_and_bins=_cuda.motion_and_bins_cuda,
            color_histograms=_cuda.color_histograms_cuda,
            merge=_cuda.merge_cuda,
            merge_normalize=_cuda.merge_normalize_cuda,
        )
    except Exception as exc:  # noqa: BLE001 - no cupy, no module, a broken install
        return exc


@functools.cache
def _warn_fallback(reason: str) -> None:
    # lru_cache makes the warning one-time per reason without a module-level flag.
    warnings.warn(
        f"dali_fame.fame: the CUDA FAME backend is unavailable ({reason}); "
        "using the torch reference on the GPU (same results, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_ops(backend: str, device: torch.device) -> Ops:
    """The implementation of the intermediates for tensors on ``device``.

    Args:
        backend: "auto", "torch" or "cuda".
        device: where the clips are.

    Raises:
        ValueError: unknown backend, or "cuda" for CPU tensors.
        RuntimeError: "cuda" forced but the CuPy backend cannot be loaded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"dali_fame.fame: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return TORCH_OPS
    if device.type != "cuda":
        if backend == "cuda":
            raise ValueError(
                f"dali_fame.fame: backend='cuda' needs CUDA tensors, got tensors on {device}"
            )
        return TORCH_OPS
    ops = _load_cuda_ops()
    if isinstance(ops, Ops):
        return ops
    reason = f"{type(ops).__name__}: {ops}"
    if backend == "cuda":
        raise RuntimeError(f"dali_fame.fame: backend='cuda' requested but unavailable ({reason})")
    _warn_fallback(reason)
    return TORCH_OPS

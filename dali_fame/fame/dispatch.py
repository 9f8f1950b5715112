"""Backend selection: which implementation of the four FAME intermediates runs.

``backend="torch"`` runs :mod:`dali_fame.fame.reference` on the tensors' device (CPU or CUDA).
``backend="cuda"`` runs the CuPy RawKernels of :mod:`dali_fame.fame.cuda` (CUDA tensors only).
``backend="native"`` runs the C++ of :mod:`dali_fame.fame.native` (CPU tensors only; compiled
on first use). ``backend="auto"`` picks ``"cuda"`` for CUDA tensors and ``"native"`` for CPU
tensors; if that backend cannot be used (CuPy missing, NVRTC or the C++ compiler cannot build
a kernel, a kernel does not launch or disagrees with the reference on a tiny probe) it falls
back to the torch reference with a one-time warning naming the reason, and naming the backend
explicitly raises with that reason. With the torch backend everything else (blur, min-max,
thresholds, top-k) is the shared torch code of :mod:`dali_fame.fame.ops`; the CUDA and native
backends also carry ``fame_mask``, the whole mask of variants "fame" / "seed" in one fused path
(:func:`dali_fame.fame.cuda.fame_mask_cuda`: a fixed sequence of kernels;
:func:`dali_fame.fame.native.fame_mask_native`: one C++ call), bit-identical to that code.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dali_fame.fame import reference

__all__ = [
    "BACKENDS",
    "Ops",
    "compiled_backend",
    "compiled_status",
    "cuda_ops_status",
    "native_ops_status",
    "resolve_ops",
]

BACKENDS = ("auto", "torch", "cuda", "native")


@dataclass(frozen=True)
class Ops:
    """The four swappable intermediates, with the signatures of the ``*_ref`` functions, and
    optionally the fused mask (``fame_mask_cuda``'s signature; None: compose the mask in torch)."""

    name: str
    motion_and_bins: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    color_histograms: Callable[..., torch.Tensor]
    merge: Callable[..., torch.Tensor]
    merge_normalize: Callable[..., torch.Tensor]
    fame_mask: Callable[..., torch.Tensor] | None = None


TORCH_OPS = Ops(
    name="torch",
    motion_and_bins=reference.motion_and_bins_ref,
    color_histograms=reference.color_histograms_ref,
    merge=reference.merge_ref,
    merge_normalize=reference.merge_normalize_ref,
)


def _probe(ops: Ops, device: torch.device) -> None:
    """Run each function of a compiled backend once on a tiny input and compare with the
    reference.

    Compiling is not enough: a kernel can compile for the device and still fail to launch (no
    image for the architecture, a driver too old for the PTX) or return wrong results; this
    finds out at selection time, once per device, instead of at the first training step.
    """
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, 3, 5, 7, 3), generator=gen, dtype=torch.uint8)
    mask = torch.rand(2, 5, 7, generator=gen) > 0.5
    perm = torch.tensor([1, 0])
    mean, std = torch.tensor([0.45, 0.45, 0.45]), torch.tensor([0.225, 0.225, 0.225])
    cpu = (clips, mask, perm)
    dev = tuple(t.to(device) for t in cpu)
    motion, bins = ops.motion_and_bins(dev[0])
    ref_motion, ref_bins = TORCH_OPS.motion_and_bins(clips)
    seed = ref_motion.contiguous()
    thr_fg, thr_bg = seed.flatten(1).max(1).values, seed.flatten(1).min(1).values
    hist = ops.color_histograms(bins, seed.to(device), thr_fg.to(device), thr_bg.to(device))
    checks = {
        "motion_and_bins": torch.equal(bins.cpu(), ref_bins)
        and torch.allclose(motion.cpu(), ref_motion),
        "color_histograms": torch.equal(
            hist.cpu(), TORCH_OPS.color_histograms(ref_bins, seed, thr_fg, thr_bg)
        ),
        "merge": torch.equal(ops.merge(*dev).cpu(), TORCH_OPS.merge(*cpu)),
        "merge_normalize": torch.allclose(
            ops.merge_normalize(*dev, mean.to(device), std.to(device)).cpu(),
            TORCH_OPS.merge_normalize(*cpu, mean, std),
        ),
        # intra-video: backgrounds from another batch (here the clips reversed in time)
        "merge[background]": torch.equal(
            ops.merge(*dev, background=dev[0].flip(1).contiguous()).cpu(),
            TORCH_OPS.merge(*cpu, background=clips.flip(1).contiguous()),
        ),
    }
    if ops.fame_mask is not None:
        from dali_fame.fame.api import fame_mask  # lazy: api imports this module

        for variant in ("fame", "seed"):
            checks[f"fame_mask[{variant}]"] = torch.equal(
                ops.fame_mask(dev[0], variant=variant).cpu(),
                fame_mask(clips, variant=variant, backend="torch"),
            )
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        raise RuntimeError(f"the {ops.name} kernels ran but disagree with the reference: {wrong}")


@functools.cache
def _load_cuda_ops(device_index: int = 0) -> Ops | Exception:
    """Import CuPy and the launchers, compile every kernel for the device and run each once
    (:func:`_probe`); once per process and device. Returns the exception when any step fails."""
    try:
        import cupy  # noqa: F401 - dali_fame.fame.cuda imports it lazily: fail here, not later

        from dali_fame.fame import cuda as _cuda

        ops = Ops(
            name="cuda",
            motion_and_bins=_cuda.motion_and_bins_cuda,
            color_histograms=_cuda.color_histograms_cuda,
            merge=_cuda.merge_cuda,
            merge_normalize=_cuda.merge_normalize_cuda,
            fame_mask=_cuda.fame_mask_cuda,
        )
        _cuda._kernels(device_index)  # NVRTC compilation of every kernel file
        _probe(ops, torch.device("cuda", device_index))
        return ops
    except Exception as exc:  # noqa: BLE001 - no cupy, no NVRTC, no kernel image, a broken install
        return exc


def cuda_ops_status(device_index: int = 0) -> tuple[bool, str]:
    """Whether the CUDA backend loads, compiles and runs on a device, and why not.

    The one check behind both ``backend="auto"`` and :func:`dali_fame.backends.select_fame_backend`
    (so ``doctor`` and the trainer report what will really run).
    """
    return _status(_load_cuda_ops(device_index), lambda: "CuPy RawKernels compiled")


@functools.cache
def _load_native_ops() -> Ops | Exception:
    """Compile and load kernels/fame_cpu.cpp and run each function once (:func:`_probe`); once
    per process. Returns the exception when any step fails."""
    try:
        from dali_fame.fame import native as _native

        lib = _native.load_library()
        if isinstance(lib, Exception):
            raise lib
        ops = Ops(
            name="native",
            motion_and_bins=_native.motion_and_bins_native,
            color_histograms=reference.color_histograms_ref,
            merge=_native.merge_native,
            merge_normalize=reference.merge_normalize_ref,
            fame_mask=_native.fame_mask_native,
        )
        _probe(ops, torch.device("cpu"))
        return ops
    except Exception as exc:  # noqa: BLE001 - no compiler, a failed build, a wrong result
        return exc


def native_ops_status() -> tuple[bool, str]:
    """Whether the C++ CPU backend builds, loads and agrees with the reference, and why not."""
    from dali_fame.fame.native import native_status  # lazy, like every backend import here

    return _status(_load_native_ops(), lambda: native_status()[1])


def _status(loaded: Ops | Exception, describe: Callable[[], str]) -> tuple[bool, str]:
    """(True, what ran, checked) for loaded ops; (False, the exception as text) otherwise."""
    if isinstance(loaded, Ops):
        return True, f"{describe()}, checked against the reference"
    return False, f"{type(loaded).__name__}: {loaded}"


def compiled_backend(device: torch.device) -> str:
    """The compiled backend for tensors on ``device``: "cuda" on a GPU, "native" elsewhere."""
    return "cuda" if device.type == "cuda" else "native"


def compiled_status(device: torch.device) -> tuple[bool, str]:
    """:func:`cuda_ops_status` or :func:`native_ops_status`, whichever serves ``device``."""
    if compiled_backend(device) == "cuda":
        return cuda_ops_status(device.index or 0)
    return native_ops_status()


@functools.cache
def _warn_fallback(backend: str, reason: str) -> None:
    # functools.cache makes the warning one-time per reason without a module-level flag.
    where = "the GPU" if backend == "cuda" else "the CPU"
    warnings.warn(
        f"dali_fame.fame: the {backend} FAME backend is unavailable ({reason}); "
        f"using the torch reference on {where} (same results, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_ops(backend: str, device: torch.device) -> Ops:
    """The implementation of the intermediates for tensors on ``device``.

    Args:
        backend: "auto", "torch", "cuda" or "native".
        device: where the clips are.

    Raises:
        ValueError: unknown backend, "cuda" for CPU tensors or "native" for CUDA tensors.
        RuntimeError: "cuda" / "native" forced but that backend cannot be loaded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"dali_fame.fame: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return TORCH_OPS
    compiled = compiled_backend(device)
    if backend not in ("auto", compiled):
        raise ValueError(
            f"dali_fame.fame: backend={backend!r} needs "
            f"{'CUDA' if backend == 'cuda' else 'CPU'} tensors, got tensors on {device}"
        )
    if device.type not in ("cuda", "cpu"):
        return TORCH_OPS
    ops = _load_cuda_ops(device.index or 0) if compiled == "cuda" else _load_native_ops()
    if isinstance(ops, Ops):
        return ops
    reason = f"{type(ops).__name__}: {ops}"
    if backend == compiled:
        raise RuntimeError(
            f"dali_fame.fame: backend={compiled!r} requested but unavailable ({reason})"
        )
    _warn_fallback(compiled, reason)
    return TORCH_OPS

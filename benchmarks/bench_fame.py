"""Benchmark FAME: the torch reference (CPU, and GPU when present) and the CuPy kernels (GPU),
next to a per-clip port of the paper's formulas (benchmarks/paper_port.py, the baseline).

Checks correctness before timing: on noisy clips without ties the reference with legacy_hue=True
must agree with the paper port (released-code arithmetic) on >= 99% of mask pixels, and merging
with the same mask must be bit-identical. Then times, on B clips of T x S x S (default B = 8,
T = 16, S = 224 and 112):

* CPU: the reference mask, merge, mask + merge (uint8 in and out), fused merge + normalise, each
  stage of the mask, and the paper port's mask + merge (float32 BCTHW in and out); median and
  min of several runs, clips/s.
* GPU (when torch.cuda.is_available()): each stage and the whole step for backend "torch" and
  "cuda", and each kernel of the fused CUDA mask (dali_fame.fame.cuda.run_fame_mask, 7 launches)
  alone. Two numbers per row, measured separately:
  - device time per call: for the CuPy kernels a CUDA graph holding ``--graph-calls``
    back-to-back calls, replayed (no Python between the kernels), CUDA events around each
    replay; for the torch-backend stages (host reads inside, not capturable) CUDA events around
    ``--graph-calls`` back-to-back calls, so their launch gaps are included (method column);
  - host time per call: the launcher's Python + CuPy / torch dispatch, ``perf_counter`` around
    back-to-back calls without synchronising (fewer than the GPU's queue depth of launches).
  Each row also gives its launches per call, the minimum bytes the stage must move (derived in
  :func:`min_bytes`), GB/s and the fraction of the memory-bandwidth roofline (minimum bytes /
  device time / peak bandwidth), and the device section lists every kernel's registers, static
  shared memory and occupancy (blocks per SM from cuOccupancyMaxActiveBlocksPerMultiprocessor),
  which size its grid.

Writes ``fame.json`` and ``fame.md`` to --out (default benchmarks/results/); --profile also
writes a torch profiler trace (``fame_trace_<device>.json``, open in chrome://tracing or
Perfetto; the NVTX ranges are named fame_<stage>).

    python benchmarks/bench_fame.py                  # or: dali-fame bench fame
    python benchmarks/bench_fame.py --sizes 112 --repeats 5 --profile

CPU timings are only meaningful on an otherwise idle machine: the result records the share of the
CPUs other processes used during the run. Nsight Systems / Compute commands for the GPU stages
(NVTX ranges ``fame_<stage>`` in the default domain, ``fame.<kernel>`` in the ``dali_fame``
domain) are in kernels/README.md. torch.compile was measured and is not used: its first call
takes ~27 s on 2 cores and the compiled fused motion + mean sums were slower than the eager
per-clip sums (16 ms vs ~7 ms for B = 8, 16 x 224 x 224).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dali_fame.fame import cuda as fame_cuda
from dali_fame.fame import fame_mask, fame_merge, random_permutation
from dali_fame.fame import ops as fame_ops
from dali_fame.fame.api import KINETICS_MEAN, KINETICS_STD
from dali_fame.fame.dispatch import native_ops_status, resolve_ops

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
AGREEMENT_MIN = 0.99
CPU_TARGET_MS = 50.0
#: issue 12: the CPU step (mask + merge at 224) at least this many times the paper port's speed
SPEEDUP_TARGET = 15.0
#: the stages the native backend computes itself (the rest of its Ops is the torch reference)
NATIVE_STAGES = ("motion_and_bins", "merge (uint8)", "mask (fame_mask)", "mask + merge (step)")

#: peak memory bandwidth in GB/s by device name, when the driver's clock / bus width are unknown
PEAK_BANDWIDTH_GBS = {
    "T4": 320,
    "V100": 900,
    "A100-SXM4-40GB": 1555,
    "A100-SXM4-80GB": 2039,
    "A100-PCIE-40GB": 1555,
    "A100 80GB PCIe": 1935,
    "A10": 600,
    "A10G": 600,
    "L4": 300,
    "L40S": 864,
    "H100 PCIe": 2000,
    "H100 80GB HBM3": 3350,
    "H100 SXM": 3350,
    "H200": 4800,
    "RTX 3090": 936,
    "RTX 4090": 1008,
}


def _load_paper_port():
    # runpy (dali-fame bench) does not put benchmarks/ on sys.path: load the sibling by path.
    path = Path(__file__).resolve().with_name("paper_port.py")
    spec = importlib.util.spec_from_file_location("dali_fame_paper_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_clips(
    batch: int, frames: int, size: int, *, seed: int, noise: float = 3.0
) -> torch.Tensor:
    """uint8 (B, T, S, S, 3): textured squares moving over textured backgrounds, plus Gaussian
    sensor noise (std ``noise`` levels), so the masks have no exact ties."""
    rng = np.random.default_rng(seed)
    side = size // 4
    out = np.empty((batch, frames, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for b in range(batch):
        f = rng.uniform(2, 6, size=4)
        tex = 0.5 + 0.25 * np.sin(2 * np.pi * (f[0] * yy + f[1] * xx)) * np.cos(
            2 * np.pi * f[2] * yy
        )
        bg = np.stack([0.2 + 0.2 * tex, 0.4 + 0.4 * tex, 0.5 + 0.4 * (1 - tex)], axis=-1) * 255
        sq = np.sin(np.linspace(0, f[3] * np.pi, side))
        fg = (
            np.stack(
                [
                    0.8 + 0.2 * np.outer(sq, sq),
                    0.2 + 0.2 * np.outer(sq, 1 - sq),
                    0.1 + 0.1 * np.outer(1 - sq, sq),
                ],
                axis=-1,
            )
            * 255
        )
        y0, x0 = rng.integers(0, size - side, size=2)
        vy, vx = rng.uniform(-1, 1, size=2) * (size - side) / (2 * frames)
        for t in range(frames):
            frame = bg.copy()
            y = int(np.clip(y0 + vy * t, 0, size - side))
            x = int(np.clip(x0 + vx * t, 0, size - side))
            frame[y : y + side, x : x + side] = fg
            frame += rng.normal(0, noise, size=frame.shape)
            out[b, t] = np.clip(np.round(frame), 0, 255)
    return torch.from_numpy(out)


def to_bcthw(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W) on the [0, 1] scale."""
    return clips.permute(0, 4, 1, 2, 3).float() / 255.0


def check_correctness(port, *, sizes: list[int], frames: int) -> dict:
    """Mask agreement with the paper port and bit-exact merging; raises if below 99%."""
    result = {}
    for size in sizes:
        clips = make_clips(4, min(frames, 8), size, seed=100 + size)
        video = to_bcthw(clips)
        entry = {}
        for legacy in (True, False):
            ours = fame_mask(clips, legacy_hue=legacy)
            theirs = port.fame_masks(video, legacy_hue=legacy).bool()
            entry["legacy_hue" if legacy else "default_hue"] = (
                (ours == theirs).float().mean().item()
            )
        perm = torch.tensor([1, 0, 3, 2])
        merged_port, port_mask = port.fame_step(video, perm)
        ours_merged = to_bcthw(fame_merge(clips, port_mask.bool(), perm))
        entry["merge_bit_exact"] = bool(torch.equal(ours_merged, merged_port))
        result[str(size)] = entry
        if (
            min(entry["legacy_hue"], entry["default_hue"]) < AGREEMENT_MIN
            or not entry["merge_bit_exact"]
        ):
            raise RuntimeError(f"bench_fame: correctness check failed at size {size}: {entry}")
    return result


def _cpu_times(fn: Callable[[], object], *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _event_times(fn: Callable[[], object], *, calls: int, repeats: int) -> list[float]:
    """Device seconds per call: CUDA events around ``calls`` back-to-back calls, ``repeats``
    times. Launch gaps count: when the host launches slower than the GPU runs, this is the
    launch rate, not the kernels' time."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return times


def _graph_times(fn: Callable[[], object], *, calls: int, repeats: int) -> list[float]:
    """Device seconds per call with no host work between the kernels: ``calls`` back-to-back
    calls captured once into a CUDA graph (torch.cuda.graph: the CuPy launchers use torch's
    current stream, which is the capture stream), the graph replayed ``repeats`` times with CUDA
    events around each replay. Raises if ``fn`` cannot be captured (a host read or sync)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the default stream, as torch recommends
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return times


def _host_seconds(fn: Callable[[], object], *, calls: int, repeats: int) -> list[float]:
    """Host seconds per call of the launcher itself: perf_counter around ``calls`` calls that are
    not synchronised (the GPU runs behind), the device drained before each repeat. ``calls``
    times the launches per call must stay below the GPU's queue depth (~1000), or the host
    would wait for queue slots and this would measure the GPU."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    torch.cuda.synchronize()
    return times


class _CountingRunner(fame_cuda.CupyRunner):
    """CupyRunner that keeps each launch (kernel, grid, args) of a fused-mask call, so that each
    kernel can be timed alone with its real inputs (every kernel of the path is idempotent)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.recorded: list[tuple[str, tuple[int, ...], tuple, int]] = []

    def launch(self, kernel: str, grid: tuple[int, ...], args: tuple, *, block: int) -> None:
        self.recorded.append((kernel, grid, args, block))
        super().launch(kernel, grid, args, block=block)


def kernel_launch_info(device_index: int) -> list[dict]:
    """Per kernel: registers, static shared memory, blocks per SM (occupancy API) and the grid
    cap a grid-stride launch gets (one wave of resident blocks)."""
    kernels = fame_cuda._kernels(device_index)
    sms = torch.cuda.get_device_properties(device_index).multi_processor_count
    rows = []
    for name, raw in sorted(kernels.items()):
        resident = fame_cuda.resident_blocks(device_index, name)
        rows.append(
            {
                "kernel": name,
                "registers": int(raw.num_regs),
                "static_shared_bytes": int(raw.shared_size_bytes),
                "blocks_per_sm": resident // sms,
                "resident_blocks": resident,
            }
        )
    return rows


def min_bytes(stage: str, *, batch: int, frames: int, height: int, width: int) -> int:
    """Minimum global-memory bytes a stage must move: each input it needs read once, each output
    written once; re-reads that a kernel serves from L2 and tiny tables (taps, 4 x 1000
    histograms, thresholds) are not counted. With P = B H W pixels and N = B T H W:

    - ``motion_and_bins`` / ``fame_motion_bins*``: read the clip, 3N bytes (uint8 RGB); write
      D and the bins, float32 + int32 per pixel: 3N + 8P.
    - ``fame_blur_rows`` / ``fame_blur_cols_minmax`` / ``seed blur + minmax``: a float32 map in,
      one out: 8P (the min / max are 8 bytes per clip).
    - ``seed thresholds``: read the seed map: 4P.
    - ``color_histograms``: read bins and seed: 8P.
    - ``fame_seed_hist_soft``: read the blurred motion map and the bins, write the seed and the
      soft mask: 16P (its 5 further passes over the seed hit L2: 200 KB per clip at 224).
    - ``soft mask + blur + minmax``: read the bins, write the score: 8P.
    - ``fame_select_top`` / ``select top-k``: read the blurred soft mask (the score), write the
      score and the uint8 mask: 9P (torch's select: read the score, write the mask: 5P).
    - ``mask (fame_mask)``: any implementation must read the clip and write the mask: 3N + P.
    - ``merge (uint8)``: every output byte is a copy of exactly one input byte (the clip's own
      where the mask is 1, its partner's where 0), so read 3N, write 3N, read the mask: 6N + P
      (not 9N: the two sources are disjoint per pixel).
    - ``merge + normalize (float32)``: read 3N + P, write float32 (B, 3, T, H, W): 15N + P.
    - ``mask + merge (step)``: the merge cannot start before the mask, which depends on all T
      frames, so the clip is read twice (once per stage): 3N + P + 6N + P = 9N + 2P.
    """
    p = batch * height * width
    n = p * frames
    table = {
        "motion_and_bins": 3 * n + 8 * p,
        "fame_motion_bins": 3 * n + 8 * p,
        "fame_motion_bins_vec4": 3 * n + 8 * p,
        "seed blur + minmax": 8 * p,
        "fame_blur_rows": 8 * p,
        "fame_blur_cols_minmax": 8 * p,
        "seed thresholds": 4 * p,
        "color_histograms": 8 * p,
        "fame_seed_hist_soft": 16 * p,
        "soft mask + blur + minmax": 8 * p,
        "select top-k": 5 * p,
        "fame_select_top": 9 * p,
        "mask (fame_mask)": 3 * n + p,
        "merge (uint8)": 6 * n + p,
        "merge + normalize (float32)": 15 * n + p,
        "mask + merge (step)": 9 * n + 2 * p,
    }
    return table[stage]


def _stages(
    clips: torch.Tensor, perm: torch.Tensor, backend: str
) -> list[tuple[str, Callable, int]]:
    """(name, fn, minimum bytes moved) for each stage of one FAME step on ``clips``.

    The inputs of each stage are computed once beforehand, so a stage is timed alone. Byte counts
    are the unavoidable global-memory traffic of :func:`min_bytes`.
    """
    impl = resolve_ops(backend, clips.device)
    bsz, t, h, w, _ = clips.shape
    nbytes = functools.partial(min_bytes, batch=bsz, frames=t, height=h, width=w)
    k_fg, k_bg = int(0.5 * h * w), int(0.1 * h * w)
    mask_k = int(0.5 * h * w)
    motion, bins = impl.motion_and_bins(clips)
    seed = fame_ops.minmax(fame_ops.gaussian_blur(motion))
    thr_fg, thr_bg = fame_ops.seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)
    counts = impl.color_histograms(bins, seed, thr_fg, thr_bg)
    p_fg, p_bg = fame_ops.likelihoods(counts, k_fg=k_fg, k_bg=k_bg)
    score = fame_ops.minmax(fame_ops.gaussian_blur(fame_ops.soft_mask(bins, p_fg, p_bg)))
    mask = fame_ops.select_top(score, mask_k)
    mean = torch.tensor(KINETICS_MEAN, device=clips.device)
    std = torch.tensor(KINETICS_STD, device=clips.device)
    perm_d = perm.to(clips.device)
    if not torch.equal(mask, fame_mask(clips, backend=backend)):
        raise RuntimeError("bench_fame: the staged mask differs from fame_mask")
    stages = [
        ("motion_and_bins", lambda: impl.motion_and_bins(clips)),
        ("seed blur + minmax", lambda: fame_ops.minmax(fame_ops.gaussian_blur(motion))),
        ("seed thresholds", lambda: fame_ops.seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg)),
        ("color_histograms", lambda: impl.color_histograms(bins, seed, thr_fg, thr_bg)),
        (
            "soft mask + blur + minmax",
            lambda: fame_ops.minmax(
                fame_ops.gaussian_blur(
                    fame_ops.soft_mask(bins, *fame_ops.likelihoods(counts, k_fg=k_fg, k_bg=k_bg))
                )
            ),
        ),
        ("select top-k", lambda: fame_ops.select_top(score, mask_k)),
        ("merge (uint8)", lambda: impl.merge(clips, mask, perm_d)),
        (
            "merge + normalize (float32)",
            lambda: impl.merge_normalize(clips, mask, perm_d, mean, std),
        ),
        ("mask (fame_mask)", lambda: fame_mask(clips, backend=backend)),
        (
            "mask + merge (step)",
            # a CPU perm, as the trainer passes it: checked on the host, one pinned copy
            lambda: fame_merge(clips, fame_mask(clips, backend=backend), perm, backend=backend),
        ),
    ]
    return [(name, fn, nbytes(name)) for name, fn in stages]


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process), Linux only.

    Their difference over the run is the CPU time other processes took: CPU timings are only
    comparable on an otherwise idle machine, so the result records it.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    own = time.process_time()
    return (sum(ticks[:8]) - idle) / hz, own


def _row(name: str, times: list[float], batch: int, **extra) -> dict:
    med = statistics.median(times)
    return {
        "name": name,
        "median_ms": med * 1e3,
        "min_ms": min(times) * 1e3,
        "clips_per_s": batch / med,
        **extra,
    }


class _HostOnlyRunner:
    """KernelRunner that launches nothing: times the Python side of the fused CUDA mask (launch
    sequence, grid sizing, typed scalars, output allocation) on any machine. CuPy's own cost per
    launch (DLPack export, stream wrapper, argument packing) comes on top; the GPU section
    measures the whole launcher."""

    def __init__(self) -> None:
        self.launches = 0

    def resident_blocks(self, kernel: str) -> int:
        return 132 * 5  # an H100's 132 SMs x 5 blocks: only the grid arithmetic depends on it

    def launch(self, kernel: str, grid: tuple[int, ...], args: tuple, *, block: int) -> None:
        self.launches += 1


def bench_cpu(port, args) -> list[dict]:
    rows = []
    for size in args.sizes:
        clips = make_clips(args.batch, args.frames, size, seed=size)
        perm = random_permutation(args.batch, generator=torch.Generator().manual_seed(0))
        kw = {"repeats": args.repeats, "warmup": args.warmup}
        for name, fn, _ in _stages(clips, perm, "torch"):
            rows.append(_row(name, _cpu_times(fn, **kw), args.batch, size=size, impl="reference"))
        native_ok, native_reason = native_ops_status()
        if native_ok:  # the C++ CPU backend (the one backend="auto" runs on the CPU)
            for name, fn, _ in _stages(clips, perm, "native"):
                if name in NATIVE_STAGES:
                    rows.append(
                        _row(name, _cpu_times(fn, **kw), args.batch, size=size, impl="native")
                    )
        else:
            print(f"bench_fame: native backend skipped ({native_reason})", file=sys.stderr)
        host = _HostOnlyRunner()
        seq = functools.partial(fame_cuda.run_fame_mask, clips, runner=host)
        times = _cpu_times(seq, repeats=max(args.repeats, 50), warmup=3)
        rows.append(
            _row(
                "fused mask: Python side of the 7 launches (no kernels run)",
                times,
                args.batch,
                size=size,
                impl="cuda launcher (host)",
                launches=host.launches // (max(args.repeats, 50) + 3),
            )
        )
        if not args.skip_paper:
            step = functools.partial(port.fame_step, to_bcthw(clips), perm)
            times = _cpu_times(step, repeats=max(3, args.repeats // 2), warmup=1)
            rows.append(
                _row("mask + merge (step)", times, args.batch, size=size, impl="paper port")
            )
    return rows


def peak_bandwidth_gbs(device: int) -> tuple[float | None, str]:
    """Peak DRAM bandwidth: memory clock * bus width * 2 (DDR) from the driver, else a table."""
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(device)
        clock_khz, bus_bits = props["memoryClockRate"], props["memoryBusWidth"]
        if clock_khz and bus_bits:
            return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "driver (cupy)"
    except (ImportError, RuntimeError, KeyError):  # no CuPy, or a driver without these fields
        pass
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "driver (torch)"
    for key, value in sorted(PEAK_BANDWIDTH_GBS.items(), key=lambda kv: -len(kv[0])):
        if key in props.name:
            return float(value), "table"
    return None, "unknown"


#: cuda-backend stage -> (kernel launches per call, CUDA-graph capturable). color_histograms
#: zero-fills its output (a memset) before its kernel; the step's CPU perm takes a pinned
#: host-to-device copy, a host step that a graph would freeze.
CUDA_STAGES = {
    "motion_and_bins": (1, True),
    "color_histograms": (2, True),
    "merge (uint8)": (1, True),
    "merge + normalize (float32)": (1, True),
    "mask (fame_mask)": (7, True),
    "mask + merge (step)": (9, False),
}


def _gpu_row(name, impl, fn, nbytes, *, batch, size, peak, args, launches, graph) -> dict:
    for _ in range(max(args.warmup, 3)):
        fn()
    torch.cuda.synchronize()
    repeats = max(args.repeats, 20)
    method = "events"
    if graph:
        try:
            times = _graph_times(fn, calls=args.graph_calls, repeats=repeats)
            method = "cuda graph"
        except RuntimeError:  # not capturable: fall back to events (launch gaps included)
            torch.cuda.synchronize()
            times = _event_times(fn, calls=args.graph_calls, repeats=repeats)
    else:
        times = _event_times(fn, calls=args.graph_calls, repeats=repeats)
    # launches per call bound the host calls so that the GPU queue never fills (the torch path
    # launches ~200 kernels per mask; its host time also includes its own host syncs)
    host_calls = max(1, min(args.graph_calls, 500 // (launches or 200)))
    host = _host_seconds(fn, calls=host_calls, repeats=5)
    med = statistics.median(times)
    gbs = nbytes / med / 1e9
    return _row(
        name,
        times,
        batch,
        size=size,
        impl=impl,
        method=method,
        launches=launches,
        bytes=nbytes,
        gb_per_s=gbs,
        roofline=(gbs / peak) if peak else None,
        host_us=statistics.median(host) * 1e6,
    )


def bench_gpu(args) -> tuple[list[dict], dict]:
    device = torch.device("cuda", torch.cuda.current_device())
    peak, source = peak_bandwidth_gbs(device.index)
    info = {
        "name": torch.cuda.get_device_name(device),
        "peak_bandwidth_gbs": peak,
        "peak_source": source,
    }
    backends = ["torch"]
    try:
        if resolve_ops("cuda", device).name == "cuda":
            backends.append("cuda")
    except RuntimeError as exc:
        info["cuda_backend_error"] = str(exc)
    if "cuda" in backends:
        info["kernels"] = kernel_launch_info(device.index)
    rows = []
    for size in args.sizes:
        clips = make_clips(args.batch, args.frames, size, seed=size).to(device)
        perm = random_permutation(args.batch, generator=torch.Generator().manual_seed(0))
        kw = {"batch": args.batch, "size": size, "peak": peak, "args": args}
        for backend in backends:
            for name, fn, nbytes in _stages(clips, perm, backend):
                # torch's stages read the host (kthvalue sizes, perm.tolist()): never captured;
                # the cuda backend's torch glue between unfused kernels neither
                launches, graph = (
                    (None, False) if backend == "torch" else CUDA_STAGES.get(name, (None, False))
                )
                rows.append(
                    _gpu_row(name, backend, fn, nbytes, launches=launches, graph=graph, **kw)
                )
        if "cuda" in backends:
            # every kernel of the fused mask alone, with the inputs of a real call
            recorder = _CountingRunner(device)
            fame_cuda.run_fame_mask(clips, runner=recorder)
            plain = fame_cuda.CupyRunner(device)
            _, t, h, w, _ = clips.shape
            for i, (kernel, grid, kargs, block) in enumerate(recorder.recorded):
                nbytes = min_bytes(kernel, batch=args.batch, frames=t, height=h, width=w)
                fn = functools.partial(plain.launch, kernel, grid, kargs, block=block)
                rows.append(
                    _gpu_row(
                        f"fused {i + 1}/{len(recorder.recorded)}: {kernel} grid {grid} x {block}",
                        "cuda",
                        fn,
                        nbytes,
                        launches=1,
                        graph=True,
                        **kw,
                    )
                )
    return rows, info


def write_profile(out: Path, clips: torch.Tensor, perm: torch.Tensor, backend: str) -> Path:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if clips.is_cuda:
        activities.append(ProfilerActivity.CUDA)
    step = lambda: fame_merge(clips, fame_mask(clips, backend=backend), perm, backend=backend)
    step()
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(3):
            step()
        if clips.is_cuda:
            torch.cuda.synchronize()
    path = out / f"fame_trace_{clips.device.type}.json"
    prof.export_chrome_trace(str(path))
    return path


def to_markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# FAME benchmark",
        "",
        (
            f"B = {result['batch']} clips of {result['frames']} frames; torch {env['torch']}, "
            f"{env['cpu_threads']} CPU threads ({env['machine']}); other processes used "
            f"{100 * env.get('other_processes_cpu_fraction', float('nan')):.0f}% of the CPUs "
            f"during the run; command: `{result['command']}`"
        ),
        "",
        "## Correctness (before timing)",
        "",
        (
            "| size | mask agreement: legacy_hue vs paper port | default hue vs corrected port "
            "| merge bit-exact |"
        ),
        "|---|---|---|---|",
    ]
    for size, entry in result["correctness"].items():
        lines.append(
            f"| {size} | {100 * entry['legacy_hue']:.3f}% | {100 * entry['default_hue']:.3f}% "
            f"| {entry['merge_bit_exact']} |"
        )
    lines += [
        "",
        "## CPU",
        "",
        "| size | implementation | stage | median ms | min ms | clips/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["cpu"]:
        lines.append(
            f"| {r['size']} | {r['impl']} | {r['name']} | {r['median_ms']:.2f} | "
            f"{r['min_ms']:.2f} | {r['clips_per_s']:.1f} |"
        )
    if result.get("cpu_summary"):
        lines.append("")
    for size, s in result.get("cpu_summary", {}).items():
        for impl in ("native", "reference"):
            if impl not in s:
                continue
            step, speedup = s[impl]["step_ms"], s[impl]["speedup"]
            parts = [f"- {size} x {size}, {impl}: mask + merge {step:.1f} ms median"]
            if speedup:
                parts.append(f"{speedup:.1f}x faster than the paper port ({s['paper_ms']:.0f} ms)")
            if size == "224":
                met = "met" if step < CPU_TARGET_MS else "NOT met"
                parts.append(f"target < {CPU_TARGET_MS:.0f} ms: {met}")
                if speedup:
                    met = "met" if speedup >= SPEEDUP_TARGET else "NOT met"
                    parts.append(f"target >= {SPEEDUP_TARGET:.0f}x: {met}")
            lines.append("; ".join(parts))
    if result.get("gpu"):
        g = result["gpu_info"]
        peak = (
            f"{g['peak_bandwidth_gbs']:.0f} GB/s ({g['peak_source']})"
            if g["peak_bandwidth_gbs"]
            else "unknown"
        )
        lines += [
            "",
            f"## GPU: {g['name']}, peak bandwidth {peak}",
            "",
            (
                "Device time per call (CUDA graph replay of back-to-back calls, or CUDA events around "
                "them: method) and host time per call (the launcher's Python and dispatch, not "
                "synchronised) are measured separately. Minimum bytes: `min_bytes` in "
                "benchmarks/bench_fame.py; roofline = minimum bytes / device time / peak."
            ),
            "",
            (
                "| size | backend | stage | launches | device ms | method | host us | clips/s "
                "| min MB | GB/s | roofline |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["gpu"]:
            roof = f"{100 * r['roofline']:.0f}%" if r.get("roofline") is not None else "-"
            launches = r.get("launches") if r.get("launches") is not None else "-"
            lines.append(
                f"| {r['size']} | {r['impl']} | {r['name']} | {launches} | "
                f"{r['median_ms']:.4f} | {r.get('method', '-')} | {r.get('host_us', 0):.0f} | "
                f"{r['clips_per_s']:.0f} | {r['bytes'] / 1e6:.2f} | {r['gb_per_s']:.0f} | {roof} |"
            )
        if g.get("kernels"):
            lines += [
                "",
                (
                    "Launch configuration (256-thread blocks; grid-stride grids capped at one wave = "
                    "SMs x blocks per SM from cuOccupancyMaxActiveBlocksPerMultiprocessor):"
                ),
                "",
                "| kernel | registers | static shared B | blocks / SM | grid cap |",
                "|---|---|---|---|---|",
            ]
            for k in g["kernels"]:
                lines.append(
                    f"| {k['kernel']} | {k['registers']} | {k['static_shared_bytes']} | "
                    f"{k['blocks_per_sm']} | {k['resident_blocks']} |"
                )
    elif "gpu_skipped" in result:
        lines += ["", f"GPU: skipped ({result['gpu_skipped']})."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--graph-calls",
        type=int,
        default=20,
        help="GPU: back-to-back calls per CUDA graph / per event pair (device time per call)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-paper", action="store_true", help="do not time the paper port")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU timings")
    parser.add_argument("--profile", action="store_true", help="write a torch profiler trace")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def run(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run the benchmark; ``args`` is a parsed namespace or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    port = _load_paper_port()
    start, wall_start = _cpu_seconds(), time.perf_counter()
    result = {
        "batch": args.batch,
        "frames": args.frames,
        "sizes": args.sizes,
        "command": "python benchmarks/bench_fame.py " + " ".join(sys.argv[1:]),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
        },
    }
    result["correctness"] = check_correctness(port, sizes=args.sizes, frames=args.frames)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_cpu:
        rows = bench_cpu(port, args)
        result["cpu"] = rows
        summary = {}
        for size in args.sizes:
            steps = {
                r["impl"]: r["median_ms"]
                for r in rows
                if r["size"] == size and r["name"] == "mask + merge (step)"
            }
            paper = steps.get("paper port")
            entry = summary[str(size)] = {"paper_ms": paper}
            for impl in ("native", "reference"):
                if impl in steps:
                    entry[impl] = {
                        "step_ms": steps[impl],
                        "speedup": paper and paper / steps[impl],
                    }
        result["cpu_summary"] = summary
    else:
        result["cpu"] = []
    if args.no_gpu:
        result["gpu_skipped"] = "--no-gpu"
    elif not torch.cuda.is_available():
        result["gpu_skipped"] = "no CUDA device"
    else:
        result["gpu"], result["gpu_info"] = bench_gpu(args)
    if args.profile:
        size = args.sizes[0]
        clips = make_clips(args.batch, args.frames, size, seed=size)
        perm = random_permutation(args.batch, generator=torch.Generator().manual_seed(0))
        traces = [str(write_profile(args.out, clips, perm, "torch"))]
        if torch.cuda.is_available() and not args.no_gpu:
            traces.append(str(write_profile(args.out, clips.cuda(), perm, "auto")))
        result["profile_traces"] = traces
    end = _cpu_seconds()
    if start and end:
        wall = time.perf_counter() - wall_start
        other = (end[0] - start[0]) - (end[1] - start[1])
        result["environment"]["other_processes_cpu_fraction"] = max(other, 0.0) / (
            wall * (os.cpu_count() or 1)
        )
    (args.out / "fame.json").write_text(json.dumps(result, indent=2))
    markdown = to_markdown(result)
    (args.out / "fame.md").write_text(markdown)
    sys.stdout.write(markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

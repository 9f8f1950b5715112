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
  "cuda", timed with CUDA events; clips/s and the fraction of the memory-bandwidth roofline
  (minimum bytes moved / time / peak bandwidth).

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

from dali_fame.fame import fame_mask, fame_merge, random_permutation
from dali_fame.fame import ops as fame_ops
from dali_fame.fame.api import KINETICS_MEAN, KINETICS_STD
from dali_fame.fame.dispatch import resolve_ops

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
AGREEMENT_MIN = 0.99
CPU_TARGET_MS = 50.0

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


def _cuda_times(fn: Callable[[], object], *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def _stages(
    clips: torch.Tensor, perm: torch.Tensor, backend: str
) -> list[tuple[str, Callable, int]]:
    """(name, fn, minimum bytes moved) for each stage of one FAME step on ``clips``.

    The inputs of each stage are computed once beforehand, so a stage is timed alone. Byte counts
    are the unavoidable global-memory traffic: the clip bytes each stage must read / write, plus
    its (B, H, W) maps.
    """
    impl = resolve_ops(backend, clips.device)
    bsz, _, h, w, _ = clips.shape
    clip_bytes = clips.numel()
    map_bytes = bsz * h * w * 4
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
    return [
        ("motion_and_bins", lambda: impl.motion_and_bins(clips), clip_bytes + 2 * map_bytes),
        (
            "seed blur + minmax",
            lambda: fame_ops.minmax(fame_ops.gaussian_blur(motion)),
            2 * map_bytes,
        ),
        (
            "seed thresholds",
            lambda: fame_ops.seed_thresholds(seed, k_fg=k_fg, k_bg=k_bg),
            map_bytes,
        ),
        (
            "color_histograms",
            lambda: impl.color_histograms(bins, seed, thr_fg, thr_bg),
            2 * map_bytes,
        ),
        (
            "soft mask + blur + minmax",
            lambda: fame_ops.minmax(
                fame_ops.gaussian_blur(
                    fame_ops.soft_mask(bins, *fame_ops.likelihoods(counts, k_fg=k_fg, k_bg=k_bg))
                )
            ),
            2 * map_bytes,
        ),
        ("select top-k", lambda: fame_ops.select_top(score, mask_k), map_bytes + map_bytes // 4),
        ("merge (uint8)", lambda: impl.merge(clips, mask, perm_d), 3 * clip_bytes),
        (
            "merge + normalize (float32)",
            lambda: impl.merge_normalize(clips, mask, perm_d, mean, std),
            2 * clip_bytes + 4 * clip_bytes,
        ),
        ("mask (fame_mask)", lambda: fame_mask(clips, backend=backend), clip_bytes + 2 * map_bytes),
        (
            "mask + merge (step)",
            lambda: fame_merge(clips, fame_mask(clips, backend=backend), perm, backend=backend),
            4 * clip_bytes + 2 * map_bytes,
        ),
    ]


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


def bench_cpu(port, args) -> list[dict]:
    rows = []
    for size in args.sizes:
        clips = make_clips(args.batch, args.frames, size, seed=size)
        perm = random_permutation(args.batch, generator=torch.Generator().manual_seed(0))
        kw = {"repeats": args.repeats, "warmup": args.warmup}
        for name, fn, _ in _stages(clips, perm, "torch"):
            rows.append(_row(name, _cpu_times(fn, **kw), args.batch, size=size, impl="reference"))
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
    rows = []
    for size in args.sizes:
        clips = make_clips(args.batch, args.frames, size, seed=size).to(device)
        perm = random_permutation(args.batch, generator=torch.Generator().manual_seed(0))
        for backend in backends:
            for name, fn, nbytes in _stages(clips, perm, backend):
                times = _cuda_times(fn, repeats=max(args.repeats, 20), warmup=max(args.warmup, 3))
                med = statistics.median(times)
                gbs = nbytes / med / 1e9
                rows.append(
                    _row(
                        name,
                        times,
                        args.batch,
                        size=size,
                        impl=backend,
                        bytes=nbytes,
                        gb_per_s=gbs,
                        roofline=(gbs / peak) if peak else None,
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
        parts = [f"- {size} x {size}: mask + merge {s['step_ms']:.1f} ms median"]
        if s.get("speedup"):
            parts.append(f"{s['speedup']:.1f}x faster than the paper port ({s['paper_ms']:.0f} ms)")
        if size == "224":
            met = "met" if s["step_ms"] < CPU_TARGET_MS else "NOT met"
            parts.append(f"target < {CPU_TARGET_MS:.0f} ms: {met}")
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
            "| size | backend | stage | median ms | clips/s | GB/s | roofline |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["gpu"]:
            roof = f"{100 * r['roofline']:.0f}%" if r.get("roofline") is not None else "-"
            lines.append(
                f"| {r['size']} | {r['impl']} | {r['name']} | {r['median_ms']:.3f} | "
                f"{r['clips_per_s']:.0f} | {r['gb_per_s']:.0f} | {roof} |"
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
            ours = next(
                r
                for r in rows
                if r["size"] == size
                and r["impl"] == "reference"
                and r["name"] == "mask + merge (step)"
            )
            paper = next((r for r in rows if r["size"] == size and r["impl"] == "paper port"), None)
            summary[str(size)] = {
                "step_ms": ours["median_ms"],
                "paper_ms": paper and paper["median_ms"],
                "speedup": paper and paper["median_ms"] / ours["median_ms"],
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

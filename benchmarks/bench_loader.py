"""Loader throughput: the same videos and the same clips through every decoder, clips/s.

Generates (or reuses) a synthetic set per codec (``dali_fame.data.synthetic``), plans every
video's clips with the shared sampler and crop draws (``plan_sample``: 2 views x 16 frames,
stride 2, RandomResizedCrop + flip to ``--crop``), and times, in interleaved rounds of one
epoch each (median round reported, best in the note):

* ``cpu_loader``: :func:`dali_fame.data.cpu_loader.build_cpu_loader`, PyAV in ``--workers``
  DataLoader processes (default: every core), with ``rgb="exact"`` (the default: pixels
  identical to ``video_io.read_frames`` and DALI) and ``rgb="fast"``;
* ``dali``: :func:`dali_fame.data.dali_pipeline.build_dali_loader` on the CPU (VP9/MJPEG only)
  with ``--workers`` threads, and on the GPU (``mixed``) when CUDA is available;
* ``pyav_loop``: what research code usually does, one process: decode the whole video with
  ``frame.to_ndarray(format="rgb24")``, take the sampled frames, crop/resize/flip;
* ``torchcodec_loop`` / ``decord_loop``: the same loop with torchcodec's
  ``VideoDecoder.get_frames_at`` / decord's ``VideoReader.get_batch`` (skipped with a note when
  not installed); and ``torchcodec_workers`` / ``decord_workers``: those decoders inside the
  CPU loader's DataLoader (same workers), to separate decoder speed from parallelism.

Every method gets the same crop/resize/flip code and batch size. Before timing, each method's
first batch is compared with the CPU loader's (same frame indices and boxes): the mean and max
absolute difference on 0..255 are reported (PyAV-based methods must match exactly; others
differ by their YUV->RGB conversion).

Run: ``dali-fame bench loader [--videos 32 --size 128 --frames 64 --codecs h264 vp9]`` or
``python benchmarks/bench_loader.py``; writes ``bench_loader.json`` and ``bench_loader.md``
to ``--out`` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from dali_fame.data import video_io
from dali_fame.data.cpu_loader import build_cpu_loader, crop_resize_flip
from dali_fame.data.plan import plan_sample
from dali_fame.data.records import VideoRecord
from dali_fame.data.shard import ShardBatchSampler

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Result:
    method: str
    codec: str
    processes: str
    clips_per_s: float | None
    seconds: float | None
    clips: int
    mean_abs_diff: float | None = None
    max_abs_diff: float | None = None
    note: str = ""


# ------------------------------------------------------------------------------------ data


def make_dataset(root: Path, *, codec: str, videos: int, size: int, frames: int) -> list[VideoRecord]:
    """Generate (or reuse) a synthetic set and return its records (probed, labelled)."""
    from dali_fame.data.synthetic import generate_dataset

    out = root / f"{codec}_{videos}x{size}x{frames}"
    if not (out / "annotations.csv").is_file():
        classes = max(1, min(8, videos // 4))
        generate_dataset(
            out, num_classes=classes, videos_per_class=-(-videos // classes), num_frames=frames,
            size=size, codec=codec, progress=False, seed=0, test_fraction=0.0,
        )
    with open(out / "annotations.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["path"])[:videos]
    records = []
    for row in rows:
        path = out / row["path"]
        info = video_io.probe_video(path)
        records.append(VideoRecord(
            path=str(path), label=int(row["label"]), video_id=path.stem,
            num_frames=info.num_frames, fps=info.fps, width=info.width, height=info.height,
            codec=info.codec,
        ))
    return records


# -------------------------------------------------------------------------- frame readers


def read_pyav_naive(path: str, indices: np.ndarray) -> np.ndarray:
    """Research-code style: decode every frame, convert each with to_ndarray, pick."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    frames = np.stack(frames)
    return frames[np.minimum(indices, len(frames) - 1)]


def read_torchcodec(path: str, indices: np.ndarray) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    batch = VideoDecoder(path, num_ffmpeg_threads=1).get_frames_at(indices.tolist())
    return batch.data.permute(0, 2, 3, 1).contiguous().numpy()


def read_decord(path: str, indices: np.ndarray) -> np.ndarray:
    import decord

    return decord.VideoReader(path, num_threads=1).get_batch(indices.tolist()).asnumpy()


READERS: dict[str, tuple[str, Callable[[str, np.ndarray], np.ndarray]]] = {
    "pyav": ("av", read_pyav_naive),
    "torchcodec": ("torchcodec.decoders", read_torchcodec),
    "decord": ("decord", read_decord),
}


def reader_missing(name: str) -> str | None:
    """Why the reader cannot run here (None when it can)."""
    module = READERS[name][0]
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from missing FFmpeg libs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{name} not usable here ({type(exc).__name__}: {first[:120]})"
    return None


class ReaderDecoder:
    """Adapts a reader to the CPU loader's decoder interface (a picklable decoder_factory)."""

    def __init__(self, name: str) -> None:
        self.reader = READERS[name][1]

    def decode(self, path: str, indices) -> np.ndarray:
        return self.reader(path, np.asarray(indices, dtype=np.int64))


def loop_epoch(records, reader, *, epoch: int, batch_size: int, crop: int, seed: int
               ) -> Iterator[dict[str, torch.Tensor]]:
    """One process, no workers: plan, read, crop, batch (what a plain training loop does)."""
    sampler = ShardBatchSampler(len(records), batch_size=batch_size, seed=seed,
                                drop_last=False)
    sampler.set_epoch(epoch)
    for batch in (sampler.shard()[p] for p in sampler.batches()):
        views, labels = [], []
        for i in batch.tolist():
            plan = plan_sample(records[i], video_index=i, epoch=epoch, seed=seed, crop=crop)
            frames = reader(records[i].path, plan.frame_indices.reshape(-1))
            frames = frames.reshape(*plan.frame_indices.shape, *frames.shape[1:])
            views.append(torch.stack([crop_resize_flip(frames[v], plan.windows[v], crop)
                                      for v in range(len(frames))]))
            labels.append(records[i].label)
        yield {"views": torch.stack(views), "labels": torch.tensor(labels),
               "index": torch.as_tensor(batch)}


# ------------------------------------------------------------------------------- timing


def _compare(batch: dict, reference: dict) -> tuple[float, float]:
    if not torch.equal(batch["index"].cpu(), reference["index"]):
        raise AssertionError("batch order differs from the CPU loader's: sampling is not shared")
    diff = (batch["views"].cpu().int() - reference["views"].int()).abs()
    return float(diff.float().mean()), float(diff.max())


@dataclasses.dataclass
class _Method:
    name: str
    processes: str
    epoch: Callable[[int], Iterator[dict]]  # epoch number -> batches
    note: str = ""
    mean_abs_diff: float | None = None
    max_abs_diff: float | None = None
    rates: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    clips: int = 0


def _loader_epochs(loader) -> Callable[[int], Iterator[dict]]:
    def run(epoch: int) -> Iterator[dict]:
        loader.set_epoch(epoch)
        return iter(loader)

    return run


def _time_epoch(method: _Method, epoch: int) -> None:
    clips = 0
    start = time.perf_counter()
    for batch in method.epoch(epoch=epoch):
        clips += batch["views"].shape[0] * batch["views"].shape[1]
    if batch["views"].is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    method.rates.append(clips / seconds)
    method.seconds.append(seconds)
    method.clips = clips


def bench_codec(records: list[VideoRecord], codec: str, args) -> list[Result]:
    """Set every method up (warm-up epoch 0 + correctness check against the CPU loader), then
    time ``args.rounds`` rounds of one epoch per method, interleaved so that a change in the
    machine's load hits every method alike; report each method's median (and best) round."""
    common = {"batch_size": args.batch_size, "crop": args.crop, "seed": args.seed,
              "drop_last": False}
    workers = args.workers
    skipped: list[Result] = []
    methods: list[_Method] = []

    cpu = build_cpu_loader(records, workers=workers, **common)
    cpu.set_epoch(0)
    reference = next(iter(cpu))  # also starts the persistent workers (not timed)

    def add(method: _Method, exact: bool = False) -> None:
        batches = list(method.epoch(epoch=0))  # warm-up: workers / pipelines started, files cached
        method.mean_abs_diff, method.max_abs_diff = _compare(batches[0], reference)
        if exact and method.max_abs_diff != 0:
            raise AssertionError(f"{method.name}: frames differ from the CPU loader's")
        methods.append(method)

    add(_Method("cpu_loader (PyAV, rgb=exact)", f"{workers} workers", _loader_epochs(cpu)),
        exact=True)
    fast = build_cpu_loader(records, workers=workers, rgb="fast", **common)
    add(_Method("cpu_loader (PyAV, rgb=fast)", f"{workers} workers", _loader_epochs(fast),
                note="FFmpeg's default YUV->RGB (as torchcodec/decord)"))

    try:
        from dali_fame.data.dali_pipeline import build_dali_loader
        dali_missing = None
    except Exception as exc:  # noqa: BLE001
        dali_missing = f"DALI not importable: {exc}"
    devices = []
    if dali_missing is None:
        if codec in ("vp9", "mjpeg"):
            devices.append("cpu")
        if torch.cuda.is_available():
            devices.append("gpu")
    if dali_missing:
        skipped.append(Result("dali", codec, "-", None, None, 0, note=dali_missing))
    elif not devices:
        skipped.append(Result("dali (cpu)", codec, "-", None, None, 0,
                              note="DALI's CPU decoder reads VP9/MJPEG only; no GPU here"))
    for device in devices:
        dali = build_dali_loader(records, device=device, num_threads=workers, **common)
        add(_Method(f"dali ({device})",
                    f"{workers} threads" + (" + GPU" if device == "gpu" else ""),
                    _loader_epochs(dali),
                    note="mixed decoding (NVDEC)" if device == "gpu" else ""))

    for name in ("pyav", "torchcodec", "decord"):
        missing = reader_missing(name)
        if missing:
            skipped.append(Result(f"{name}_loop", codec, "1 process", None, None, 0,
                                  note=missing + "; skipped"))
            continue
        reader = READERS[name][1]
        add(_Method(
            f"{name}_loop", "1 process",
            functools.partial(loop_epoch, records, reader, batch_size=args.batch_size,
                              crop=args.crop, seed=args.seed),
            note="decodes every frame, to_ndarray per frame" if name == "pyav" else "",
        ))
        if name != "pyav":
            loader = build_cpu_loader(records, workers=workers,
                                      decoder_factory=functools.partial(ReaderDecoder, name),
                                      **common)
            add(_Method(f"{name}_workers", f"{workers} workers", _loader_epochs(loader),
                        note="the CPU loader with this decoder in its workers"))

    for round_ in range(args.rounds):
        for method in methods:
            _time_epoch(method, epoch=1 + round_)
    results = [
        Result(m.name, codec, m.processes, float(np.median(m.rates)),
               float(np.median(m.seconds)), m.clips, m.mean_abs_diff, m.max_abs_diff,
               "; ".join(x for x in (f"best {max(m.rates):.1f}", m.note) if x))
        for m in methods
    ]
    return results + skipped


# ------------------------------------------------------------------------------- output


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name, module in (("av", "av"), ("dali", "nvidia.dali"), ("torchcodec", "torchcodec"),
                         ("decord", "decord")):
        try:
            out[name] = str(__import__(module, fromlist=["__version__"]).__version__)
        except Exception:  # noqa: BLE001
            out[name] = "not installed"
    return out


def write_outputs(results: list[Result], meta: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench_loader.json", out_dir / "bench_loader.md"
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": [dataclasses.asdict(r) for r in results]}, f,
                  indent=1)
        f.write("\n")
    lines = [
        (f"# Loader throughput ({meta['videos']} videos, {meta['size']}x{meta['size']}, "
         f"{meta['frames']} frames, 2 views x 16 frames stride 2, crop {meta['crop']}, "
         f"batch {meta['batch_size']}; median of {meta['rounds']} interleaved rounds of one "
         f"epoch per method, after a warm-up epoch)"),
        "",
        (f"Machine: {meta['cpu_count']} CPU cores (1-min load average at the end "
         f"{meta['load_avg_1min']:.1f}), GPU: {meta['gpu'] or 'none'}. "
         f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}."),
        f"Command: `{meta['command']}`",
        "",
        ("| codec | method | processes | clips/s (median) | s/epoch (median) | "
         "mean / max abs diff vs cpu_loader | note |"),
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in results:
        rate = f"{r.clips_per_s:.1f}" if r.clips_per_s else "-"
        secs = f"{r.seconds:.2f}" if r.seconds else "-"
        diff = "-" if r.mean_abs_diff is None else f"{r.mean_abs_diff:.3f} / {r.max_abs_diff:.0f}"
        lines.append(f"| {r.codec} | {r.method} | {r.processes} | {rate} | {secs} | {diff} | "
                     f"{r.note} |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=int, default=32, help="videos per codec")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--codecs", nargs="+", default=["h264", "vp9"],
                        choices=list(video_io.CODECS))
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds of one epoch per method, interleaved (median reported)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="loader processes / DALI threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep/reuse the generated videos here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    tmp = None
    root = args.data_dir
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench_loader_")
        root = Path(tmp)
    results: list[Result] = []
    try:
        for codec in args.codecs:
            records = make_dataset(root, codec=codec, videos=args.videos, size=args.size,
                                   frames=args.frames)
            for r in bench_codec(records, codec, args):
                rate = f"{r.clips_per_s:8.1f} clips/s" if r.clips_per_s else "   skipped     "
                print(f"{codec:6s} {r.method:22s} {rate}  {r.note}", flush=True)
                results.append(r)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "videos": args.videos, "size": args.size, "frames": args.frames, "crop": args.crop,
        "batch_size": args.batch_size, "rounds": args.rounds, "workers": args.workers,
        "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": _versions(),
        "command": "dali-fame bench loader " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    json_path, md_path = write_outputs(results, meta, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

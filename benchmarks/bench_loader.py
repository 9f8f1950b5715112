"""Loader throughput: the same videos and the same clips through every decoder, clips/s; and
the DALI feeding code's host time per batch on the training thread.

Videos: a generated synthetic set per codec (``dali_fame.data.synthetic``, ``--codecs``), or
anyone's data: ``--data-root DIR --dataset-format NAME`` (a format of
``dali_fame.data.readers``) indexes the split with ``dali_fame.data.index.build_index`` and
benchmarks the first ``--videos`` valid videos of each codec found.

Every video's clips are planned with the shared sampler and crop draws (``plan_sample``: 2 views
x 16 frames, stride 2, RandomResizedCrop + flip to ``--crop``). Methods (``--methods``):

* ``feed``: the DALI pipeline's external source alone, ``ClipSource(records, sampler,
  plan_kwargs=...)``: ``start_epoch(epoch)``, then each ``source()`` call returns one batch of
  feed arrays; nothing is decoded, so this runs on any codec on a CPU machine. This is the host
  work DALI asks of the training thread per batch (mean and p95 ms per batch of
  ``--batch-size``, wall clock, and the thread's CPU time, over ``--rounds`` epochs after a
  warm-up epoch). Before timing, that warm-up epoch's feed is checked against the plan: every
  batch holds the sampler's videos, each sample's frame indices are ``plan_sample``'s (as
  given, or sorted unique plus the positions that gather the views back) and a uint8 vector
  fed is the file's path or bytes.
* ``cpu`` / ``cpu-fast``: :func:`dali_fame.data.cpu_loader.build_cpu_loader`, PyAV in
  ``--workers`` DataLoader processes (default: every core), ``rgb="exact"`` (the default: pixels
  identical to ``video_io.read_frames`` and DALI) / ``rgb="fast"``;
* ``dali``: :func:`dali_fame.data.dali_pipeline.build_dali_loader` on the CPU (VP9/VP8/MJPEG
  only) with ``--workers`` threads, and on the GPU (``mixed``) when CUDA is available;
* ``pyav``: what research code usually does, one process: decode the whole video with
  ``frame.to_ndarray(format="rgb24")``, take the sampled frames, crop/resize/flip;
* ``torchcodec`` / ``decord``: the same loop with torchcodec's ``VideoDecoder.get_frames_at`` /
  decord's ``VideoReader.get_batch`` (skipped with a note when not installed), and those
  decoders inside the CPU loader's DataLoader (same workers), to separate decoder speed from
  parallelism.

Decoding methods are timed in interleaved rounds of one epoch each (median round reported, best
in the note), all with the same crop/resize/flip code and batch size; each also reports the
training thread's CPU time per batch (``time.thread_time`` over the epoch: what the loader
costs the thread that runs the model, waiting excluded; for DALI this includes feeding it). Before timing, each
method's first batch is compared with the CPU loader's (same frame indices and boxes): the mean
and max absolute difference on 0..255 are reported (PyAV-based methods must match exactly;
others differ by their YUV->RGB conversion or resize arithmetic).

Targets (issue 9), checked and printed: the feed's mean host time per batch of 8 h264 videos
<= 2 ms; DALI cpu on VP9 >= 0.8x the CPU loader's (rgb=exact) clips/s, same videos and workers.

Run: ``dali-fame bench loader [--videos 32 --size 128 --frames 64 --codecs h264 vp9]``,
``dali-fame bench loader --data-root DIR --dataset-format ucf101 [--split train]`` or
``python benchmarks/bench_loader.py``; writes ``bench_loader.json`` and ``bench_loader.md``
to ``--out`` (default benchmarks/results/) and prints the command that reruns it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import inspect
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
from dali_fame.data.cpu_loader import build_cpu_loader
from dali_fame.data.crop import crop_resize_flip
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
    ms_per_batch_mean: float | None = None
    ms_per_batch_p95: float | None = None
    batches: int = 0
    thread_ms_per_batch: float | None = None  # training thread's CPU time per batch (median)


#: codecs DALI's CPU video decoder reads (FFmpeg decoder names)
DALI_CPU_CODECS = ("vp9", "vp8", "mjpeg")

#: the feed's row name (not "dali ...": readers of the JSON take "dali*" rows for decoders)
FEED_METHOD = "DALI feed (ClipSource, no decoding)"

METHODS = ("feed", "cpu", "cpu-fast", "dali", "pyav", "torchcodec", "decord")


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


def index_dataset(root: Path, *, dataset_format: str, split: str, videos: int, workers: int
                  ) -> tuple[dict[str, list[VideoRecord]], dict]:
    """Index anyone's data (probe cache reused) and keep the first ``videos`` valid videos of
    each codec (annotation order; 0 keeps all).

    Returns:
        codec -> records, and what the index found (for the report).
    """
    from dali_fame.data.index import build_index

    result = build_index(root, format=dataset_format, split=split, workers=workers,
                         progress=False)
    by_codec: dict[str, list[VideoRecord]] = {}
    for record in result.records:
        by_codec.setdefault(record.codec, []).append(record)
    if videos > 0:
        by_codec = {codec: recs[:videos] for codec, recs in by_codec.items()}
    if not by_codec:
        raise SystemExit(f"bench loader: no valid videos under {root} (format "
                         f"{dataset_format}, split {split}); see `dali-fame index`")
    found = {"listed": result.num_listed, "valid": len(result.records),
             "excluded": len(result.excluded), "codecs": dict(result.codecs)}
    return by_codec, found


def describe_records(records: list[VideoRecord]) -> str:
    sizes = sorted({(r.width, r.height) for r in records}, key=lambda wh: wh[0] * wh[1])
    frames = [r.segment_frames for r in records]
    size = (f"{sizes[0][0]}x{sizes[0][1]}" if len(sizes) == 1 else
            f"{sizes[0][0]}x{sizes[0][1]} .. {sizes[-1][0]}x{sizes[-1][1]}")
    return f"{len(records)} videos, {size}, {min(frames)}-{max(frames)} frames"


# ------------------------------------------------------------------ DALI feed (no decoding)


def _feed_plan_kwargs(args) -> dict:
    """What build_dali_loader gives ClipSource for training."""
    return {"seed": args.seed, "mode": "train", "num_views": 2, "clip_len": 16, "stride": 2,
            "eval_clips": 10, "crop": args.crop, "flip": True}


def _fed_videos(source) -> list[int] | None:
    """The video indices the source says it just fed (``source.fed[-1]``), if it says."""
    fed = getattr(source, "fed", None)
    if not fed:
        return None
    last = fed[-1]
    if hasattr(last, "slots"):
        return [int(slot.video) for slot in last.slots]
    if hasattr(last, "indices"):
        return [int(i) for i in last.indices]
    return None


def _check_sample(arrays: list[np.ndarray], record: VideoRecord, planned: np.ndarray) -> str:
    """Check one video's feed arrays against its plan; returns what was verified.

    A uint8 vector must be the file's path (UTF-8) or its bytes; the frames must be an integer
    vector equal to the planned ``(V, T)`` indices flattened (view major), or their sorted
    unique values together with an integer ``(V, T)`` array of positions into it that gives
    back the plan.
    """
    verified = []
    flat = planned.reshape(-1)
    unique = np.unique(flat)
    gathers = [a for a in arrays if np.issubdtype(a.dtype, np.integer) and a.ndim == 2
               and a.shape == planned.shape]
    frames_ok = False
    for value in arrays:
        if value.dtype == np.uint8 and value.ndim == 1:
            if value.tobytes() == record.path.encode("utf-8"):
                verified.append("path")
            elif np.array_equal(value, np.fromfile(record.path, dtype=np.uint8)):
                verified.append("file bytes")
            else:
                raise AssertionError(f"{record.path}: a uint8 feed array is neither the "
                                     "file's path nor its bytes")
        elif np.issubdtype(value.dtype, np.integer) and value.ndim == 1:
            if np.array_equal(value, flat):
                frames_ok = True
                verified.append("frames")
            elif np.array_equal(value, unique):
                if not any(np.array_equal(value[g], planned) for g in gathers):
                    raise AssertionError(f"{record.path}: the unique frames are fed, but no "
                                         "(V, T) positions gather the planned views from them")
                frames_ok = True
                verified.append("unique frames + gather")
    if not frames_ok:
        raise AssertionError(f"{record.path}: no fed array holds the planned frames "
                             f"{flat.tolist()}")
    return ", ".join(verified)


def check_feed(source, sampler, records: list[VideoRecord], plan_kwargs: dict, *,
               epoch: int) -> tuple[int, str]:
    """Run one epoch of the feed and check it against the plan (the warm-up).

    Every call must give one entry per video of the sampler's batch, in order (the videos the
    source says it fed must be the sampler's: nothing fails here), and each video's arrays
    must match ``plan_sample`` (:func:`_check_sample`).

    Returns:
        the number of batches fed, and what was verified per video.
    """
    source.start_epoch(epoch)
    shard = sampler.shard()
    expected = [shard[p].tolist() for p in sampler.batches()]
    fed_batches = 0
    verified = ""
    while True:
        try:
            outputs = source()
        except StopIteration:
            break
        if fed_batches >= len(expected):
            raise AssertionError(f"the feed gave more than the sampler's {len(expected)} "
                                 "batches")
        videos = _fed_videos(source) or expected[fed_batches]
        if videos != expected[fed_batches]:
            raise AssertionError(f"batch {fed_batches}: fed videos {videos}, the sampler "
                                 f"planned {expected[fed_batches]}")
        for k, output in enumerate(outputs):
            if len(output) != len(videos):
                raise AssertionError(f"batch {fed_batches}: output {k} has {len(output)} "
                                     f"entries for {len(videos)} videos")
        for j, video_index in enumerate(videos):
            plan = plan_sample(records[video_index], video_index=video_index, epoch=epoch,
                               **plan_kwargs)
            verified = _check_sample([np.asarray(output[j]) for output in outputs],
                                     records[video_index], plan.frame_indices)
        fed = getattr(source, "fed", None)
        if fed is not None and hasattr(fed, "clear"):
            fed.clear()
        fed_batches += 1
    if fed_batches != len(expected):
        raise AssertionError(f"the feed gave {fed_batches} batches, the sampler planned "
                             f"{len(expected)}")
    return fed_batches, verified


def bench_feed(records: list[VideoRecord], codec: str, args) -> Result:
    """Host time of ``source()`` per batch (ms), after a checked warm-up epoch."""
    from dali_fame.data.dali_pipeline import ClipSource

    sampler = ShardBatchSampler(len(records), batch_size=args.batch_size, seed=args.seed,
                                drop_last=True)
    if len(sampler) == 0:
        return Result(FEED_METHOD, codec, "training thread", None,
                      None, 0, note=f"fewer than {args.batch_size} videos: no full batch")
    plan_kwargs = _feed_plan_kwargs(args)
    source = ClipSource(records, sampler, plan_kwargs=plan_kwargs)
    _, verified = check_feed(source, sampler, records, plan_kwargs, epoch=0)
    times: list[float] = []
    cpu_times: list[float] = []
    starts: list[float] = []
    for round_ in range(args.rounds):
        t0 = time.perf_counter()
        source.start_epoch(1 + round_)
        starts.append(time.perf_counter() - t0)
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                source()
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.thread_time() - c0)
            fed = getattr(source, "fed", None)
            if fed is not None and hasattr(fed, "clear"):
                fed.clear()  # the loader pops these; keep the deque from growing
    ms = np.asarray(times) * 1e3
    return Result(
        FEED_METHOD, codec, "training thread", None,
        float(np.sum(times)) / args.rounds, len(times) * args.batch_size // args.rounds,
        note=(f"fed {verified}: checked against plan_sample; start_epoch "
              f"{1e3 * float(np.mean(starts)):.2f} ms"),
        ms_per_batch_mean=float(ms.mean()), ms_per_batch_p95=float(np.percentile(ms, 95)),
        batches=len(times), thread_ms_per_batch=1e3 * float(np.mean(cpu_times)),
    )


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
    thread_ms: list[float] = dataclasses.field(default_factory=list)  # per batch, per round
    clips: int = 0


def _loader_epochs(loader) -> Callable[[int], Iterator[dict]]:
    def run(epoch: int) -> Iterator[dict]:
        loader.set_epoch(epoch)
        return iter(loader)

    return run


def _time_epoch(method: _Method, epoch: int) -> None:
    """One timed epoch: wall clock, and the CPU time of this (the training) thread alone:
    what the loader costs the thread that would run the model, waiting excluded (DALI's and
    the DataLoader's workers are other threads / processes)."""
    clips = batches = 0
    start, thread_start = time.perf_counter(), time.thread_time()
    for batch in method.epoch(epoch=epoch):
        clips += batch["views"].shape[0] * batch["views"].shape[1]
        batches += 1
    if batch["views"].is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    method.thread_ms.append(1e3 * (time.thread_time() - thread_start) / batches)
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

    wanted = set(args.methods)
    cpu = build_cpu_loader(records, workers=workers, **common)
    cpu.set_epoch(0)
    reference = next(iter(cpu))  # also starts the persistent workers (not timed)

    def add(method: _Method, exact: bool = False) -> None:
        batches = list(method.epoch(epoch=0))  # warm-up: workers / pipelines started, files cached
        method.mean_abs_diff, method.max_abs_diff = _compare(batches[0], reference)
        if exact and method.max_abs_diff != 0:
            raise AssertionError(f"{method.name}: frames differ from the CPU loader's")
        methods.append(method)

    if "cpu" in wanted or "dali" in wanted:  # the CPU loader is the reference of the ratio
        add(_Method("cpu_loader (PyAV, rgb=exact)", f"{workers} workers", _loader_epochs(cpu)),
            exact=True)
    if "cpu-fast" in wanted:
        fast = build_cpu_loader(records, workers=workers, rgb="fast", **common)
        add(_Method("cpu_loader (PyAV, rgb=fast)", f"{workers} workers", _loader_epochs(fast),
                    note="FFmpeg's default YUV->RGB (as torchcodec/decord)"))

    try:
        from dali_fame.data.dali_pipeline import build_dali_loader
        dali_missing = None
    except Exception as exc:  # noqa: BLE001
        dali_missing = f"DALI not importable: {exc}"
    devices = []
    if dali_missing is None and "dali" in wanted:
        if codec in DALI_CPU_CODECS:
            devices.append("cpu")
        if torch.cuda.is_available():
            devices.append("gpu")
    if "dali" not in wanted:
        pass
    elif dali_missing:
        skipped.append(Result("dali", codec, "-", None, None, 0, note=dali_missing))
    elif not devices:
        skipped.append(Result("dali (cpu)", codec, "-", None, None, 0,
                              note="DALI's CPU decoder reads VP9/VP8/MJPEG only; no GPU here"))
    for device in devices:
        # the DALI helper's builder names its thread count `workers` or `num_threads`
        params = inspect.signature(build_dali_loader).parameters
        threads = {"workers" if "workers" in params else "num_threads": workers}
        dali = build_dali_loader(records, device=device, **threads, **common)
        add(_Method(f"dali ({device})",
                    f"{workers} threads" + (" + GPU" if device == "gpu" else ""),
                    _loader_epochs(dali),
                    note="mixed decoding (NVDEC)" if device == "gpu" else ""))

    for name in ("pyav", "torchcodec", "decord"):
        if name not in wanted:
            continue
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
               "; ".join(x for x in (f"best {max(m.rates):.1f}", m.note) if x),
               thread_ms_per_batch=float(np.median(m.thread_ms)))
        for m in methods
    ]
    return results + skipped


# ------------------------------------------------------------------------------- output

#: issue 9's targets: the feed's mean ms per batch of 8 h264 videos, DALI cpu / CPU loader on VP9
FEED_TARGET_MS = 2.0
DALI_CPU_TARGET_RATIO = 0.8


def targets(results: list[Result], batch_size: int) -> list[dict]:
    """The issue's two targets, each with its measured value and verdict (where measured)."""
    out = []
    for r in results:
        if (r.method == FEED_METHOD and r.ms_per_batch_mean is not None
                and r.codec == "h264"):
            out.append({
                "target": f"DALI feed: training-thread host time per batch of {batch_size} "
                          f"{r.codec} videos <= {FEED_TARGET_MS:g} ms (mean)",
                "codec": r.codec, "value": r.ms_per_batch_mean,
                "p95": r.ms_per_batch_p95,
                "met": (r.ms_per_batch_mean <= FEED_TARGET_MS if batch_size == 8 else None),
            })
    by_key = {(r.codec, r.method): r for r in results if r.clips_per_s}
    for codec in sorted({r.codec for r in results} & {"vp9"}):
        dali = by_key.get((codec, "dali (cpu)"))
        cpu = by_key.get((codec, "cpu_loader (PyAV, rgb=exact)"))
        if dali and cpu:
            ratio = dali.clips_per_s / cpu.clips_per_s
            out.append({
                "target": (f"DALI cpu on {codec} >= {DALI_CPU_TARGET_RATIO:g}x the CPU "
                           f"loader's clips/s ({dali.processes} vs {cpu.processes})"),
                "codec": codec, "value": ratio,
                "dali_clips_per_s": dali.clips_per_s, "cpu_clips_per_s": cpu.clips_per_s,
                "met": ratio >= DALI_CPU_TARGET_RATIO,
            })
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name, module in (("av", "av"), ("dali", "nvidia.dali"), ("torchcodec", "torchcodec"),
                         ("decord", "decord")):
        try:
            out[name] = str(__import__(module, fromlist=["__version__"]).__version__)
        except Exception:  # noqa: BLE001
            out[name] = "not installed"
    return out


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not applicable"}[met]


def write_outputs(results: list[Result], meta: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench_loader.json", out_dir / "bench_loader.md"
    with open(json_path, "w") as f:
        json.dump({"meta": {k: v for k, v in meta.items() if k != "targets"},
                   "targets": meta["targets"],
                   "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
        f.write("\n")
    lines = [
        (f"# Loader benchmark ({meta['data']}; 2 views x 16 frames stride 2, crop "
         f"{meta['crop']}, batch {meta['batch_size']})"),
        "",
        (f"Machine: {meta['cpu_count']} CPU cores (1-min load average at the start "
         f"{meta['load_avg_start']:.1f}, at the end {meta['load_avg_1min']:.1f}), GPU: "
         f"{meta['gpu'] or 'none'}. "
         f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}."),
        f"Command: `{meta['command']}`",
        "",
    ]
    for codec, what in meta["sets"].items():
        lines.append(f"- {codec}: {what}")
    if meta["targets"]:
        lines += ["", "## Targets (issue 9)", "", "| target | measured | verdict |",
                  "|---|---:|---|"]
        for t in meta["targets"]:
            value = (f"{t['value']:.2f} ms (p95 {t['p95']:.2f})" if "p95" in t
                     else f"{t['value']:.2f}x ({t['dali_clips_per_s']:.1f} vs "
                          f"{t['cpu_clips_per_s']:.1f} clips/s)")
            lines.append(f"| {t['target']} | {value} | {_verdict(t['met'])} |")
    feeds = [r for r in results if r.method == FEED_METHOD]
    if feeds:
        lines += [
            "", (f"## DALI feed: host time per batch on the training thread (ClipSource, no "
                 f"decoding; {meta['rounds']} epochs after a checked warm-up epoch)"), "",
            ("| codec | batches timed | ms per batch (mean) | ms per batch (p95) | "
             "thread CPU ms per batch (mean) | note |"),
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in feeds:
            mean = "-" if r.ms_per_batch_mean is None else f"{r.ms_per_batch_mean:.3f}"
            p95 = "-" if r.ms_per_batch_p95 is None else f"{r.ms_per_batch_p95:.3f}"
            cpu = "-" if r.thread_ms_per_batch is None else f"{r.thread_ms_per_batch:.3f}"
            lines.append(f"| {r.codec} | {r.batches} | {mean} | {p95} | {cpu} | {r.note} |")
    decoders = [r for r in results if r.method != FEED_METHOD]
    if decoders:
        lines += [
            "", (f"## Decoding throughput (median of {meta['rounds']} interleaved rounds of "
                 "one epoch per method, after a warm-up epoch)"), "",
            ("| codec | method | processes | clips/s (median) | s/epoch (median) | "
             "training-thread CPU ms/batch | mean / max abs diff vs cpu_loader | note |"),
            "|---|---|---|---:|---:|---:|---|---|",
        ]
        for r in decoders:
            rate = f"{r.clips_per_s:.1f}" if r.clips_per_s else "-"
            secs = f"{r.seconds:.2f}" if r.seconds else "-"
            diff = ("-" if r.mean_abs_diff is None
                    else f"{r.mean_abs_diff:.3f} / {r.max_abs_diff:.0f}")
            thread = "-" if r.thread_ms_per_batch is None else f"{r.thread_ms_per_batch:.1f}"
            lines.append(f"| {r.codec} | {r.method} | {r.processes} | {rate} | {secs} | "
                         f"{thread} | {diff} | {r.note} |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("videos: a generated set (default) or your own")
    data.add_argument("--data-root", type=Path, default=None,
                      help="benchmark this dataset instead of generated videos")
    data.add_argument("--dataset-format", default=None,
                      help="annotation format of --data-root (dali_fame.data.readers.FORMATS)")
    data.add_argument("--split", default="train", help="split of --data-root to index")
    data.add_argument("--videos", type=int, default=32,
                      help="videos per codec (generated; with --data-root the first N valid "
                           "ones of each codec, 0 = all)")
    data.add_argument("--size", type=int, default=128, help="generated frame side in pixels")
    data.add_argument("--frames", type=int, default=64, help="generated frames per video")
    data.add_argument("--codecs", nargs="+", default=["h264", "vp9"],
                      choices=list(video_io.CODECS), help="generated codecs")
    data.add_argument("--data-dir", type=Path, default=None,
                      help="keep/reuse the generated videos here (default: a temp dir)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="what to time (default: all)")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds of one epoch per method, interleaved (median reported)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="loader processes / DALI threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def _print_result(r: Result) -> None:
    if r.ms_per_batch_mean is not None:
        value = f"{r.ms_per_batch_mean:8.3f} ms/batch (p95 {r.ms_per_batch_p95:.3f})"
    elif r.clips_per_s:
        value = (f"{r.clips_per_s:8.1f} clips/s, training thread "
                 f"{r.thread_ms_per_batch:.1f} ms CPU/batch")
    else:
        value = "   skipped     "
    print(f"{r.codec:6s} {r.method:36s} {value}  {r.note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (args.data_root is None) != (args.dataset_format is None):
        parser.error("--data-root and --dataset-format go together")
    load_start = os.getloadavg()[0]
    command = "dali-fame bench loader " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {command}", flush=True)
    tmp = None
    results: list[Result] = []
    sets: dict[str, str] = {}
    found = None
    try:
        if args.data_root is not None:
            by_codec, found = index_dataset(args.data_root, dataset_format=args.dataset_format,
                                            split=args.split, videos=args.videos,
                                            workers=args.workers)
            data = (f"{args.data_root} (format {args.dataset_format}, split {args.split}: "
                    f"{found['valid']} valid of {found['listed']} listed)")
            codecs = list(by_codec)
        else:
            root = args.data_dir
            if root is None:
                tmp = tempfile.mkdtemp(prefix="bench_loader_")
                root = Path(tmp)
            by_codec = None
            codecs = list(args.codecs)
            data = (f"generated: {args.videos} videos per codec, {args.size}x{args.size}, "
                    f"{args.frames} frames")
        for codec in codecs:
            records = (by_codec[codec] if by_codec is not None else
                       make_dataset(root, codec=codec, videos=args.videos, size=args.size,
                                    frames=args.frames))
            sets[codec] = describe_records(records)
            print(f"{codec}: {sets[codec]}", flush=True)
            if "feed" in args.methods:
                result = bench_feed(records, codec, args)
                _print_result(result)
                results.append(result)
            if set(args.methods) - {"feed"}:
                for r in bench_codec(records, codec, args):
                    _print_result(r)
                    results.append(r)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "data": data, "data_root": None if args.data_root is None else str(args.data_root),
        "dataset_format": args.dataset_format, "split": args.split, "index": found,
        "sets": sets, "videos": args.videos, "size": args.size, "frames": args.frames,
        "crop": args.crop, "batch_size": args.batch_size, "rounds": args.rounds,
        "workers": args.workers, "methods": list(args.methods),
        "cpu_count": os.cpu_count(), "load_avg_start": load_start,
        "load_avg_1min": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": _versions(), "command": command,
        "targets": targets(results, args.batch_size),
    }
    json_path, md_path = write_outputs(results, meta, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    print(f"rerun: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

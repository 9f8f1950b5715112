"""Pretraining step time, split into data wait, FAME, augmentation, forward/backward and optimizer.

Runs the trainer's exact step (same loader, FAME module, ClipAugment, MoCo, SGD) for a few
steps per setting on the built-in synthetic dataset and reports the median time of each stage
and clips/s, with FAME on and, side by side, off (the MoCo baseline) so that FAME's share of a
step is visible. GPU stages are timed with torch.cuda.synchronize() around each stage.

Settings: ``demo`` (the CPU demo: tiny backbone, 8 x 64 x 64, batch 16) always; on a GPU also
``r2plus1d_112`` (16 x 112 x 112) and ``i3d_224`` (16 x 224 x 224), per-GPU batch 16 (the paper's
global batch 64 over 4 GPUs); ``--settings`` picks any of them (R(2+1)D on the CPU works, slowly).

Writes ``train.json`` and ``train.md`` to --out (default benchmarks/results/).

    python benchmarks/bench_train.py            # or: dali-fame bench train
    python benchmarks/bench_train.py --settings demo r2plus1d_112 --steps 6
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from dali_fame.augment import ClipAugment
from dali_fame.backends import select_fame_backend, select_loader
from dali_fame.config import DataConfig
from dali_fame.engine.data import build_loader, load_split
from dali_fame.fame import FAME
from dali_fame.moco import MoCo
from dali_fame.models import build_backbone

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SETTINGS = {
    "demo": dict(backbone="tiny", clip_len=8, crop=64, batch=16),
    "r2plus1d_112": dict(backbone="r2plus1d_18", clip_len=16, crop=112, batch=16),
    "i3d_224": dict(backbone="i3d", clip_len=16, crop=224, batch=16),
}
STAGES = ("data_wait", "fame", "augment", "forward_backward", "optimizer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setting(name: str, *, fame_on: bool, steps: int, warmup: int, device: torch.device,
                 workers: int) -> dict:
    """Median per-stage seconds over ``steps`` timed steps (after ``warmup``) of one setting."""
    s = SETTINGS[name]
    data = DataConfig(format="synthetic", clip_len=s["clip_len"], stride=2, crop=s["crop"],
                      workers=workers, loader="auto")
    split = load_split(data, split="train", is_main=True, wait=lambda: None, progress=False)
    loader, choice = build_loader(split.records, data, batch_size=s["batch"], mode="train", seed=0,
                                  rank=0, world_size=1, local_rank=0)
    fame = FAME(beta=0.5 if fame_on else 1.0, backend=select_fame_backend("auto", device).name)
    augment = ClipAugment(crop=s["crop"])
    model = MoCo(build_backbone(s["backbone"]), queue_size=s["batch"] * 8, momentum=0.999,
                 global_batch_size=s["batch"], generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    times: dict[str, list[float]] = {k: [] for k in STAGES}
    done, epoch = 0, 0
    while done < warmup + steps:
        loader.set_epoch(epoch)
        last = time.perf_counter()
        for batch in loader:
            views = batch["views"].to(device, non_blocking=True)
            _sync(device)
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(done)
            out = fame(views[:, 0], views[:, 1], generator=gen) if fame_on else None
            v0, v1 = (out.view0, out.view1) if out is not None else (views[:, 0], views[:, 1])
            _sync(device)
            t1 = time.perf_counter()
            x0, x1 = augment(v0, generator=gen), augment(v1, generator=gen)
            _sync(device)
            t2 = time.perf_counter()
            loss = model(x0, x1)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sync(device)
            t3 = time.perf_counter()
            optimizer.step()
            _sync(device)
            t4 = time.perf_counter()
            if done >= warmup:
                for key, value in zip(STAGES, (t0 - last, t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[key].append(value)
            done += 1
            last = time.perf_counter()
            if done >= warmup + steps:
                break
        epoch += 1
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    return {"setting": name, "fame": fame_on, "backbone": s["backbone"], "clip": f"{s['clip_len']}x{s['crop']}x{s['crop']}",
            "batch": s["batch"], "loader": choice.name, "device": str(device), "steps": steps,
            **{f"{k}_ms": 1000 * v for k, v in med.items()}, "step_ms": 1000 * total,
            "clips_per_s": s["batch"] / total}


def to_markdown(rows: list[dict], header: str) -> str:
    cols = ["setting", "fame", "loader", "device", "data_wait_ms", "fame_ms", "augment_ms",
            "forward_backward_ms", "optimizer_ms", "step_ms", "clips_per_s"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="CPU loader workers")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = args.settings or (list(SETTINGS) if device.type == "cuda" else ["demo"])
    rows = []
    for name in settings:
        for fame_on in (True, False):
            row = time_setting(name, fame_on=fame_on, steps=args.steps, warmup=args.warmup,
                               device=device, workers=args.workers)
            rows.append(row)
            print(f"{name:13s} fame={'on ' if fame_on else 'off'} step {row['step_ms']:8.1f} ms  "
                  f"wait {row['data_wait_ms']:7.1f}  fame {row['fame_ms']:6.1f}  aug {row['augment_ms']:6.1f}  "
                  f"fwd/bwd {row['forward_backward_ms']:7.1f}  opt {row['optimizer_ms']:5.1f}  "
                  f"{row['clips_per_s']:6.1f} clips/s", flush=True)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    header = (f"# Pretraining step time\n\ntorch {torch.__version__}, {gpu or 'CPU'} "
              f"({platform.machine()}, {torch.get_num_threads()} threads), loader {select_loader().name}; "
              f"median of {args.steps} steps after {args.warmup} warm-up; command: "
              f"`python benchmarks/bench_train.py {' '.join(sys.argv[1:] if argv is None else argv)}`")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(rows, indent=2))
    (args.out / "train.md").write_text(to_markdown(rows, header))
    print(f"wrote {args.out / 'train.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

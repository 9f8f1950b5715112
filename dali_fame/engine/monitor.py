"""Run monitoring: throughput / data-wait meters, the per-epoch summary.csv, image grids."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch


class StepTimer:
    """Splits wall time into data wait (between steps) and compute (inside steps).

    Call :meth:`data_ready` when a batch arrives and :meth:`step_done` after the optimizer
    step; :meth:`snapshot` returns clips/s and the data-wait fraction since the last snapshot.
    """

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._arrived = self._last
        self.wait = self.compute = 0.0
        self.clips = 0

    def data_ready(self) -> None:
        self._arrived = time.perf_counter()
        self.wait += self._arrived - self._last

    def step_done(self, clips: int) -> None:
        self._last = time.perf_counter()
        self.compute += self._last - self._arrived
        self.clips += clips

    def snapshot(self) -> dict[str, float]:
        total = max(self.wait + self.compute, 1e-9)
        out = {"clips_per_s": self.clips / total, "data_wait_frac": self.wait / total}
        self.wait = self.compute = 0.0
        self.clips = 0
        return out


class SummaryCSV:
    """Appends one row per epoch to ``summary.csv`` (header written once, columns fixed then)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None
        if self.path.is_file():
            with open(self.path) as fh:
                header = fh.readline().strip()
            self._fields = header.split(",") if header else None

    def append(self, row: dict) -> None:
        new = not self.path.is_file() or self._fields is None
        if self._fields is None:
            self._fields = list(row)
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def clip_mask_grid(
    clip: torch.Tensor, mask: torch.Tensor | None, merged: torch.Tensor, *, frames: int = 4
) -> torch.Tensor:
    """An image for TensorBoard: rows = original clip, FAME mask, merged clip.

    clip, merged: uint8 (T, H, W, 3); mask: (H, W) bool/uint8 or None (BE / no debiasing).
    Returns float32 (3, 3*H, frames*W) in [0, 1], CHW as ``SummaryWriter.add_image`` expects.
    """
    t = clip.shape[0]
    idx = torch.linspace(0, t - 1, frames).round().long()
    top = torch.cat(list(clip[idx].float() / 255), dim=1)  # (H, frames*W, 3)
    bottom = torch.cat(list(merged[idx].float() / 255), dim=1)
    if mask is None:
        middle = torch.zeros_like(top)
    else:
        m = mask.float()[..., None].expand(*mask.shape, 3)
        middle = torch.cat([m] * frames, dim=1)
    return torch.cat([top, middle.to(top.device), bottom], dim=0).permute(2, 0, 1).cpu()


def replica_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """float64 (2,): position-weighted sums of all parameters and of the MoCo queue buffers.

    Gathered across processes at the end of a run, equal rows show that every DDP replica holds
    the same weights and the same MoCo queue (a cheap check that gradients, the momentum update
    and the queue's gather all stayed in sync). BatchNorm running statistics are left out: each
    rank updates them from its own batch, so they legitimately differ between replicas.
    """
    def total(tensors) -> torch.Tensor:
        acc = torch.zeros((), dtype=torch.float64)
        for i, t in enumerate(tensors):
            flat = t.detach().double().flatten().cpu()
            acc += (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum() * (i + 1)
        return acc

    queues = [b for name, b in model.named_buffers() if "queue" in name]
    return torch.stack([total(model.parameters()), total(queues)])


class MetricsLog:
    """Appends one JSON line per logged step to ``metrics.jsonl`` (easy to plot or compare)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, step: int, metrics: dict) -> None:
        import json

        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")

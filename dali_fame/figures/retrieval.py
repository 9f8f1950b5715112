"""A retrieval query with its nearest training videos (the kind of the paper's Figure 8).

One PNG, one row per query: the query's frames, then its ``top`` nearest gallery videos, each
labelled with its class and cosine similarity, framed green (its class is the query's: a hit) or
red (a miss). The neighbours come from a retrieval run's ``neighbors.json`` (what
``train/retrieval.py`` writes: per query ``query``, ``path``, ``label``, ``class`` and
``neighbors``, a list of ``video_id``, ``path``, ``label``, ``class``, ``similarity``, nearest
first), or are computed here with the same protocol (:func:`compute_neighbors`: 10-clip averaged
L2-normalised features, each set centred by its own mean, cosine similarity).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dali_fame.config import DataConfig
from dali_fame.engine.data import build_loader, load_split
from dali_fame.eval.inference import multiclip_pass
from dali_fame.eval.retrieval import evaluate_retrieval
from dali_fame.eval.splits import resolve_eval_splits
from dali_fame.figures.common import Encoder, spread
from dali_fame.figures.plot import pick_frames, plt, save_png

__all__ = ["compute_neighbors", "read_neighbors", "retrieval_figure", "video_strip"]

_HIT, _MISS = "#1a9850", "#d73027"


def read_neighbors(path: str | Path) -> list[dict]:
    """The entries of a retrieval run's ``neighbors.json`` (``path``: the file or the run folder).

    Raises ValueError naming the file when it is missing or not in the retrieval script's format.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "neighbors.json"
    if not p.is_file():
        raise ValueError(f"--neighbors {str(path)!r}: no neighbors.json there (run "
                         f"`accelerate launch train/retrieval.py` first, or pass --pretrained to "
                         f"compute the neighbours here)")
    try:
        entries = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON ({err})") from None
    need = {"query", "path", "class", "neighbors"}
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and need <= set(e) for e in entries):
        raise ValueError(f"{p} is not a retrieval neighbors.json (a non-empty list of queries with "
                         f"keys {sorted(need)})")
    return entries


def compute_neighbors(encoder: Encoder, data: DataConfig, *, gallery_split: str = "train",
                      query_split: str = "test", num_clips: int = 10, batch_size: int = 8,
                      keep: int = 10, seed: int = 0, holdout: float = 0.0,
                      holdout_seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """The retrieval protocol in this process (CPU): every query's ``keep`` nearest gallery videos.

    Args:
        encoder: the backbone (eval mode).
        data: the dataset and clip settings (as the evaluations' ``data`` section).
        gallery_split, query_split: splits of the gallery and the queries (refused when they
            share videos, as in train/retrieval.py, unless they are the same split by name).
        num_clips, batch_size, seed: the evaluation clips per video, videos per batch, seed.
        keep: neighbours kept per query.
        holdout, holdout_seed: a seeded per-class hold-out for data without a split.

    Returns:
        (entries in the ``neighbors.json`` format, recalls {"R@k": percent}).
    """
    gallery, queries = resolve_eval_splits(
        load_split(data, split=gallery_split, is_main=True, wait=lambda: None, progress=False),
        load_split(data, split=query_split, is_main=True, wait=lambda: None, progress=False),
        holdout=holdout, seed=holdout_seed, same_split=gallery_split == query_split)
    feats = {}
    for role, split in (("gallery", gallery), ("queries", queries)):
        loader, _ = build_loader(split.records, data, batch_size=batch_size, mode="eval",
                                 eval_clips=num_clips, drop_last=False, seed=seed, rank=0,
                                 world_size=1, local_rank=0)
        out = multiclip_pass(encoder.model, loader, device="cpu", reduce="l2", progress=False)
        order = torch.argsort(out["index"])  # one process: every video once, sorted by index
        feats[role] = {k: v[order] for k, v in out.items()}
    g, q = feats["gallery"], feats["queries"]
    recalls, sims, idx = evaluate_retrieval(q["outputs"], q["labels"], g["outputs"], g["labels"], keep=keep)
    names = gallery.class_names
    entries = []
    for qi, vi in enumerate(q["index"].tolist()):
        rec = queries.records[vi]
        entries.append({
            "query": rec.video_id, "path": rec.path, "label": rec.label, "class": names[rec.label],
            "neighbors": [{"video_id": gallery.records[j].video_id, "path": gallery.records[j].path,
                           "label": gallery.records[j].label, "class": names[gallery.records[j].label],
                           "similarity": round(s, 5)}
                          for s, j in zip(sims[qi, :keep].tolist(),
                                          g["index"][idx[qi, :keep]].tolist())],
        })
    return entries, recalls


def video_strip(path: str | Path, *, frames: int = 1) -> np.ndarray:
    """``frames`` frames spread over a video (1: the middle frame), side by side.

    Returns:
        uint8 (H, frames * W, 3) RGB. Raises VideoDecodeError (a ValueError) naming the file.
    """
    # imported here: PyAV is only needed to decode (GPU machines may lack it; the package must
    # import without it, tests/test_selftest.py)
    from dali_fame.data.video_io import probe_video, read_frames

    num = probe_video(path).num_frames
    return np.concatenate(list(read_frames(path, pick_frames(num, frames))), axis=1)


def retrieval_figure(entries: list[dict], *, out_dir: str | Path, queries: list[int] | None = None,
                     top: int = 3, frames: int = 1, title: str = "") -> Path:
    """Write ``retrieval.png``: a row per query with its ``top`` neighbours, hits and misses marked.

    Args:
        entries: ``neighbors.json`` entries (:func:`read_neighbors` / :func:`compute_neighbors`).
        out_dir: output folder.
        queries: positions in ``entries`` to show (default 4 spread over the queries: the
            entries are in class order, so the first 4 would often be one class).
        top: neighbours per query.
        frames: frames per video (1: the middle frame; more: a strip over the video).
        title: figure title (e.g. the checkpoint and R@1).

    Returns:
        the PNG's path.
    """
    chosen = spread(len(entries), 4) if queries is None else list(queries)
    for i in chosen:
        if not 0 <= i < len(entries):
            raise ValueError(f"--queries: {i} is not a query position (0..{len(entries) - 1})")
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    panel = 1.8
    fig, axes = plt.subplots(len(chosen), 1 + top, squeeze=False,
                             figsize=(panel * frames * (1 + top) + 0.5, (panel + 0.45) * len(chosen) + 0.6))
    for row, qi in enumerate(chosen):
        entry = entries[qi]
        cells = [(entry["path"], f"query: {entry['query']}\n{entry['class']}", None)]
        for n in entry["neighbors"][:top]:
            hit = n["class"] == entry["class"]
            cells.append((n["path"], f"{'hit' if hit else 'miss'}: {n['class']}\nsim {n['similarity']:.3f}",
                          _HIT if hit else _MISS))
        for col in range(1 + top):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(cells):  # a gallery smaller than top
                ax.axis("off")
                continue
            path, text, colour = cells[col]
            ax.imshow(video_strip(path, frames=frames), interpolation="nearest")
            ax.set_title(text, fontsize=7, color=colour or "black")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour or "black")
                spine.set_linewidth(4 if colour else 1)
    fig.subplots_adjust(hspace=0.45, wspace=0.06)  # room for the two-line labels above each row
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, Path(out_dir) / "retrieval.png")

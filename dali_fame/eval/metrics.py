"""Classification metrics: top-k, per-class accuracy, confusion matrix and its figure.

All functions take the video-level outputs of a test pass (the 10-clip average), already
gathered from every process: ``scores`` float (N, C), ``labels`` int64 (N,).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, *, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Percent of rows whose label is among the k highest scores, for each k.

    scores: float (N, C); labels: int64 (N,). A k above C counts every row as a hit (k is
    clipped to C). Ties are broken by ``torch.topk``'s order. Returns ``{k: percent}``.
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"topk_accuracy: scores (N, C) and labels (N,) expected; got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("topk_accuracy: no samples")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, kmax)
    hit = top == labels[:, None]
    return {k: float(hit[:, : min(k, scores.shape[1])].any(dim=1).double().mean() * 100) for k in ks}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """int64 (C, C): entry [t, p] counts videos of true class t predicted as p."""
    if pred.shape != labels.shape:
        raise ValueError(f"confusion_matrix: pred {tuple(pred.shape)} vs labels {tuple(labels.shape)}")
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """float64 (C,): percent correct per true class from a confusion matrix; NaN for a class
    without test videos."""
    total = cm.sum(dim=1).double()
    correct = cm.diagonal().double()
    return torch.where(total > 0, correct * 100 / total.clamp(min=1), torch.full_like(total, float("nan")))


def save_confusion_figure(
    cm: torch.Tensor, path: str | Path, *, class_names: list[str] | None = None, title: str = ""
) -> Path:
    """Write the row-normalised confusion matrix (true class down, predicted across) as a PNG.

    Class names label the axes up to 40 classes; beyond that (UCF101, SSv2) only indices are
    shown, the names being unreadable at that density.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    c = cm.shape[0]
    rows = cm.double() / cm.sum(dim=1, keepdim=True).clamp(min=1).double()
    size = min(4 + 0.18 * c, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if class_names is not None and c <= 40:
        ax.set_xticks(range(c), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), class_names, fontsize=7)
    if c <= 16:
        for t in range(c):
            for p in range(c):
                if cm[t, p]:
                    ax.text(p, t, int(cm[t, p]), ha="center", va="center", fontsize=8,
                            color="black" if rows[t, p] > 0.5 else "white")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def classification_results(
    scores: torch.Tensor, labels: torch.Tensor, *, class_names: list[str]
) -> tuple[dict, torch.Tensor]:
    """Top-1 / top-5 / mean and per-class accuracy (percent) plus the confusion matrix.

    Returns ``(metrics, cm)``: metrics holds ``top1``, ``top5``, ``mean_class_acc`` (over the
    classes present), ``per_class`` {name: percent or None}, ``num_videos``; cm int64 (C, C).
    """
    num_classes = len(class_names)
    if scores.shape[1] != num_classes:
        raise ValueError(f"scores have {scores.shape[1]} classes but the dataset {num_classes}")
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    cm = confusion_matrix(scores.argmax(dim=1), labels, num_classes=num_classes)
    per_class = per_class_accuracy(cm)
    present = per_class[~per_class.isnan()]
    metrics = {
        "top1": acc[1], "top5": acc[5],
        "mean_class_acc": float(present.mean()) if present.numel() else float("nan"),
        "per_class": {name: (None if math.isnan(v) else float(v))
                      for name, v in zip(class_names, per_class.tolist())},
        "num_videos": int(labels.numel()),
    }
    return metrics, cm

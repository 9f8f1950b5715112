"""Test passes shared by the evaluations: normalisation, the 10-clip protocol, gathering.

A test pass runs every video of a split through a model as ``num_clips`` uniformly spaced
clips (the loader's ``mode="eval"``: short side resized to the crop, centre crop), reduces the
clip outputs to one row per video, and gathers the rows of every process as tensors
(``accelerator.gather_for_metrics``; no text files), ordered by video index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dali_fame.augment import K400_MEAN, K400_STD

REDUCTIONS = ("softmax", "l2", "mean")


def normalize_clips(
    clips: torch.Tensor,
    *,
    mean: tuple[float, float, float] = K400_MEAN,
    std: tuple[float, float, float] = K400_STD,
) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) RGB channels-last -> float32 (B, 3, T, H, W), ``(x/255 - mean)/std``.

    The evaluation input transform: no random op (the loader already cropped and, in training,
    flipped), the Kinetics-400 statistics of pretraining (spec section 5).
    """
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"normalize_clips expects uint8 (B, T, H, W, 3); got {clips.dtype} {tuple(clips.shape)}")
    x = clips.permute(0, 4, 1, 2, 3).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(m).div_(s)


def reduce_clips(outputs: torch.Tensor, *, reduce: str) -> torch.Tensor:
    """Per-clip outputs float (B, V, D) -> per-video float32 (B, D).

    "softmax": mean of the clips' class probabilities (classification); "l2": mean of the
    clips' L2-normalised features (retrieval); "mean": plain mean.
    """
    x = outputs.float()
    if reduce == "softmax":
        x = x.softmax(dim=-1)
    elif reduce == "l2":
        x = F.normalize(x, dim=-1)
    elif reduce != "mean":
        raise ValueError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}")
    return x.mean(dim=1)


@torch.no_grad()
def multiclip_pass(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[dict],
    *,
    device: torch.device | str,
    reduce: str,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = True,
    desc: str = "test",
) -> dict[str, torch.Tensor]:
    """This process's share of a test pass.

    ``forward`` maps float (N, 3, T, H, W) -> float (N, D) (logits or features); the loader
    (``mode="eval"``) yields ``views`` uint8 (B, V, T, H, W, 3), ``labels`` and ``index``.
    Returns ``{"index": int64 (n,), "labels": int64 (n,), "outputs": float32 (n, D)}`` on
    ``device`` for the n videos this process saw (reduced over the V clips, see
    :func:`reduce_clips`).
    """
    index, labels, outputs = [], [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        views = batch["views"].to(device, non_blocking=True)  # (B, V, T, H, W, 3) uint8
        b, v = views.shape[:2]
        with autocast():
            out = forward(normalize_clips(views.flatten(0, 1)))  # (B*V, D)
        outputs.append(reduce_clips(out.view(b, v, -1), reduce=reduce))
        labels.append(batch["labels"].to(device))
        index.append(batch["index"].to(device))
    if not outputs:
        raise ValueError("multiclip_pass: this process received no test video (more processes "
                         "than videos, or every video failed to decode)")
    return {"index": torch.cat(index), "labels": torch.cat(labels), "outputs": torch.cat(outputs)}


def gather_indexed(accelerator, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather every process's rows of ``local`` (from :func:`multiclip_pass`), one per video.

    Ranks may hold different numbers of videos: rows are padded to the longest rank (index
    -1), gathered as tensors with ``accelerator.gather_for_metrics``, the padding is dropped,
    and rows are sorted by video index (a video seen twice is kept once). Returns the same keys
    with N rows on CPU; identical on every process.
    """
    padded = {}
    for key, tensor in local.items():
        fill = -1 if key == "index" else 0
        padded[key] = accelerator.pad_across_processes(tensor.contiguous(), dim=0, pad_index=fill)
    gathered = accelerator.gather_for_metrics(padded)
    index = gathered["index"].cpu()
    keep = torch.nonzero(index >= 0).flatten()
    order = keep[torch.argsort(index[keep], stable=True)]
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    order = order[first]
    return {key: value.cpu()[order] for key, value in gathered.items()}

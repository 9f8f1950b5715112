"""Video retrieval (spec section 8): test videos query the training videos.

Protocol: each video's feature is the average of its 10 clips' L2-normalised backbone features;
each set (queries, gallery) is centred by its *own* mean and L2-normalised; similarity is the
cosine (a dot product after the normalisation); a query is a hit at k when any of its k nearest
gallery videos has its class. Reported as R@1, R@5, R@10, R@20, R@50 in percent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dali_fame.eval.config import RECALL_KS


def center_and_normalize(features: torch.Tensor) -> torch.Tensor:
    """features float (N, D) -> float32 (N, D): minus the set's mean row, then unit L2 rows."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"center_and_normalize: expected (N, D) with N >= 1; got {tuple(features.shape)}")
    x = features.float()
    return F.normalize(x - x.mean(dim=0, keepdim=True), dim=1)


def nearest_neighbors(
    queries: torch.Tensor, gallery: torch.Tensor, *, k: int, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar gallery rows of every query by dot product (cosine for unit rows).

    queries float (Q, D), gallery float (G, D) -> (similarities float32 (Q, k'), indices int64
    (Q, k')), most similar first, ``k' = min(k, G)``. Queries are processed ``chunk`` at a time
    so that a (Q, G) matrix never has to fit in memory at once.
    """
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"nearest_neighbors: feature sizes differ ({queries.shape[1]} vs {gallery.shape[1]})")
    k = min(k, gallery.shape[0])
    sims, idx = [], []
    g = gallery.float().t()
    for start in range(0, queries.shape[0], chunk):
        s, i = (queries[start:start + chunk].float() @ g).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def recall_at_k(
    neighbor_labels: torch.Tensor, query_labels: torch.Tensor, *, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Percent of queries with their class among their first k neighbours, for each k.

    neighbor_labels int64 (Q, K): labels of each query's gallery neighbours, nearest first;
    query_labels int64 (Q,). A k above K (a gallery smaller than k) uses all K neighbours.
    Returns ``{"R@k": percent}``.
    """
    if neighbor_labels.ndim != 2 or query_labels.shape != neighbor_labels.shape[:1]:
        raise ValueError(f"recall_at_k: (Q, K) and (Q,) expected; got {tuple(neighbor_labels.shape)} "
                         f"and {tuple(query_labels.shape)}")
    hit = neighbor_labels == query_labels[:, None]  # (Q, K)
    first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(query_labels, 1 << 30))
    return {f"R@{k}": float((first < k).double().mean() * 100) for k in ks}


def evaluate_retrieval(
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_features: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    ks: tuple[int, ...] = RECALL_KS,
    keep: int = 50,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The whole protocol on video-level features (already 10-clip averaged).

    query_features float (Q, D), query_labels int64 (Q,), gallery_features float (G, D),
    gallery_labels int64 (G,). Each set is centred by its own mean and L2-normalised here.
    Returns ``(recalls {"R@k": percent}, similarities float32 (Q, n), indices int64 (Q, n))``
    with ``n = min(max(max(ks), keep), G)`` neighbours per query, nearest first.
    """
    q = center_and_normalize(query_features)
    g = center_and_normalize(gallery_features)
    sims, idx = nearest_neighbors(q, g, k=max(max(ks), keep))
    recalls = recall_at_k(gallery_labels.to(idx.device)[idx], query_labels.to(idx.device), ks=ks)
    return recalls, sims, idx


def chance_recall_at_1(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> float:
    """R@1 (percent) of a retrieval that ranks the gallery at random: the mean over queries of
    the share of gallery videos with the query's class (1 / C for a class-balanced gallery).

    query_labels int64 (Q,), gallery_labels int64 (G,), G >= 1.
    """
    if gallery_labels.numel() == 0:
        raise ValueError("chance_recall_at_1: the gallery is empty")
    labels = torch.cat([query_labels.flatten(), gallery_labels.flatten()]).long()
    share = torch.bincount(gallery_labels.long(), minlength=int(labels.max()) + 1).double() / gallery_labels.numel()
    return float(share[query_labels.long()].mean() * 100)

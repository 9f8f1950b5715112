"""Retrieval protocol on hand-made feature sets with hand-computed recalls."""

from __future__ import annotations

import pytest
import torch

from dali_fame.eval.retrieval import (
    center_and_normalize,
    evaluate_retrieval,
    nearest_neighbors,
    recall_at_k,
)

# Gallery: after removing its own mean, four unit vectors at 0, 90, 180, 270 degrees, classes
# 0..3; every row carries the offset (5, 5), which only centring by the gallery's mean removes.
GALLERY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) + torch.tensor([5.0, 5.0])
GALLERY_LABELS = torch.tensor([0, 1, 2, 3])
# Queries (their own mean is (-3, 7), a different offset): near 0 deg (class 0: nearest is g0,
# rank 1), near 90 deg (class 2: order g1, g0, g2 -> rank 3), near 180 deg (class 3: order g2,
# g3 -> rank 2), near 270 deg (class 1: g1 is the farthest -> rank 4).
QUERIES = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, -0.1], [-0.1, -1.0]]) + torch.tensor([-3.0, 7.0])
QUERY_LABELS = torch.tensor([0, 2, 3, 1])


def test_recalls_match_the_hand_computed_ranks():
    recalls, sims, idx = evaluate_retrieval(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2, 3, 5), keep=4)
    # hits first at ranks 1, 3, 2, 4 -> R@1 1/4, R@2 2/4, R@3 3/4; k = 5 > gallery size uses all 4
    assert recalls == pytest.approx({"R@1": 25.0, "R@2": 50.0, "R@3": 75.0, "R@5": 100.0})
    assert idx.tolist() == [[0, 1, 3, 2], [1, 0, 2, 3], [2, 3, 1, 0], [3, 2, 0, 1]]
    # q1 ~ (0.0995, 0.995): cosines with g1, g0 are 0.995, 0.0995 (ties across the diagonal
    # are impossible here, so the order is unambiguous)
    assert sims[1, :2].tolist() == pytest.approx([0.99504, 0.09950], abs=1e-4)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])


def test_each_set_is_centred_by_its_own_mean():
    # Without centring the common offsets dominate: every query then ranks the gallery alike.
    q = torch.nn.functional.normalize(QUERIES, dim=1)
    g = torch.nn.functional.normalize(GALLERY, dim=1)
    _, raw = nearest_neighbors(q, g, k=4)
    assert len({tuple(r) for r in raw.tolist()}) == 1
    # centring both sets with the *gallery's* mean (one shared mean) also breaks the protocol
    shared = center_and_normalize(torch.cat([GALLERY, QUERIES]))
    _, mixed = nearest_neighbors(shared[4:], shared[:4], k=4)
    _, _, own = evaluate_retrieval(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, keep=4)
    assert mixed.tolist() != own.tolist()
    centred = center_and_normalize(QUERIES)
    assert torch.allclose(centred.norm(dim=1), torch.ones(4))


def test_recall_counts_any_neighbour_of_the_query_class():
    neighbor_labels = torch.tensor([[1, 0, 0], [2, 2, 1], [0, 1, 2], [3, 3, 3]])
    # first hit positions: 2, 3, 3, none
    recalls = recall_at_k(neighbor_labels, torch.tensor([0, 1, 2, 0]), ks=(1, 2, 3, 50))
    assert recalls == pytest.approx({"R@1": 0.0, "R@2": 25.0, "R@3": 75.0, "R@50": 75.0})


def test_nearest_neighbors_chunks_give_the_same_answer():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(37, 8, generator=gen), torch.randn(23, 8, generator=gen)
    s1, i1 = nearest_neighbors(q, g, k=50)
    s2, i2 = nearest_neighbors(q, g, k=50, chunk=5)
    assert i1.shape == (37, 23) and torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)  # matmul blocking may differ in the last bit
    with pytest.raises(ValueError, match="feature sizes"):
        nearest_neighbors(q, torch.randn(3, 4), k=1)


def test_chance_recall_at_1_is_the_share_of_the_querys_class_in_the_gallery():
    from dali_fame.eval.retrieval import chance_recall_at_1

    gallery = torch.tensor([0, 0, 0, 1])  # class 0: 3 of 4, class 1: 1 of 4, class 2: none
    assert chance_recall_at_1(torch.tensor([0, 1]), gallery) == pytest.approx(50.0)
    assert chance_recall_at_1(torch.tensor([2]), gallery) == 0.0
    assert chance_recall_at_1(torch.tensor([0, 1, 2, 3]), torch.arange(4).repeat(3)) == pytest.approx(25.0)

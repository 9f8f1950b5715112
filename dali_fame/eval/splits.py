"""Train and test splits that really are disjoint, or a seeded hold-out for data without one.

A bare folder of class folders, or a CSV without a split column, gives every split the same
videos (:mod:`dali_fame.data.readers`): an evaluation would then test on its own training
videos (retrieval on 6 videos with a random encoder scores R@1 = 100). So the evaluation
scripts call :func:`resolve_eval_splits` at start-up, before any video is decoded: overlapping
splits are refused with a message saying how to provide a split, unless ``eval.holdout`` asks
for a deterministic per-class hold-out of such data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Appended to the hold-out generator's seed words (see plan.py: trailing zeros would vanish).
_HOLDOUT_SALT = 0x686F6C64  # "hold"

HOW_TO_SPLIT = (
    "give the data a split: split folders (ROOT/train/<class>/..., ROOT/test/<class>/...), the "
    "official split files (--dataset-format ucf101 / hmdb51 / kinetics400 / ssv2 with "
    "data.annotation_dir), a split column in the CSV (path,label,split), or, for data that has "
    "none, a seeded per-class hold-out: --set eval.holdout=0.2"
)


def holdout_indices(labels: list[int], *, fraction: float, seed: int) -> np.ndarray:
    """Which videos a per-class hold-out puts in the test split.

    Per class (videos in their listed order), ``round(fraction * n)`` videos, at least 1 and at
    most ``n - 1``, chosen by ``PCG64([seed, label, salt])``: a pure function of the labels,
    the fraction and the seed, so every process and every rerun holds out the same videos.

    Args:
        labels: the class of each video, in record order.
        fraction: in (0, 1).
        seed: the hold-out seed.

    Returns:
        bool ``(len(labels),)``: True = test.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"eval.holdout must be in (0, 1), got {fraction}")
    labels_a = np.asarray(labels, dtype=np.int64)
    test = np.zeros(len(labels_a), dtype=bool)
    for label in np.unique(labels_a):
        members = np.flatnonzero(labels_a == label)
        if len(members) < 2:
            continue  # a one-video class stays in training: it cannot be both
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        rng = np.random.Generator(np.random.PCG64([int(seed), int(label), _HOLDOUT_SALT]))
        test[members[rng.permutation(len(members))[:k]]] = True
    return test


def resolve_eval_splits(train, test, *, holdout: float = 0.0, seed: int = 0, same_split: bool = False):
    """Check (or make) a disjoint train / test pair of :class:`~dali_fame.engine.data.SplitData`.

    Args:
        train, test: the two splits as read (``records`` with ``.path`` and ``.label``).
        holdout: 0 = use the splits as given; in (0, 1) = the data has no split (both lists
            hold the same videos) and this fraction of each class becomes the test split.
        seed: the hold-out seed.
        same_split: the config names one split for both (``eval.test_split`` equal to
            ``eval.train_split``): testing on the training videos was asked for explicitly (a
            sanity check of fitting, not a result), so overlap is allowed.

    Returns:
        ``(train, test)``: the same objects, or copies holding the hold-out's records.

    Raises:
        ValueError: the splits share videos (and no hold-out was asked for), or a hold-out was
            asked for data that already has a split.
    """
    train_paths = [r.path for r in train.records]
    test_paths = [r.path for r in test.records]
    shared = set(train_paths) & set(test_paths)
    if holdout:
        if set(train_paths) != set(test_paths):
            raise ValueError(
                f"eval.holdout={holdout} is for data without a split, but the train and test "
                f"splits of {train.root} differ ({len(shared)} shared videos): unset eval.holdout"
            )
        is_test = holdout_indices([r.label for r in train.records], fraction=holdout, seed=seed)
        keep_train = [r for r, t in zip(train.records, is_test) if not t]
        keep_test = [r for r, t in zip(train.records, is_test) if t]
        return (dataclasses.replace(train, records=keep_train),
                dataclasses.replace(test, records=keep_test))
    if shared and not same_split:
        example = min(shared)
        raise ValueError(
            f"the test split shares {len(shared)} of its {len(test_paths)} videos with the "
            f"training split (e.g. {example}): the evaluation would test on its own training "
            f"videos. The data in {train.root} has no split ({train.format}); {HOW_TO_SPLIT}"
        )
    return train, test

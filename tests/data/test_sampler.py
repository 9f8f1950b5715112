"""Clip sampler: determinism, ranges, uniformity, short videos, eval spacing, rank sharding."""

from __future__ import annotations

import numpy as np
import pytest

from dali_fame.data.sampler import (
    clip_span,
    eval_clip_indices,
    is_short,
    shard_indices,
    steps_per_epoch,
    train_clip_indices,
)


def test_clip_span_and_is_short():
    assert clip_span(clip_len=16, stride=2) == 31
    assert clip_span(clip_len=8, stride=1) == 8
    assert is_short(30, clip_len=16, stride=2)
    assert not is_short(31, clip_len=16, stride=2)
    with pytest.raises(ValueError, match="num_frames"):
        is_short(0)


def test_train_indices_deterministic_and_pure():
    kw = {"video_index": 7, "epoch": 3, "seed": 11}
    a = train_clip_indices(200, **kw)
    b = train_clip_indices(200, **kw)
    assert a.dtype == np.int64 and a.shape == (2, 16)
    np.testing.assert_array_equal(a, b)
    # resuming at an epoch replays it, whatever was drawn before
    for e in range(5):
        train_clip_indices(200, video_index=7, epoch=e, seed=11)
    np.testing.assert_array_equal(train_clip_indices(200, **kw), a)
    # each of (epoch, video_index, seed) changes the draw
    starts = {
        tuple(train_clip_indices(200, video_index=v, epoch=e, seed=s)[:, 0])
        for v, e, s in [(7, 3, 11), (8, 3, 11), (7, 4, 11), (7, 3, 12)]
    }
    assert len(starts) == 4


def test_train_indices_ranges_and_stride():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(31, 400))
        idx = train_clip_indices(n, video_index=int(rng.integers(1000)), epoch=0, seed=1)
        assert idx.min() >= 0 and idx.max() <= n - 1
        np.testing.assert_array_equal(np.diff(idx, axis=1), 2)  # no clamping needed
    idx = train_clip_indices(50, video_index=0, epoch=0, seed=0, clip_len=8, stride=3)
    assert idx.shape == (2, 8)
    np.testing.assert_array_equal(np.diff(idx, axis=1), 3)


def test_train_starts_uniform_and_views_independent():
    # 40 frames, span 31 -> 10 valid starts; 3000 epochs x 2 views
    n, epochs = 40, 3000
    starts = np.stack(
        [train_clip_indices(n, video_index=5, epoch=e, seed=0)[:, 0] for e in range(epochs)]
    )
    assert starts.min() == 0 and starts.max() == 9
    for view in range(2):
        counts = np.bincount(starts[:, view], minlength=10)
        expected = epochs / 10
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 27.9, (view, counts)  # 9 dof, p = 0.001
    joint = np.bincount(starts[:, 0] * 10 + starts[:, 1], minlength=100)
    expected = epochs / 100
    chi2 = ((joint - expected) ** 2 / expected).sum()
    assert chi2 < 148.2, joint  # 99 dof, p = 0.001
    # same video over epochs and different videos in one epoch cover the starts alike
    across = np.array(
        [train_clip_indices(n, video_index=v, epoch=0, seed=0)[0, 0] for v in range(3000)]
    )
    counts = np.bincount(across, minlength=10)
    assert ((counts - 300) ** 2 / 300).sum() < 27.9, counts


def test_short_video_repeats_last_frame():
    for n in (1, 2, 17, 30):
        idx = train_clip_indices(n, video_index=3, epoch=2, seed=5)
        assert is_short(n)
        expected = np.minimum(np.arange(16) * 2, n - 1)
        np.testing.assert_array_equal(idx, np.stack([expected, expected]))
    exact = train_clip_indices(31, video_index=3, epoch=2, seed=5)
    np.testing.assert_array_equal(exact[0], np.arange(16) * 2)


def test_third_view_other_timestamp_and_prefix_stable():
    for v in range(300):
        two = train_clip_indices(100, video_index=v, epoch=1, seed=2)
        three = train_clip_indices(100, video_index=v, epoch=1, seed=2, num_views=3)
        np.testing.assert_array_equal(three[:2], two)
        assert three[2, 0] != three[0, 0]
    # two valid starts: the third view must take the other one
    for v in range(50):
        idx = train_clip_indices(32, video_index=v, epoch=0, seed=0, num_views=3)
        assert {idx[0, 0], idx[2, 0]} == {0, 1}
    # third start is uniform over the other starts
    thirds = [
        train_clip_indices(35, video_index=v, epoch=0, seed=0, num_views=3)[[0, 2], 0]
        for v in range(2000)
    ]
    offsets = np.array([(t - s) % 5 for s, t in thirds])
    counts = np.bincount(offsets, minlength=5)
    assert counts[0] == 0
    assert ((counts[1:] - 500) ** 2 / 500).sum() < 16.3, counts  # 3 dof, p = 0.001


def test_train_indices_reject_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        train_clip_indices(0, video_index=0, epoch=0, seed=0)
    with pytest.raises(ValueError, match="epoch"):
        train_clip_indices(10, video_index=0, epoch=-1, seed=0)
    with pytest.raises(ValueError, match="num_views"):
        train_clip_indices(10, video_index=0, epoch=0, seed=0, num_views=0)
    with pytest.raises(ValueError, match="stride"):
        train_clip_indices(10, video_index=0, epoch=0, seed=0, stride=0)


@pytest.mark.parametrize("n", [31, 32, 40, 100, 257])
def test_eval_clips_uniformly_spaced(n):
    idx = eval_clip_indices(n)
    assert idx.shape == (10, 16) and idx.dtype == np.int64
    starts = idx[:, 0]
    assert starts[0] == 0 and starts[-1] == n - 31
    assert np.all(np.diff(starts) >= 0)
    ideal = np.arange(10) * (n - 31) / 9
    assert np.abs(starts - ideal).max() <= 0.5
    assert idx.max() <= n - 1
    np.testing.assert_array_equal(np.diff(idx, axis=1), 2)


def test_eval_clips_short_and_single():
    idx = eval_clip_indices(12)
    expected = np.minimum(np.arange(16) * 2, 11)
    np.testing.assert_array_equal(idx, np.tile(expected, (10, 1)))
    one = eval_clip_indices(131, num_clips=1)
    assert one.shape == (1, 16) and one[0, 0] == 50  # centred: (131 - 31) // 2
    assert eval_clip_indices(64, num_clips=3, clip_len=4, stride=1)[:, 0].tolist() == [0, 30, 60]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_videos", [0, 1, 2, 5, 7, 64, 101])
def test_shards_cover_every_video_exactly_once(num_videos, world_size):
    for epoch in (0, 1):
        shards = [
            shard_indices(num_videos, epoch=epoch, seed=3, rank=r, world_size=world_size)
            for r in range(world_size)
        ]
        allv = np.concatenate(shards)
        assert allv.dtype == np.int64
        assert sorted(allv.tolist()) == list(range(num_videos))  # no overlap, nothing missing
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)


def test_shards_shuffle_per_epoch_and_deterministic():
    a0 = shard_indices(100, epoch=0, seed=1, rank=1, world_size=2)
    np.testing.assert_array_equal(a0, shard_indices(100, epoch=0, seed=1, rank=1, world_size=2))
    a1 = shard_indices(100, epoch=1, seed=1, rank=1, world_size=2)
    assert not np.array_equal(a0, a1)
    assert set(a0.tolist()) != set(a1.tolist())  # membership changes too, not just the order
    plain = shard_indices(10, epoch=5, seed=1, rank=1, world_size=3, shuffle=False)
    assert plain.tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match="rank"):
        shard_indices(10, epoch=0, seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("num_videos", [0, 5, 63, 64, 65, 100, 1001])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_steps_per_epoch_matches_shards(num_videos, world_size, batch_size):
    sizes = [
        len(shard_indices(num_videos, epoch=0, seed=0, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    train = steps_per_epoch(num_videos, world_size=world_size, batch_size=batch_size)
    # every rank holds that many full batches, and no rank could take one more on all ranks
    assert all(s >= train * batch_size for s in sizes)
    assert min(sizes) < (train + 1) * batch_size
    skipped = num_videos - world_size * train * batch_size
    assert 0 <= skipped < world_size * (batch_size + 1)
    evaluate = steps_per_epoch(
        num_videos, world_size=world_size, batch_size=batch_size, drop_last=False
    )
    assert evaluate == max(-(-s // batch_size) for s in sizes)

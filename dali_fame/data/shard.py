"""The per-rank batch order both loaders follow (a torch ``Sampler`` over the shared shards)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from dali_fame.data.sampler import shard_indices, steps_per_epoch


class ShardBatchSampler(torch.utils.data.Sampler):
    """Yields batches of ``(epoch, position, video_index)`` keys from this rank's shard.

    ``position`` is the video's place in :meth:`shard` (what seeds its substitute, see
    :func:`~dali_fame.data.ledger.substitute_candidates`).

    The shard and its order are :func:`~dali_fame.data.sampler.shard_indices` (a pure function
    of ``(seed, epoch, rank, world_size)``); call :meth:`set_epoch` before each epoch, as with
    ``DistributedSampler``. With ``drop_last`` every rank yields the same number of batches,
    :func:`~dali_fame.data.sampler.steps_per_epoch` (DDP needs equal step counts; the few
    videos left over differ every epoch); without it, every video of the shard is visited.
    """

    def __init__(
        self, num_videos: int, *, batch_size: int, seed: int, rank: int = 0,
        world_size: int = 1, shuffle: bool = True, drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_videos = int(num_videos)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` skips its first batches without loading them
        (resuming mid-epoch: the same batches as an uninterrupted run, from there on)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def shard(self) -> np.ndarray:
        """int64 ``(n,)`` every video index of this rank's shard this epoch, in order (also
        the ones ``drop_last`` leaves out: they may stand in for a failed video)."""
        return np.asarray(
            shard_indices(
                self.num_videos, epoch=self.epoch, seed=self.seed, rank=self.rank,
                world_size=self.world_size, shuffle=self.shuffle,
            ),
            dtype=np.int64,
        )

    def indices(self) -> np.ndarray:
        """int64 ``(n,)`` video indices this rank visits in the current epoch, in order."""
        shard = self.shard()
        if self.drop_last:
            shard = shard[: len(self) * self.batch_size]
        return shard

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches of shard positions, from ``start_batch`` on (the last may be
        short without drop_last); ``shard()[positions]`` are their videos."""
        n, b = len(self.indices()), self.batch_size
        return [np.arange(i, min(i + b, n), dtype=np.int64)
                for i in range(self.start_batch * b, n, b)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, shard = self.epoch, self.shard()
        for positions in self.batches():
            yield [(epoch, int(p), int(shard[p])) for p in positions]

    def __len__(self) -> int:
        """Batches in a whole epoch (``start_batch`` does not change it)."""
        if self.drop_last:
            return steps_per_epoch(self.num_videos, world_size=self.world_size,
                                   batch_size=self.batch_size, drop_last=True)
        shard = math.ceil(max(self.num_videos - self.rank, 0) / self.world_size)
        return math.ceil(shard / self.batch_size)

"""What a loader does when a video fails mid-epoch: replace it, report it once, count it.

The index validated every file, but files still go bad during a run (a disk, a copy cut short,
a file rewritten in place with the same size and mtime). Both loaders then do the same thing:

* the failed video's place in its batch is taken by a **substitute** from the same shard, the
  first healthy video of :func:`substitute_candidates` (a pure function of seed, epoch and the
  position in the shard), so every rank still yields exactly ``len(loader)`` full batches and
  DDP ranks never wait on each other; a rerun with the same bad files gives the same batches;
* the failure is **reported once** by path and reason (a warning the first time that file
  fails; later failures of the same file are counted, not repeated);
* it is **counted** in :class:`VideoLedger`: per epoch ``visited == delivered + replaced``;
* when no healthy video is left to substitute, the loader raises :class:`NoHealthyVideoError`,
  which the training engine turns into the same clean stop on every rank.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

# Appended to the substitute generator's seed words, so its stream differs from the sampler's
# PCG64([seed, epoch]) shard permutation and from the per-video clip draws.
_SUBSTITUTE_SALT = 0x73756273  # "subs"


@dataclasses.dataclass(frozen=True)
class FailedVideo:
    """A video that failed at feed or decode time.

    Attributes:
        index: its position in ``records``.
        path: the file.
        reason: the error, in words (the decoder's message).
        epoch: the epoch it failed in.
    """

    index: int
    path: str
    reason: str
    epoch: int


class NoHealthyVideoError(RuntimeError):
    """Every candidate substitute of a rank's shard failed: training cannot continue."""

    @classmethod
    def for_shard(cls, failures, *, rank: int, world_size: int, epoch: int, video: int,
                  shard_size: int, named: int = 5) -> NoHealthyVideoError:
        """The error both loaders raise: the rank, the epoch, the video whose place cannot be
        filled, how many of the shard's videos failed, the first ``named`` paths and the first
        error. ``failures``: the :class:`FailedVideo` records of this shard (repeats allowed)."""
        failed: dict[int, FailedVideo] = {}
        for item in failures:
            failed.setdefault(item.index, item)
        paths = ", ".join(f.path for f in list(failed.values())[:named])
        more = len(failed) - named
        first = next(iter(failed.values()), None)
        return cls(
            f"rank {rank} of {world_size}, epoch {epoch}: video {video} failed to load and no "
            f"video of this rank's shard can replace it: {len(failed)} of its {shard_size} "
            f"videos failed: {paths}" + (f" and {more} more" if more > 0 else "")
            + (f" (first error: {first.reason})" if first else "")
        )


def substitute_candidates(
    shard: np.ndarray, *, seed: int, epoch: int, position: int
) -> np.ndarray:
    """The order in which substitutes are tried for the video at ``position`` of ``shard``.

    A permutation of the shard's *other* positions (``PCG64([seed, epoch, position, salt])``),
    mapped to their video indices: try them in order and take the first that loads. A pure
    function of its arguments, so any process (a CPU worker, the DALI loader) finds the same
    substitute for the same bad files.

    Args:
        shard: int64 ``(n,)`` the video indices this rank visits this epoch, in order (the
            whole shard, not just the part that fits in full batches: every one may stand in).
        seed, epoch: the run's seed and the epoch.
        position: the failed video's position in ``shard``.

    Returns:
        int64 ``(n - 1,)`` video indices (empty for a one-video shard).
    """
    shard = np.asarray(shard, dtype=np.int64)
    if not 0 <= position < len(shard):
        raise ValueError(f"position {position} outside a shard of {len(shard)} videos")
    rng = np.random.Generator(
        np.random.PCG64([int(seed), int(epoch), int(position), _SUBSTITUTE_SALT])
    )
    others = np.delete(np.arange(len(shard), dtype=np.int64), position)
    return shard[rng.permutation(others)]


class VideoLedger:
    """The failures of a loader and this epoch's counts.

    Attributes:
        failures: every :class:`FailedVideo`, all epochs, in the order they happened.
        stats: this epoch's counts: ``visited`` (batch places processed), ``delivered`` (places
            filled by their own video), ``replaced`` (places filled by a substitute) and
            ``short`` (places filled by a video shorter than a clip's span, whose clips repeat
            their last frame); ``visited == delivered + replaced`` always.
    """

    def __init__(self) -> None:
        self.failures: list[FailedVideo] = []
        self._reported: set[str] = set()
        self.stats: dict[str, int] = {}
        self.start_epoch()

    def start_epoch(self) -> None:
        self.stats = {"visited": 0, "delivered": 0, "replaced": 0, "short": 0}

    @property
    def bad_indices(self) -> set[int]:
        """Videos known to fail (skipped as substitutes without trying them again)."""
        return {item.index for item in self.failures}

    def fail(self, item: FailedVideo) -> None:
        """Record a failure; warn the first time this file fails."""
        self.failures.append(item)
        if item.path not in self._reported:
            self._reported.add(item.path)
            logger.warning(
                "unreadable video %s (index %d, epoch %d), replaced by another video of the "
                "same shard: %s", item.path, item.index, item.epoch, item.reason,
            )

    def count(self, *, delivered: int, replaced: int, short: int = 0) -> None:
        """Count one batch's places."""
        self.stats["visited"] += delivered + replaced
        self.stats["delivered"] += delivered
        self.stats["replaced"] += replaced
        self.stats["short"] += short

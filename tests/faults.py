"""Faults that tests inject: files that go bad after the index validated them."""

from __future__ import annotations

import os
from pathlib import Path


def damage_in_place(path: str | Path, *, keep: int = 48) -> None:
    """Overwrite all but the first ``keep`` bytes of ``path`` with zeros, keeping its size and
    mtime, so the index's cache (keyed on size and mtime) still lists it as valid. The container
    can then no longer be parsed: every decoder (PyAV, DALI cpu/mixed) fails on it."""
    path = Path(path)
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(min(keep, st.st_size))
        fh.write(b"\0" * max(st.st_size - keep, 0))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def damaged_shard(sources, root: Path, make_record, *, num_videos: int, seed: int,
                  world_size: int, positions=(0, 4, 6)):
    """``num_videos`` copies of ``sources`` (cycled) under ``root``, label = index, with the
    videos at ``positions`` of rank 0's epoch-0 shard damaged in place after their records were
    made (what the index would have listed).

    Args:
        sources: records of real videos to copy.
        make_record: ``(path, label) -> VideoRecord`` (probes the copy).

    Returns:
        ``(records, bad)``: the records and the set of damaged video indices.
    """
    import shutil

    from dali_fame.data.sampler import shard_indices

    records = []
    for i in range(num_videos):
        src = Path(sources[i % len(sources)].path)
        dst = Path(root) / f"c{i}{src.suffix}"
        shutil.copyfile(src, dst)
        records.append(make_record(dst, label=i))
    shard = shard_indices(num_videos, epoch=0, seed=seed, rank=0, world_size=world_size)
    bad = {int(shard[p]) for p in positions}
    for i in bad:
        damage_in_place(records[i].path)
    return records, bad


def expected_batches(num_videos: int, bad: set[int], *, seed: int, epoch: int, world_size: int,
                     batch_size: int, rank: int = 0) -> list[list[int]]:
    """A rank's batches by the ledger's rule, computed independently of the loaders: a bad
    video's place goes to the first healthy video of ``substitute_candidates``."""
    from dali_fame.data.ledger import substitute_candidates
    from dali_fame.data.sampler import shard_indices, steps_per_epoch

    shard = shard_indices(num_videos, epoch=epoch, seed=seed, rank=rank, world_size=world_size)
    steps = steps_per_epoch(num_videos, world_size=world_size, batch_size=batch_size)
    out = []
    for step in range(steps):
        row = []
        for p in range(step * batch_size, (step + 1) * batch_size):
            v = int(shard[p])
            if v in bad:
                v = next(int(c) for c in substitute_candidates(shard, seed=seed, epoch=epoch,
                                                               position=p) if c not in bad)
            row.append(v)
        out.append(row)
    return out

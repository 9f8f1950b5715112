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

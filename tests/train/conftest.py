"""Fixtures shared by the end-to-end training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 classes x 4 videos (12 train), 16 frames of 64 x 64, h264."""
    from dali_fame.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, num_classes=4, videos_per_class=4, num_frames=16, size=64, codec="h264",
                     progress=False, num_workers=1, overwrite=True)
    return out

"""Fixtures of the bias-benchmark tests: one tiny world (the ci preset), generated once."""

from __future__ import annotations

import pytest

from dali_fame.bias.world import WorldInfo, WorldOptions, generate_world


@pytest.fixture(scope="session")
def ci_world(tmp_path_factory) -> WorldInfo:
    """The ci-preset world (4 classes, 96 videos of 16 frames at 32 x 32; about a second)."""
    out = tmp_path_factory.mktemp("bias") / "ci_world"
    return generate_world(out, options=WorldOptions.preset("ci"), workers=2)

"""Shared test configuration.

Markers (declared in pyproject.toml): ``cuda`` needs a CUDA device and CuPy, ``dali`` needs
NVIDIA DALI importable, ``slow`` is kept out of the default suite. Nothing here touches CUDA at
import time: availability is probed lazily, once, when the first marked test is collected.
"""

from __future__ import annotations

import functools

import pytest


@functools.cache
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@functools.cache
def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401

        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device (none found)")
    skip_dali = pytest.mark.skip(reason="needs NVIDIA DALI (not importable)")
    for item in items:
        if "cuda" in item.keywords and not cuda_available():
            item.add_marker(skip_cuda)
        if "dali" in item.keywords and not dali_available():
            item.add_marker(skip_dali)

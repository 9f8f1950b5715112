"""benchmarks/bench_augment.py: the correctness gate before timing, and what it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dali_fame import augment

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_augment.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_augment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_every_implementation_and_op_side_by_side(bench, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SETTINGS, "demo", (3, 2, 16))  # a small batch: seconds, not minutes
    assert bench.main(["--settings", "demo", "--repeats", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "augment.json").read_text())
    whole = {r["implementation"]: r for r in rows if r["stage"] == "whole augmentation"}
    assert {"ClipAugment", "torchvision per clip"} <= set(whole)
    assert ("kornia VideoSequential" in whole) == (importlib.util.find_spec("kornia") is not None)
    assert whole["ClipAugment"]["vs_ClipAugment"] == 1.0
    for r in whole.values():
        assert r["shape"] == "3x2x16x16" and 0 < r["min_ms"] <= r["median_ms"]
        assert r["max_abs_err_vs_torchvision"] < 2e-4
        ratio = r["median_ms"] / whole["ClipAugment"]["median_ms"]
        assert r["vs_ClipAugment"] == pytest.approx(ratio)
    ops = [r["stage"] for r in rows if r["implementation"] == "ClipAugment op"]
    assert {"hue", "blur", "contrast", "saturation", "brightness", "grayscale"} <= set(ops)
    md = (tmp_path / "augment.md").read_text()
    assert "| demo | 3x2x16x16 | cpu | torchvision per clip | whole augmentation |" in md
    assert "command: `python benchmarks/bench_augment.py --settings demo" in md


def test_a_wrong_op_stops_the_benchmark_before_timing(bench, tmp_path, monkeypatch):
    # ClipAugment's jitter ops are looked up in _JITTER_OPS: a hue that does nothing must be
    # caught by the torchvision comparison, and nothing is written
    monkeypatch.setitem(bench.SETTINGS, "demo", (6, 2, 16))
    broken = (*augment._JITTER_OPS[:3], lambda x, shift: x)
    monkeypatch.setattr(augment, "_JITTER_OPS", broken)
    with pytest.raises(AssertionError):
        bench.main(["--settings", "demo", "--repeats", "1", "--out", str(tmp_path)])
    assert not (tmp_path / "augment.json").exists()

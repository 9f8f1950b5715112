"""Evaluations refuse to test on their training videos; the seeded hold-out for split-less data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dali_fame.eval.splits import holdout_indices, resolve_eval_splits

REPO = Path(__file__).resolve().parents[2]


def test_holdout_is_per_class_seeded_and_keeps_both_sides():
    labels = [0] * 5 + [1] * 4 + [2] * 1
    test = holdout_indices(labels, fraction=0.25, seed=3)
    assert test.tolist() == holdout_indices(labels, fraction=0.25, seed=3).tolist()
    per_class = [int(test[np.asarray(labels) == c].sum()) for c in range(3)]
    assert per_class == [1, 1, 0]  # round(0.25 * 5) = 1, round(0.25 * 4) = 1, a lone video trains
    assert holdout_indices(labels, fraction=0.9, seed=0)[:5].sum() == 4  # at most n - 1


class _Rec:
    def __init__(self, path, label):
        self.path, self.label = path, label


class _Split:
    def __init__(self, paths, root="/data/x", fmt="folder"):
        self.records = [_Rec(p, i % 2) for i, p in enumerate(paths)]
        self.root, self.format = root, fmt


def test_overlapping_splits_are_refused_with_the_ways_to_split():
    import dataclasses

    same = [f"/v/{i}.mp4" for i in range(6)]
    with pytest.raises(ValueError, match="shares 6 of its 6 videos") as err:
        resolve_eval_splits(_Split(same), _Split(same))
    assert "split column" in str(err.value) and "eval.holdout" in str(err.value)
    a, b = _Split(same[:4]), _Split(same[4:])
    assert resolve_eval_splits(a, b) == (a, b)
    with pytest.raises(ValueError, match="unset eval.holdout"):
        resolve_eval_splits(a, b, holdout=0.2)

    @dataclasses.dataclass
    class Split:
        records: list
        root: str = "/d"
        format: str = "folder"

    train, test = resolve_eval_splits(Split(_Split(same).records), Split(_Split(same).records),
                                      holdout=0.34, seed=0)
    assert {r.path for r in train.records}.isdisjoint(r.path for r in test.records)
    assert len(train.records) + len(test.records) == 6 and len(test.records) == 2


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    """Real videos in ROOT/<class>/<video>: a split-less folder dataset (2 classes x 4)."""
    from dali_fame.data.synthetic import generate_dataset

    base = tmp_path_factory.mktemp("folders")
    generate_dataset(base / "synth", num_classes=2, videos_per_class=4, num_frames=12, size=48,
                     codec="h264", progress=False, num_workers=1, overwrite=True)
    root = base / "videos"
    shutil.copytree(base / "synth" / "videos", root)
    return root


def _retrieval(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "train" / "retrieval.py"), "--data-root", str(root),
           "--output-dir", str(out), "--set", f"data.cache_dir={out.parent / 'cache'}",
           "--set", "data.crop=32", "--set", "data.clip_len=4", "--set", "data.workers=0",
           "--set", "eval.num_clips=2", "--pretrained", "none", "--set", "model.backbone=tiny",
           *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_retrieval_on_class_folders_refuses_then_holds_out(class_folders, tmp_path):
    proc = _retrieval(class_folders, tmp_path / "refused")
    assert proc.returncode != 0
    assert "split error" in proc.stderr and "shares 8 of its 8 videos" in proc.stderr
    assert not (tmp_path / "refused" / "results.json").exists()
    proc = _retrieval(class_folders, tmp_path / "held", "--set", "eval.holdout=0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "held" / "results.json").read_text())
    assert (res["num_queries"], res["num_gallery"]) == (2, 6)
    neighbors = json.loads((tmp_path / "held" / "neighbors.json").read_text())
    queries = {q["path"] for q in neighbors}
    assert queries.isdisjoint(n["path"] for q in neighbors for n in q["neighbors"])


def test_finetune_follows_the_released_colour_recipe_by_default_and_the_probe_never():
    from dali_fame.config import ConfigError
    from dali_fame.eval.config import load_eval_config, parse_override

    assert load_eval_config(None, task="finetune").eval.color_augment is True
    off = load_eval_config(None, task="finetune", overrides=[parse_override("eval.color_augment=false")])
    assert off.eval.color_augment is False
    assert load_eval_config(None, task="linear_probe").eval.color_augment is False
    with pytest.raises(ConfigError, match="finetuning only"):
        load_eval_config(None, task="linear_probe", overrides=[parse_override("eval.color_augment=true")])

"""The README's main job: `accelerate launch train/pretrain.py` with no arguments (slow: ~1-2 min)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_default_pretraining_runs_and_its_loss_falls(tmp_path):
    env = dict(os.environ, DALI_FAME_CACHE=str(tmp_path / "cache"))
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "train/pretrain.py", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "next:" in proc.stdout and "train/linear_probe.py" in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert len(rows) == 20
    losses = [float(r["loss"]) for r in rows]
    # epoch 0 runs against the random initial queue; from epoch 1 on the queue holds real keys
    assert sum(losses[-5:]) / 5 < losses[1] - 0.3, losses

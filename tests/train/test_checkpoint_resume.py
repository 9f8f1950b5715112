"""End-to-end: train/pretrain.py resumes past a damaged checkpoint (issue 14).

One short run writes checkpoints at steps 2 and 4; each test damages a copy of its step 4 (a
truncated model file, a missing optimizer file, a save cut off as a ``.tmp`` folder) and resumes
with ``--resume auto``: the run must say which file is wrong, fall back to step 2, replay steps 3
and 4 exactly as the first run did, and finish. ``--resume PATH`` on the damaged checkpoint must
stop at start-up, non-zero, naming the file, without a traceback. In two processes both ranks
must make the same choice (the replicas stay bit-identical and the run finishes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "train" / "pretrain.py"
BIN = Path(sys.executable).parent
LAUNCH_2 = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29523"]


def _data_args(dataset: Path, cache: Path) -> list[str]:
    return ["--data-root", str(dataset / "videos"), "--dataset-format", "ucf101",
            "--set", f"data.annotation_dir={dataset}", "--set", f"data.cache_dir={cache}",
            "--set", "data.crop=32", "--set", "data.clip_len=4", "--set", "data.workers=0"]


def _args(dataset: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--output-dir", str(run_dir), *_data_args(dataset, run_dir.parent / "cache"), "--set", "model.backbone=tiny", "--set", "train.batch_size=2", "--set", "moco.queue_size=16",
        "--set", "train.log_every=1", "--set", "train.image_every=0", "--set", "optim.schedule=cosine",
        "--set", "train.checkpoint_every_steps=2", "--epochs", "3", *extra,
    ]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **extra)
    if "ACCELERATE_USE_CPU" not in extra:
        env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(args: list[str], *, launcher: list[str] | None = None, env: dict | None = None,
         ok: bool = True) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=300,
                          check=False)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["train/loss"]) for row in rows]


def _ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def _truncate_model(ckpt: Path) -> str:
    model = ckpt / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    return "model.safetensors is 1000 bytes"


def _drop_optimizer(ckpt: Path) -> str:
    (ckpt / "optimizer.bin").unlink()
    return "optimizer.bin is missing"


def _cut_save(ckpt: Path) -> str:
    """What a run killed while saving step 4 leaves: the folder never renamed, no trainer state."""
    (ckpt / "trainer_state.json").unlink()
    ckpt.rename(ckpt.with_name(ckpt.name + ".tmp"))
    return "step_00000004.tmp is an interrupted save"


DAMAGE = {"truncated model": _truncate_model, "missing optimizer": _drop_optimizer, "tmp leftover": _cut_save}


@pytest.fixture(scope="module")
def first_run(tiny_dataset, tmp_path_factory) -> Path:
    """4 steps, checkpoints at steps 2 and 4 (6 batches of 2 per epoch: both mid-epoch)."""
    run_dir = tmp_path_factory.mktemp("first") / "run"
    _run(_args(tiny_dataset, run_dir, "--max-steps", "4"))
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step_00000002", "step_00000004"]
    return run_dir


def _copy(first_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    (run_dir / "metrics.jsonl").write_text("")  # keep only what the resumed run logs
    return run_dir


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_auto_resume_skips_a_damaged_checkpoint_and_falls_back(tiny_dataset, first_run, tmp_path, kind):
    run_dir = _copy(first_run, tmp_path)
    fault = DAMAGE[kind](_ckpt(run_dir, 4))
    proc = _run(_args(tiny_dataset, run_dir, "--max-steps", "6", "--resume", "auto"))
    log = proc.stderr
    assert f"skipping checkpoint {_ckpt(run_dir, 4)}" in log and fault in log, log[-3000:]
    assert f"resuming from {_ckpt(run_dir, 2)} instead" in log
    assert "Traceback" not in log
    # fell back to step 2: steps 3 and 4 replayed exactly as the first run took them, then 5, 6
    replayed = dict(_losses(run_dir))
    assert sorted(replayed) == [3, 4, 5, 6]
    original = dict(_losses(first_run))
    for step in (3, 4):
        assert replayed[step] == pytest.approx(original[step], rel=1e-6, abs=1e-7), step
    from dali_fame.engine.checkpoint import list_checkpoints, verify_checkpoint

    newest = list_checkpoints(run_dir)[-1]
    assert newest == _ckpt(run_dir, 6) and verify_checkpoint(newest) == []
    assert verify_checkpoint(_ckpt(run_dir, 4)) == []  # the damaged one was written again


def test_resume_path_on_a_damaged_checkpoint_stops_naming_the_file(tiny_dataset, first_run, tmp_path):
    run_dir = _copy(first_run, tmp_path)
    fault = _truncate_model(_ckpt(run_dir, 4))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    proc = _run(_args(tiny_dataset, run_dir, "--max-steps", "6", "--resume", str(_ckpt(run_dir, 4))), ok=False)
    assert proc.returncode != 0
    assert str(_ckpt(run_dir, 4)) in proc.stderr and fault in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_two_processes_fall_back_to_the_same_checkpoint(tiny_dataset, tmp_path):
    run_dir = tmp_path / "ddp"
    env = _env(ACCELERATE_USE_CPU="true")
    _run(_args(tiny_dataset, run_dir, "--max-steps", "4"), launcher=LAUNCH_2, env=env)
    first = dict(_losses(run_dir))
    fault = _truncate_model(_ckpt(run_dir, 4))
    (run_dir / "metrics.jsonl").write_text("")
    proc = _run(_args(tiny_dataset, run_dir, "--max-steps", "6", "--resume", "auto"), launcher=LAUNCH_2, env=env)
    assert fault in proc.stderr and f"resuming from {_ckpt(run_dir, 2)} instead" in proc.stderr
    replayed = dict(_losses(run_dir))
    assert sorted(replayed) == [3, 4, 5, 6]
    for step in (3, 4):
        assert replayed[step] == pytest.approx(first[step], rel=1e-6, abs=1e-7), step
    replicas = json.loads((run_dir / "replicas.json").read_text())
    assert len(replicas["fingerprints"]) == 2 and replicas["in_sync"], replicas


def test_evaluations_skip_or_refuse_a_damaged_pretrained_checkpoint(tiny_dataset, first_run, tmp_path):
    run_dir = _copy(first_run, tmp_path)
    fault = _truncate_model(_ckpt(run_dir, 4))
    retrieval = REPO / "train" / "retrieval.py"
    common = [*_data_args(tiny_dataset, tmp_path / "cache"), "--set", "eval.batch_size=4", "--set", "eval.num_clips=2"]
    cmd = [sys.executable, str(retrieval), "--output-dir", str(tmp_path / "r1"), *common]
    proc = subprocess.run([*cmd, "--pretrained", str(run_dir / "checkpoints")], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping checkpoint {_ckpt(run_dir, 4)}: {fault}" in proc.stderr
    assert json.loads((tmp_path / "r1" / "results.json").read_text())["weights"]["source"] == str(_ckpt(run_dir, 2))
    proc = subprocess.run([*cmd, "--pretrained", str(_ckpt(run_dir, 4))], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(_ckpt(run_dir, 4)) in proc.stderr and fault in proc.stderr

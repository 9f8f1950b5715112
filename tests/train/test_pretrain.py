"""End-to-end tests of train/pretrain.py: real videos, real processes, real checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "train" / "pretrain.py"
BIN = Path(sys.executable).parent


def _args(dataset: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--output-dir", str(run_dir), "--data-root", str(dataset / "videos"), "--dataset-format", "ucf101",
        "--set", f"data.annotation_dir={dataset}", "--set", f"data.cache_dir={run_dir.parent / 'cache'}",
        "--set", "data.crop=32", "--set", "data.clip_len=4", "--set", "data.workers=0",
        "--set", "model.backbone=tiny", "--set", "train.batch_size=4", "--set", "moco.queue_size=16",
        "--set", "train.log_every=1", "--set", "train.image_every=0", "--set", "optim.schedule=cosine",
        *extra,
    ]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(args: list[str], *, launcher: list[str] | None = None, env: dict | None = None, timeout=300):
    cmd = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows}


def test_resume_is_exact(tiny_dataset, tmp_path):
    straight = tmp_path / "straight"
    _run(_args(tiny_dataset, straight, "--epochs", "2"))
    halves = tmp_path / "halves"
    _run(_args(tiny_dataset, halves, "--epochs", "2", "--max-steps", "3"))
    assert sorted(_losses(halves)) == [1, 2, 3]
    refused = subprocess.run([sys.executable, str(SCRIPT), *_args(tiny_dataset, halves, "--epochs", "2")],
                             cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "already holds checkpoints" in refused.stderr
    _run(_args(tiny_dataset, halves, "--epochs", "2", "--resume", "auto"))
    a, b = _losses(straight), _losses(halves)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), f"step {step}: {a[step]} vs {b[step]}"
    # the summary has one row per epoch, and the resolved config sits next to the run
    summary = (halves / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("epoch,step,loss") and len(summary) == 3
    assert "backbone: tiny" in (halves / "config.yaml").read_text()


def test_sigterm_saves_a_loadable_checkpoint(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), *_args(tiny_dataset, run_dir, "--epochs", "200")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "received SIGTERM: checkpoint saved" in out
    from dali_fame.engine.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    assert ckpts, out[-2000:]
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())["trainer_state"]
    stopped_at = state["step"]
    assert stopped_at >= 4 and state["epoch"] * 3 + state["batch_in_epoch"] == stopped_at
    _run(_args(tiny_dataset, run_dir, "--epochs", "200", "--max-steps", str(stopped_at + 2), "--resume", "auto"))
    steps = sorted(_losses(run_dir))
    assert steps[-1] == stopped_at + 2 and steps.count(stopped_at + 1) == 1


def test_two_process_ddp_keeps_replicas_identical(tiny_dataset, tmp_path):
    run_dir = tmp_path / "ddp"
    env = dict(_env(), ACCELERATE_USE_CPU="true")
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29517"]
    _run(_args(tiny_dataset, run_dir, "--max-steps", "4"), launcher=launcher, env=env)
    replicas = json.loads((run_dir / "replicas.json").read_text())
    assert len(replicas["fingerprints"]) == 2, "expected two processes"
    assert replicas["in_sync"] and replicas["fingerprints"][0] == replicas["fingerprints"][1]
    assert sorted(_losses(run_dir)) == [1, 2, 3, 4]


def test_bad_config_value_fails_at_start_naming_the_setting(tiny_dataset, tmp_path):
    cmd = [sys.executable, str(SCRIPT), *_args(tiny_dataset, tmp_path / "bad", "--set", "debias.beta=1.5")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "debias.beta" in proc.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("options", [
    ["--set", "debias.method=be"],
    ["--set", "debias.background=intra", "--set", "debias.views=both"],
    ["--set", "debias.method=none"],
])
def test_debias_choices_train(tiny_dataset, tmp_path, options):
    run_dir = tmp_path / "run"
    _run(_args(tiny_dataset, run_dir, "--max-steps", "2", *options))
    losses = _losses(run_dir)
    assert sorted(losses) == [1, 2] and all(v == v and v > 0 for v in losses.values())


def test_non_finite_loss_stops_naming_the_step(tiny_dataset, tmp_path):
    run_dir = tmp_path / "nan"
    cmd = [sys.executable, str(SCRIPT), *_args(tiny_dataset, run_dir, "--epochs", "3",
                                                 "--set", "optim.lr=1e38", "--set", "optim.weight_decay=0")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "non-finite loss at step" in proc.stderr
    from dali_fame.engine.checkpoint import list_checkpoints

    for ckpt in list_checkpoints(run_dir):  # whatever was saved was saved before the bad step
        step = json.loads((ckpt / "trainer_state.json").read_text())["trainer_state"]["step"]
        assert f"non-finite loss at step {step} " not in proc.stderr


def test_bad_files_in_data_root_are_reported_and_skipped(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "folder"
    shutil.copytree(tiny_dataset / "videos", root)
    first_class = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first_class / "empty.mp4").write_bytes(b"")
    (first_class / "notes.mp4").write_text("this is not a video\n")
    run_dir = tmp_path / "run"
    args = _args(tiny_dataset, run_dir, "--max-steps", "2")
    args[args.index("--data-root") + 1] = str(root)
    args[args.index("--dataset-format") + 1] = "folder"
    proc = _run(args)
    log = proc.stderr
    assert "empty.mp4" in log and "notes.mp4" in log, log[-3000:]
    assert sorted(_losses(run_dir)) == [1, 2]


def test_legacy_enqueue_reaches_moco_from_the_command_line(tiny_dataset, tmp_path, monkeypatch):
    """moco.legacy_enqueue (the released code's enqueue order) is a setting, not dead code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = []

    class Recording(module.MoCo):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["legacy_enqueue"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(module, "MoCo", Recording)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for flag, run in (("true", "legacy"), ("false", "fixed")):
        assert module.main(_args(tiny_dataset, tmp_path / run, "--max-steps", "1",
                                 "--set", f"moco.legacy_enqueue={flag}")) == 0
    assert seen == [True, False]

"""2-process CPU DDP runs of train/pretrain.py where one rank alone meets trouble: videos that go
bad after indexing, a signal to one process, a rank whose whole shard is unreadable. Every rank
must take the same decision (issue 9): the same step count, the same checkpoint, the same exit,
never a hang."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from faults import damage_in_place  # tests/faults.py (tests/ is on sys.path via conftest)
from test_pretrain import BIN, REPO, SCRIPT, _args, _env, _losses  # same tiny-run settings

SEED = 0
STEPS_PER_EPOCH = 6  # 12 training videos, 2 processes, 1 video per process per batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(dataset: Path, run_dir: Path, *extra: str) -> list[str]:
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    return [*launcher, str(SCRIPT), *_args(dataset, run_dir, "--seed", str(SEED), "--set", "train.batch_size=2", *extra)]


def _ddp_env() -> dict:
    return dict(_env(), ACCELERATE_USE_CPU="true")


def _run(cmd: list[str], *, timeout: int) -> subprocess.CompletedProcess:
    """Run to the end (the exit code is the test's to check); a hang fails with TimeoutExpired."""
    return subprocess.run(cmd, check=False, cwd=REPO, env=_ddp_env(), capture_output=True, text=True,
                          timeout=timeout)


def _make_dataset(out: Path, codec: str) -> Path:
    """4 classes x 4 videos (12 train), 16 frames of 64 x 64."""
    from dali_fame.data.synthetic import generate_dataset

    generate_dataset(out, num_classes=4, videos_per_class=4, num_frames=16, size=64, codec=codec,
                     progress=False, num_workers=1, overwrite=True)
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("synth_h264"), "h264")


def _indexed_copy(source: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of ``source`` indexed the way pretrain.py indexes it (the probe cache sits where
    ``_args`` points data.cache_dir); returns the copy and its training videos in record order."""
    from dali_fame.data.index import build_index

    dataset = tmp_path / "data"
    shutil.copytree(source, dataset)
    result = build_index(dataset / "videos", format="ucf101", split="train", annotation_dir=dataset,
                         cache_dir=tmp_path / "cache" / "index", clip_len=4, stride=2, workers=1, progress=False)
    paths = [r.path for r in result.records]
    assert len(paths) == 12 and not result.excluded
    return dataset, paths


def _shard(epoch: int, rank: int) -> list[int]:
    from dali_fame.data.sampler import shard_indices

    return [int(i) for i in shard_indices(12, epoch=epoch, seed=SEED, rank=rank, world_size=2)]


def _check_replaced_run(proc: subprocess.CompletedProcess, run_dir: Path, bad: list[str]) -> None:
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    # both ranks ran every step of both epochs: they stayed in step (or the run would hang) and
    # their replicas are identical
    assert sorted(_losses(run_dir)) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    replicas = json.loads((run_dir / "replicas.json").read_text())
    assert len(replicas["fingerprints"]) == 2 and replicas["in_sync"]
    with open(run_dir / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for row in rows:  # both ranks' ledgers: every place filled, the bad videos' by substitutes
        visited, delivered, replaced = (int(row[k]) for k in ("visited", "delivered", "replaced"))
        assert visited == 12 and visited == delivered + replaced and replaced == len(bad), row
    summary = proc.stdout[proc.stdout.index("replaced      :"):]
    assert f"{len(bad)} unreadable video(s)" in summary
    for path in bad:  # the end-of-run summary names every bad file, whichever rank met it
        assert path in summary, f"{path} not named:\n{summary}"
    # the full log holds both ranks' warnings (each rank warns for the files of its shard) and
    # the library INFO lines that stay off the console
    log = (run_dir / "log.txt").read_text()
    assert " rank 0 WARNING " in log and " rank 1 WARNING " in log
    assert all(path in log for path in bad)
    assert "Saving current state" in log and "Saving current state" not in proc.stderr


def test_videos_bad_after_indexing_are_replaced_on_both_ranks(pristine, tmp_path):
    dataset, paths = _indexed_copy(pristine, tmp_path)
    bad_ids = set(range(0, 12, 2))
    for epoch in (0, 1):  # each rank's shard keeps a healthy video to substitute with
        for rank in (0, 1):
            assert set(_shard(epoch, rank)) - bad_ids
    bad = [paths[i] for i in sorted(bad_ids)]
    for path in bad:
        damage_in_place(path)
    run_dir = tmp_path / "run"
    proc = _run(_launch(dataset, run_dir, "--epochs", "2", "--loader", "cpu"), timeout=300)
    _check_replaced_run(proc, run_dir, bad)


@pytest.mark.dali
def test_vp9_videos_bad_after_indexing_are_replaced_by_the_dali_cpu_loader(tmp_path):
    dataset, paths = _indexed_copy(_make_dataset(tmp_path / "synth_vp9", "vp9"), tmp_path)
    bad = [paths[i] for i in range(0, 12, 2)]
    for path in bad:
        damage_in_place(path)
    run_dir = tmp_path / "run"
    proc = _run(_launch(dataset, run_dir, "--epochs", "2", "--loader", "dali", "--set", "data.workers=1"),
                timeout=300)
    assert "loader dali" in proc.stderr, proc.stderr[-3000:]
    _check_replaced_run(proc, run_dir, bad)


def _workers(launcher_pid: int) -> dict[int, object]:
    """The launcher's training processes by rank (psutil.Process)."""
    import psutil

    found = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if any(str(SCRIPT) in part for part in child.cmdline()):
                rank = child.environ().get("RANK")
                if rank is not None:
                    found[int(rank)] = child
        except psutil.NoSuchProcess:
            continue
    return found


def test_sigterm_to_one_rank_saves_one_checkpoint_on_both_and_resume_finishes(pristine, tmp_path):
    from dali_fame.engine.checkpoint import list_checkpoints

    epochs = 12
    total = epochs * STEPS_PER_EPOCH
    run_dir = tmp_path / "run"
    cmd = _launch(pristine, run_dir, "--epochs", str(epochs), "--loader", "cpu")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_ddp_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        workers = _workers(proc.pid)
        assert proc.poll() is None and sorted(workers) == [0, 1], "the run ended or never started"
        workers[1].send_signal(signal.SIGTERM)  # rank 1 only: not the main process, not the launcher
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-5000:]
    assert "received SIGTERM: checkpoint saved at step" in out and "(signalled: rank 1)" in out, out[-3000:]
    stopped_at = int(out.split("checkpoint saved at step ")[1].split()[0])
    assert 3 <= stopped_at < total
    newest = list_checkpoints(run_dir)[-1]
    state = json.loads((newest / "trainer_state.json").read_text())["trainer_state"]
    assert state["step"] == stopped_at
    assert state["epoch"] * STEPS_PER_EPOCH + state["batch_in_epoch"] == stopped_at
    # one checkpoint written by both ranks (accelerate saves each rank's RNG state)
    assert {p.name for p in newest.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert out.count("checkpoint saved at step") == 1

    resumed = _run([*cmd, "--resume", "auto"], timeout=300)
    assert resumed.returncode == 0, f"{resumed.stdout[-3000:]}\n{resumed.stderr[-5000:]}"
    assert f"done: {total} steps, {epochs} epochs" in resumed.stdout
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1)), "each step logged once, up to the planned total"
    replicas = json.loads((run_dir / "replicas.json").read_text())
    assert replicas["in_sync"] and len(replicas["fingerprints"]) == 2


def test_a_rank_whose_whole_shard_is_bad_stops_every_rank_with_the_same_error(pristine, tmp_path):
    dataset, paths = _indexed_copy(pristine, tmp_path)
    doomed = _shard(0, 1)  # every video rank 1 could use in epoch 0; rank 0's shard stays healthy
    for i in doomed:
        damage_in_place(paths[i])
    run_dir = tmp_path / "run"
    start = time.time()
    proc = _run(_launch(dataset, run_dir, "--epochs", "2", "--loader", "cpu"), timeout=240)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert time.time() - start < 240
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: rank 1: no healthy video left")]
    assert len(lines) == 2 and lines[0] == lines[1], proc.stderr[-5000:]  # both ranks, one message
    assert not (run_dir / "metrics.jsonl").exists()  # no step ran

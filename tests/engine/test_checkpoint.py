"""Checkpoints record what they hold; resume verifies, skips damaged ones and falls back; rotation
keeps the checkpoint just written. One CPU process, a tiny model, real ``accelerator.save_state``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from dali_fame.engine.checkpoint import (
    CheckpointError,
    TrainerState,
    check_whole,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)

CONFIG = {"model": {"backbone": "tiny"}}
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained():
    """A prepared (accelerator, model, optimizer) whose optimizer has state to save."""
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    return accelerator, model, optimizer


def _save(trained, run_dir: Path, step: int, keep: int = 10) -> Path:
    accelerator = trained[0]
    return save_checkpoint(accelerator, run_dir, TrainerState(step=step), config=CONFIG, keep=keep)


def _truncate(path: Path, keep_bytes: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


def test_a_checkpoint_records_every_file_with_its_size_and_sha256(trained, tmp_path):
    ckpt = _save(trained, tmp_path, 3)
    payload = json.loads((ckpt / "trainer_state.json").read_text())
    files = payload["files"]
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(files)
    assert "trainer_state.json" not in files
    for name, record in files.items():
        data = (ckpt / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert check_whole(ckpt / name) is None
    assert payload["trainer_state"]["step"] == 3 and payload["config"] == CONFIG
    assert verify_checkpoint(ckpt) == []
    assert not (tmp_path / "checkpoints" / "step_00000003.tmp").exists()


DAMAGE = {
    "truncated model": (lambda c: _truncate(c / "model.safetensors"),
                        r"model\.safetensors is 100 bytes, \d+ were written \(truncated\)"),
    "missing optimizer": (lambda c: (c / "optimizer.bin").unlink(), r"optimizer\.bin is missing"),
    "no trainer state": (lambda c: (c / "trainer_state.json").unlink(), r"trainer_state\.json is missing"),
    "cut trainer state": (lambda c: (c / "trainer_state.json").write_text('{"trainer_st'),
                          r"trainer_state\.json is unreadable"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_named_and_auto_falls_back_to_the_newest_good_checkpoint(trained, tmp_path, caplog, kind):
    damage, fault = DAMAGE[kind]
    good = _save(trained, tmp_path, 3)
    bad = _save(trained, tmp_path, 6)
    damage(bad)
    assert any(re.search(fault, p) for p in verify_checkpoint(bad))
    with caplog.at_level(logging.WARNING, logger="dali_fame.engine.checkpoint"):
        assert resolve_resume("auto", tmp_path) == good
    text = caplog.text
    assert str(bad) in text and re.search(fault, text)
    assert f"resuming from {good} instead" in text
    with pytest.raises(CheckpointError, match=fault):
        resolve_resume(str(bad), tmp_path)
    assert resolve_resume(str(good), tmp_path) == good
    state, config = load_checkpoint(trained[0], good)
    assert state.step == 3 and config == CONFIG


def test_a_flipped_byte_is_caught_by_the_checksum(trained, tmp_path):
    ckpt = _save(trained, tmp_path, 1)
    model = ckpt / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    assert check_whole(model) is None  # same size, header intact: only the checksum sees it
    (problem,) = verify_checkpoint(ckpt)
    assert problem.startswith("model.safetensors has the right size but not the SHA-256")


def test_a_leftover_tmp_folder_is_reported_and_skipped(trained, tmp_path, caplog):
    good = _save(trained, tmp_path, 3)
    leftover = tmp_path / "checkpoints" / "step_00000006.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="dali_fame.engine.checkpoint"):
        assert resolve_resume("auto", tmp_path) == good
    assert "step_00000006.tmp is an interrupted save" in caplog.text
    assert list_checkpoints(tmp_path) == [good]


def test_nothing_complete_starts_afresh_but_all_damaged_refuses(trained, tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # a new run
    (tmp_path / "checkpoints" / "step_00000002.tmp").mkdir(parents=True)
    assert resolve_resume("auto", tmp_path) is None  # only an interrupted first save
    ckpt = _save(trained, tmp_path, 4)
    (ckpt / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint in .* verifies .*optimizer.bin is missing"):
        resolve_resume("auto", tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_rotation_keeps_the_newest_and_a_resave_replaces_a_damaged_one(trained, tmp_path):
    for step in (1, 2, 3):
        _save(trained, tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    _truncate(tmp_path / "checkpoints" / "step_00000003" / "model.safetensors")
    assert resolve_resume("auto", tmp_path).name == "step_00000002"
    _save(trained, tmp_path, 3, keep=2)  # the resumed run reaches step 3 again
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert verify_checkpoint(tmp_path / "checkpoints" / "step_00000003") == []


def test_rotation_with_a_damaged_step_ahead_keeps_what_was_just_written(trained, tmp_path):
    for step in (2, 8):
        _save(trained, tmp_path, step, keep=5)
    (tmp_path / "checkpoints" / "step_00000008" / "optimizer.bin").unlink()
    assert resolve_resume("auto", tmp_path).name == "step_00000002"
    _save(trained, tmp_path, 3, keep=1)
    # rotating by name alone would keep only the damaged step 8; the one just written stays
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000003", "step_00000008"]
    assert resolve_resume("auto", tmp_path).name == "step_00000003"


def test_a_save_that_is_not_whole_stays_tmp_and_prunes_nothing(trained, tmp_path, monkeypatch, caplog):
    _save(trained, tmp_path, 1, keep=1)
    original = trained[0].save_state

    def short_write(path):
        original(path)
        _truncate(Path(path) / "model.safetensors")

    monkeypatch.setattr(trained[0], "save_state", short_write)
    with caplog.at_level(logging.ERROR, logger="dali_fame.engine.checkpoint"):
        _save(trained, tmp_path, 2, keep=1)
    assert "model.safetensors is 100 bytes but its header alone claims" in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert (tmp_path / "checkpoints" / "step_00000002.tmp").is_dir()
    assert resolve_resume("auto", tmp_path).name == "step_00000001"


def test_checkpoints_written_before_manifests_get_the_structural_check(tmp_path):
    ckpt = tmp_path / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.ones(64)}, str(ckpt / "model.safetensors"))
    torch.save({"state": {}}, ckpt / "optimizer.bin")
    (ckpt / "trainer_state.json").write_text(json.dumps({"trainer_state": {"step": 1}, "config": {}}))
    assert verify_checkpoint(ckpt) == []
    _truncate(ckpt / "optimizer.bin", 40)
    assert verify_checkpoint(ckpt)[0].startswith("optimizer.bin is not a whole zip archive")
    assert verify_checkpoint(ckpt, only=("model.safetensors",)) == []
    _truncate(ckpt / "model.safetensors", 60)
    assert "model.safetensors is 60 bytes but its header" in verify_checkpoint(ckpt)[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_TWO_RANKS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from accelerate import Accelerator
    import dali_fame.engine.checkpoint as ck

    accelerator = Accelerator(cpu=True)
    run_dir = Path(sys.argv[1])
    if accelerator.process_index == 1:  # a rank that would see every checkpoint as damaged
        ck.verify_checkpoint = lambda path, **kw: ["rank 1 must not decide"]
    # one write per line: with PYTHONUNBUFFERED, print() writes the text and its newline
    # separately, and the two ranks share one pipe
    try:
        chosen = ck.resolve_resume(sys.argv[2], run_dir, accelerator=accelerator)
        sys.stdout.write(f"rank {accelerator.process_index} chose {chosen.name}\\n")
    except ValueError as err:
        sys.stdout.write(f"rank {accelerator.process_index} refused: {err}\\n")
    sys.stdout.flush()
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the gloo group: exiting with it alive can abort
""")


def test_two_processes_share_the_main_process_decision(trained, tmp_path):
    _save(trained, tmp_path, 3)
    bad = _save(trained, tmp_path, 6)
    _truncate(bad / "model.safetensors")
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    for resume, expected in (("auto", "chose step_00000003"), (str(bad), "refused: --resume")):
        proc = subprocess.run([*launcher, str(script), str(tmp_path), resume], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
        assert [line.split(" ", 2)[2] for line in lines] == [lines[0].split(" ", 2)[2]] * 2, lines
        assert len(lines) == 2 and expected in lines[0] and "rank 1 must not decide" not in proc.stdout
        if resume != "auto":
            assert "model.safetensors is 100 bytes" in lines[1]

"""Atomic, rotating training checkpoints on top of ``accelerator.save_state``.

Layout of a run directory::

    RUN/checkpoints/step_00001200/      accelerate state (model, optimizer, RNG, custom objects)
    RUN/checkpoints/step_00001200/trainer_state.json   epoch, step, batch-in-epoch, config

A checkpoint is written to ``step_XXXXXXXX.tmp`` and renamed when complete, so a run killed
while saving never leaves a half-written checkpoint that ``--resume auto`` would pick.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

_NAME = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainerState:
    """Where training stands: enough to continue exactly.

    ``epoch`` is the epoch being run, ``batch_in_epoch`` how many of its batches are done (0 at
    an epoch boundary), ``step`` the global optimizer step.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (``.tmp`` leftovers are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    found = [p for p in found if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def save_checkpoint(accelerator, run_dir: str | Path, state: TrainerState, *, config: dict, keep: int) -> Path:
    """Save accelerate state + trainer state atomically; keep the newest ``keep`` checkpoints.

    Must be called on every process (accelerate writes per-process RNG states); only the main
    process renames and prunes.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f"step_{state.step:08d}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / "trainer_state.json", "w") as fh:
            json.dump({"trainer_state": asdict(state), "config": config}, fh, indent=2)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> newest checkpoint of ``run_dir`` or None; else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"--resume {resume!r} is not a checkpoint directory (no trainer_state.json)")
    return path


def load_checkpoint(accelerator, path: str | Path) -> tuple[TrainerState, dict]:
    """Restore accelerate state from ``path``; return the trainer state and the stored config."""
    path = Path(path)
    accelerator.load_state(str(path))
    with open(path / "trainer_state.json") as fh:
        payload = json.load(fh)
    return TrainerState(**payload["trainer_state"]), payload["config"]

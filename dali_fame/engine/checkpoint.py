"""Atomic, rotating, verified training checkpoints on top of ``accelerator.save_state``.

Layout of a run directory::

    RUN/checkpoints/step_00001200/      accelerate state (model, optimizer, RNG, custom objects)
    RUN/checkpoints/step_00001200/trainer_state.json   epoch, step, batch-in-epoch, config, files

A checkpoint is written to ``step_XXXXXXXX.tmp``; once accelerate has written its files, the main
process checks each is whole (a safetensors header that accounts for every byte, a zip archive
with its central directory) and records its size and SHA-256 under ``"files"`` in
``trainer_state.json``, written last; then the folder is renamed. A folder without
``trainer_state.json`` (or still named ``.tmp``) is therefore incomplete by construction.

Resuming verifies before loading (:func:`verify_checkpoint`: every recorded file present, of its
recorded size and checksum). ``--resume auto`` skips a damaged checkpoint with a warning naming
the file and the fault and falls back to the newest one that verifies; ``--resume PATH`` on a
damaged one raises :class:`CheckpointError` (a ValueError). Rotation never deletes the checkpoint
just written, so the newest checkpoint that verifies always survives it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})$")
_ANY_NAME = re.compile(r"^step_(\d{8})(\.tmp)?$")
STATE_FILE = "trainer_state.json"
_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or damaged; the message names the folder, file and fault."""


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


def _step(path: Path) -> int:
    return int(_ANY_NAME.match(path.name).group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (``.tmp`` leftovers are ignored).

    Complete means renamed and holding ``trainer_state.json``; whether the files are intact is
    :func:`verify_checkpoint`'s question.
    """
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    found = [p for p in found if (p / STATE_FILE).is_file()]
    return sorted(found, key=_step)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_whole(path: str | Path) -> str | None:
    """Cheap structural check of one file (reads its header or tail only): None if it looks whole.

    A ``.safetensors`` file must hold its 8-byte header length, a JSON header and exactly the bytes
    the header's last ``data_offsets`` claim; a zip archive (``torch.save``'s format: accelerate's
    ``optimizer.bin``, ``random_states_N.pkl``) must have its central directory, which is written
    at the end. Other files pass. Returns the fault in words.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return f"is {size} bytes: too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                return f"is {size} bytes but its header alone claims {8 + n} (truncated)"
            try:
                header = json.loads(fh.read(n))
            except ValueError:
                return "has an unreadable safetensors header"
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end != size:
                return f"is {size} bytes but its header accounts for {8 + n + end} (truncated or padded)"
            return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError) as err:
            return f"is not a whole zip archive ({err}; truncated?)"
    return None


def _manifest(folder: Path) -> dict[str, dict]:
    """``{relative posix name: {"bytes": n, "sha256": hex}}`` of every file under ``folder``."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != STATE_FILE:
            files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    return files


def _read_state(path: Path) -> tuple[dict | None, str | None]:
    meta = path / STATE_FILE
    if not meta.is_file():
        return None, f"{STATE_FILE} is missing (an interrupted save)"
    try:
        payload = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{STATE_FILE} is unreadable ({err})"
    if not isinstance(payload, dict) or not isinstance(payload.get("trainer_state"), dict):
        return None, f"{STATE_FILE} holds no trainer_state"
    return payload, None


def verify_checkpoint(path: str | Path, *, only: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """What is wrong with the checkpoint folder ``path``; an empty list means it verifies.

    Every file recorded in ``trainer_state.json`` must exist with its recorded size and SHA-256
    (this reads every byte: about a second per GB). ``only`` restricts the file checks to those
    names (the evaluations read the model alone). A checkpoint written before files were recorded
    gets the cheap :func:`check_whole` test of its files instead. Each problem reads
    ``"<file> <fault>"``.
    """
    path = Path(path)
    if path.name.endswith(".tmp"):
        return [f"{path.name} is an interrupted save (never renamed)"]
    if not path.is_dir():
        return [f"{path} is not a directory"]
    payload, problem = _read_state(path)
    if problem:
        return [problem]
    files = payload.get("files")
    problems = []
    if files is None:  # written before checkpoints recorded their files
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != STATE_FILE):
            name = file.relative_to(path).as_posix()
            if only is None or name in only:
                fault = check_whole(file)
                if fault:
                    problems.append(f"{name} {fault}")
        return problems
    if not isinstance(files, dict):
        return [f"{STATE_FILE} has an unreadable 'files' record"]
    for name, record in sorted(files.items()):
        if only is not None and name not in only:
            continue
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
            continue
        size = file.stat().st_size
        if size != record.get("bytes"):
            problems.append(f"{name} is {size} bytes, {record.get('bytes')} were written "
                            f"({'truncated' if size < record.get('bytes', 0) else 'changed'})")
        elif _sha256(file) != record.get("sha256"):
            problems.append(f"{name} has the right size but not the SHA-256 recorded when it was "
                            f"written (corrupted)")
    return problems


def save_checkpoint(accelerator, run_dir: str | Path, state: TrainerState, *, config: dict, keep: int) -> Path:
    """Save accelerate state + trainer state atomically; keep the newest ``keep`` checkpoints.

    Must be called on every process (accelerate writes per-process RNG states); only the main
    process checks, records, renames and prunes. The main process reads each file back once to
    checksum it (from the page cache, right after writing). A file that is not whole leaves the
    save as ``step_XXXXXXXX.tmp`` (never picked by resume) with an error logged, and nothing is
    pruned. Rotation deletes only checkpoints older than the one just written.
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
        faults = [f"{p.relative_to(tmp).as_posix()} {fault}" for p in sorted(tmp.rglob("*"))
                  if p.is_file() and (fault := check_whole(p))]
        if faults:
            logger.error(f"checkpoint at step {state.step} was not written whole ({'; '.join(faults)}): "
                         f"left as {tmp}, older checkpoints kept")
        else:
            payload = {"trainer_state": asdict(state), "config": config, "files": _manifest(tmp)}
            with open(tmp / STATE_FILE, "w") as fh:
                json.dump(payload, fh, indent=2)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            older = [p for p in list_checkpoints(run_dir) if _step(p) < state.step]
            for old in older[: max(len(older) - max(keep - 1, 0), 0)]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _choose(resume: str, run_dir: str | Path) -> tuple[str | None, list[str]]:
    """Main-process decision of :func:`resolve_resume`: ``(checkpoint or None, warnings)``."""
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {resume!r} is not a checkpoint directory")
        problems = verify_checkpoint(path)
        if problems:
            raise CheckpointError(f"--resume {resume!r} is damaged: {'; '.join(problems)} "
                                  f"(pick another checkpoint, or --resume auto for the newest that verifies)")
        return str(path), []
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None, []
    candidates = sorted((p for p in root.iterdir() if p.is_dir() and _ANY_NAME.match(p.name)),
                        key=lambda p: (_step(p), not p.name.endswith(".tmp")), reverse=True)
    if not candidates:
        return None, []
    notes = []
    for path in candidates:
        problems = verify_checkpoint(path)
        if not problems:
            if notes:
                notes.append(f"resuming from {path} instead, the newest checkpoint that verifies")
            return str(path), notes
        notes.append(f"skipping checkpoint {path}: {'; '.join(problems)}")
    if not list_checkpoints(run_dir):  # only interrupted saves: nothing was ever complete
        return None, notes + ["no complete checkpoint: starting afresh"]
    raise CheckpointError(f"--resume auto: no checkpoint in {root} verifies ({'; '.join(notes)}); "
                          f"move the damaged folders away to start afresh, or choose another --output-dir")


def resolve_resume(resume: str | None, run_dir: str | Path, *, accelerator=None) -> Path | None:
    """Which checkpoint to resume from, verified; ``None`` -> start afresh.

    ``resume`` None/"" -> None. ``"auto"`` -> the newest checkpoint of ``run_dir`` that verifies
    (None when the run has no checkpoint folder at all); each damaged or interrupted one newer than
    it is skipped with a warning naming the file and fault, and the fallback is announced.
    Anything else is a checkpoint folder, which must verify. Raises :class:`CheckpointError`
    (a ValueError) when the given folder is damaged, or when checkpoints exist but none verifies.

    With ``accelerator`` of several processes this is a collective call: the main process decides
    (verifying reads the files once) and broadcasts the path or the error, so every rank loads
    the same checkpoint or raises the same message; warnings are logged on the main process only.
    """
    if not resume:
        return None
    multi = accelerator is not None and accelerator.num_processes > 1
    decision: list = [None, None]  # (path, error message)
    if not multi or accelerator.is_main_process:
        try:
            chosen, notes = _choose(resume, run_dir)
            for note in notes:
                logger.warning(note)
            decision = [chosen, None]
        except CheckpointError as err:
            decision = [None, str(err)]
        except OSError as err:  # raised on the main process alone, it would leave the others waiting
            decision = [None, f"--resume {resume!r}: cannot read the checkpoints ({err})"]
    if multi:
        from accelerate.utils import broadcast_object_list

        decision = broadcast_object_list(decision, from_process=0)
    chosen, error = decision
    if error is not None:
        raise CheckpointError(error)
    return None if chosen is None else Path(chosen)


def load_checkpoint(accelerator, path: str | Path) -> tuple[TrainerState, dict]:
    """Restore accelerate state from ``path``; return the trainer state and the stored config.

    Verify first (:func:`resolve_resume`); a load that still fails raises :class:`CheckpointError`
    naming the folder.
    """
    path = Path(path)
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # e.g. SafetensorError from a checkpoint written before checksums
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(err).__name__}: {err})") from err
    payload = json.loads((path / STATE_FILE).read_text())
    return TrainerState(**payload["trainer_state"]), payload["config"]

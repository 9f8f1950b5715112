"""Loading pretrained backbones for the evaluations, with strict key accounting.

Accepted sources (``--pretrained``):

* a pretraining checkpoint directory ``RUN/checkpoints/step_XXXXXXXX/`` (accelerate state:
  ``model.safetensors`` holds the MoCo state dict, ``trainer_state.json`` the run's config);
* a run's ``checkpoints/`` directory or the run directory itself (its newest checkpoint whose
  weights verify: damaged newer ones are skipped with a warning naming the file and the fault);
* a state-dict file ``.safetensors`` / ``.pt`` / ``.pth``: ours (MoCo keys ``encoder_q.backbone.*``
  or bare backbone keys) or torchvision-style (``stem.*``, ``layer1.*``, ..., ``fc.*``), optionally
  wrapped in ``{"state_dict": ...}`` / ``{"model": ...}`` and prefixed with ``module.``;
* nothing: a randomly initialised backbone (the baseline).

A checkpoint folder's model file is verified before it is read (size and SHA-256 recorded when it
was written, :mod:`dali_fame.engine.checkpoint`); a damaged one raises
:class:`~dali_fame.engine.checkpoint.CheckpointError` (a ValueError) naming the file, and a state
dict that cannot be read raises :class:`WeightLoadError` naming it, never a bare loader traceback.

What a MoCo checkpoint holds beyond the query backbone (key encoder, projection head, queue) and
a torchvision classifier (``fc.*``) is *ignored* by design and listed as such; every other key
must match the backbone exactly. :func:`check_load` turns a :class:`LoadReport` into an error
when anything but the expected (new classifier) keys is missing or anything is unexpected.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dali_fame.engine.checkpoint import (
    STATE_FILE,
    CheckpointError,
    check_whole,
    list_checkpoints,
    verify_checkpoint,
)

logger = logging.getLogger(__name__)

STATE_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin")
_MOCO_PREFIX = "encoder_q.backbone."
_MOCO_PARTS = ("encoder_q.", "encoder_k.", "queue", "queue_ptr")


class WeightLoadError(ValueError):
    """A checkpoint does not fit the model (missing / unexpected keys); the message lists them."""


class BackboneChangedError(RuntimeError):
    """A frozen backbone's weights changed during training; the message lists the tensors."""


@dataclass
class LoadReport:
    """What loading a checkpoint into a model did.

    Attributes:
        source: the file read ("" for random init).
        kind: "moco" (our pretraining), "backbone" (bare backbone keys), "torchvision", or "none".
        config: the pretraining run's resolved config (dict) when the checkpoint carries it.
        loaded: model keys that received a tensor.
        missing: model keys the checkpoint did not provide (random init kept).
        unexpected: backbone-looking checkpoint keys the model has no place for.
        ignored: checkpoint keys dropped on purpose (key encoder, MoCo head, queue, ``fc.*``).
    """

    source: str
    kind: str
    config: dict | None = None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.kind == "none":
            return "random init (no checkpoint)"
        return (f"{self.source} ({self.kind}): {len(self.loaded)} tensors loaded, "
                f"{len(self.missing)} missing {_short(self.missing)}, "
                f"{len(self.unexpected)} unexpected {_short(self.unexpected)}, "
                f"{len(self.ignored)} ignored (key encoder / projection head / queue / fc)")

    def as_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind, "loaded": len(self.loaded),
                "missing": self.missing, "unexpected": self.unexpected, "ignored": len(self.ignored)}


def _short(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "[]"
    return "[" + ", ".join(keys[:n]) + (f", ... +{len(keys) - n}" if len(keys) > n else "") + "]"


def _weight_problems(folder: Path) -> list[str]:
    """What is wrong with the weights of a checkpoint folder (empty: they verify).

    Only what an evaluation reads is checked: the model file(s) against the sizes and SHA-256
    recorded in ``trainer_state.json`` (a missing optimizer does not matter here), or, for a
    folder without that record, their structure (:func:`~dali_fame.engine.checkpoint.check_whole`).
    """
    if folder.name.endswith(".tmp"):
        return [f"{folder.name} is an interrupted save (never renamed)"]
    if (folder / STATE_FILE).is_file():
        return verify_checkpoint(folder, only=STATE_FILES)
    return [f"{name} {fault}" for name in STATE_FILES
            if (folder / name).is_file() and (fault := check_whole(folder / name))]


def find_pretrained(path: str | Path) -> tuple[Path, list[str]]:
    """A ``--pretrained`` argument -> ``(file or checkpoint folder to read, warnings)``.

    A checkpoint folder must verify (its model file whole, of the recorded size and checksum). A
    run directory or its ``checkpoints/`` folder resolves to its newest checkpoint whose weights
    verify; each newer damaged one is skipped with a warning naming the file and the fault.
    Raises :class:`~dali_fame.engine.checkpoint.CheckpointError` (a ValueError) for a damaged
    folder or when no checkpoint of a run verifies, ValueError when nothing loadable is there.
    """
    p = Path(path)
    if p.is_file():
        return p, []
    if not p.is_dir():
        raise ValueError(f"--pretrained {str(path)!r} does not exist")
    if (p / STATE_FILE).is_file() or any((p / name).is_file() for name in STATE_FILES):
        problems = _weight_problems(p)
        if problems:
            raise CheckpointError(f"--pretrained {str(path)!r} is damaged: {'; '.join(problems)} "
                                  f"(pass another checkpoint, or the run's checkpoints/ folder for "
                                  f"the newest that verifies)")
        return p, []
    for run_dir in (p.parent, p) if p.name == "checkpoints" else (p,):
        found = list_checkpoints(run_dir)
        notes = []
        for ckpt in reversed(found):
            problems = _weight_problems(ckpt)
            if not problems:
                if notes:
                    notes.append(f"using {ckpt} instead, the newest checkpoint whose weights verify")
                return ckpt, notes
            notes.append(f"skipping checkpoint {ckpt}: {'; '.join(problems)}")
        if found:
            raise CheckpointError(f"--pretrained {str(path)!r}: no checkpoint in it verifies "
                                  f"({'; '.join(notes)})")
    raise ValueError(f"--pretrained {str(path)!r}: no checkpoint in it (expected a step_XXXXXXXX "
                     f"folder with {STATE_FILES[0]}, a run's checkpoints/ folder, or a state-dict file)")


def resolve_pretrained(path: str | Path) -> Path:
    """:func:`find_pretrained`'s path; its warnings (skipped damaged checkpoints) are logged."""
    found, notes = find_pretrained(path)
    for note in notes:
        logger.warning(note)
    return found


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read the tensors of a checkpoint (directory or file) and its stored config (or None).

    Returns ``(state_dict, config)``: state_dict maps names to CPU tensors with wrappers
    (``state_dict`` / ``model`` keys) and a DDP ``module.`` prefix removed.
    """
    p = Path(path)
    config = None
    if p.is_dir():
        meta = p / STATE_FILE
        if meta.is_file():
            config = json.loads(meta.read_text()).get("config")
        files = [p / name for name in STATE_FILES if (p / name).is_file()]
        if not files:
            raise ValueError(f"checkpoint {str(p)!r} holds none of {', '.join(STATE_FILES)}")
        p = files[0]
    fault = check_whole(p)
    if fault:
        raise WeightLoadError(f"{p} {fault}: the file is damaged")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # SafetensorError, UnpicklingError, EOFError, ...: say which file
        raise WeightLoadError(f"{p} cannot be read ({type(err).__name__}: {err}): the file is "
                              f"damaged or not a checkpoint") from err
    if p.suffix != ".safetensors":
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(p)!r} is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state), config


def backbone_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Split a checkpoint into backbone tensors (backbone-relative names) and ignored keys.

    Returns ``(backbone_sd, ignored, kind)``. kind "moco": keys ``encoder_q.backbone.*`` are
    the backbone, the rest of the MoCo model (key encoder, heads, queue) is ignored; anything
    else in such a file is returned as a backbone key so that it shows up as unexpected.
    "backbone": keys ``backbone.*`` (e.g. a finetuned classifier); its ``fc.*`` is ignored.
    "torchvision": bare names; the classifier ``fc.*`` is ignored.
    """
    if any(k.startswith(_MOCO_PREFIX) for k in state):
        out, ignored = {}, []
        for k, v in state.items():
            if k.startswith(_MOCO_PREFIX):
                out[k[len(_MOCO_PREFIX):]] = v
            elif k.startswith(_MOCO_PARTS):
                ignored.append(k)
            else:
                out[k] = v
        return out, ignored, "moco"
    if state and all(k.startswith(("backbone.", "fc.", "dropout.")) for k in state):
        out = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        return out, [k for k in state if not k.startswith("backbone.")], "backbone"
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return out, [k for k in state if k.startswith("fc.")], "torchvision"


def load_pretrained(
    model: nn.Module, path: str | Path | None, *, prefix: str = "backbone."
) -> LoadReport:
    """Load the backbone weights of ``path`` into ``model`` (its backbone under ``prefix``).

    ``model`` is the evaluation model (e.g. :class:`~dali_fame.eval.classify.VideoClassifier`
    whose backbone is ``model.backbone``; ``prefix=""`` loads a bare backbone). Shapes must
    match; missing and unexpected keys are reported, not raised: see :func:`check_load`.
    ``path=None`` leaves the random initialisation and reports every key as missing.
    """
    model_keys = list(model.state_dict())
    if path is None:
        return LoadReport(source="", kind="none", missing=model_keys)
    state, config = read_state_dict(path)
    backbone_sd, ignored, kind = backbone_state(state)
    target = {prefix + k: v for k, v in backbone_sd.items()}
    current = model.state_dict()
    for k, v in target.items():
        if k in current and tuple(current[k].shape) != tuple(v.shape):
            raise WeightLoadError(f"{path}: tensor {k!r} has shape {tuple(v.shape)} in the "
                                  f"checkpoint but {tuple(current[k].shape)} in the model "
                                  f"(another backbone or width? set model.backbone)")
    result = model.load_state_dict(target, strict=False)
    missing = list(result.missing_keys)
    unexpected = list(result.unexpected_keys)
    loaded = [k for k in target if k not in set(unexpected)]
    return LoadReport(source=str(path), kind=kind, config=config, loaded=loaded,
                      missing=missing, unexpected=unexpected, ignored=ignored)


def check_load(report: LoadReport, *, allowed_missing: list[str] | tuple[str, ...] = ()) -> None:
    """Raise :class:`WeightLoadError` unless exactly ``allowed_missing`` keys were missing.

    With a checkpoint, ``missing`` must equal ``allowed_missing`` (the new classifier; for
    retrieval nothing) and ``unexpected`` must be empty. A random-init report passes.
    """
    if report.kind == "none":
        return
    problems = []
    if sorted(report.missing) != sorted(allowed_missing):
        extra = sorted(set(report.missing) - set(allowed_missing))
        absent = sorted(set(allowed_missing) - set(report.missing))
        if extra:
            problems.append(f"missing from the checkpoint: {_short(extra, 8)}")
        if absent:
            problems.append(f"expected to be new but found in the checkpoint: {_short(absent, 8)}")
    if report.unexpected:
        problems.append(f"unexpected in the checkpoint: {_short(sorted(report.unexpected), 8)}")
    if not report.loaded:
        problems.append("no tensor was loaded")
    if problems:
        raise WeightLoadError(f"{report.source} ({report.kind}) does not fit the model: "
                              + "; ".join(problems)
                              + " (wrong backbone? set model.backbone, or check the file)")


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter and buffer of ``module`` (for :func:`assert_unchanged`)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Raise :class:`BackboneChangedError` unless ``module`` is bit-identical to ``reference``.

    Compares every parameter and buffer (BatchNorm running statistics included: a frozen
    backbone runs in eval mode, so those must not move either) with ``torch.equal``.
    """
    current = module.state_dict()
    changed = sorted(set(current) ^ set(reference))
    for k, v in current.items():
        if k in reference and not torch.equal(v.detach().cpu(), reference[k]):
            changed.append(k)
    if changed:
        raise BackboneChangedError(f"the frozen backbone changed during training: {len(changed)} "
                                   f"tensor(s) differ, e.g. {_short(changed, 8)}")


#: ``--pretrained`` values meaning "random init on purpose" (the baseline)
RANDOM_INIT = ("none", "random", "scratch")


def choose_checkpoint(value: str | None, *, from_cli: bool) -> tuple[Path | None, str | None]:
    """Decide what to load from ``eval.pretrained``; returns ``(checkpoint or None, warning)``.

    ``"none"`` (or "random", "scratch") is a deliberate random-init baseline. A path given on
    the command line must exist (ValueError otherwise). A path that only comes from the config
    (the demo configs point at ``runs/demo_cpu/checkpoints``) and does not exist, or no path at
    all, falls back to random init with a warning, so the demo commands run on a fresh checkout.
    """
    if value is not None and value.lower() in RANDOM_INIT:
        return None, None
    if value is None:
        return None, ("no --pretrained checkpoint given: evaluating a RANDOMLY INITIALISED "
                      "backbone (pass --pretrained RUN/checkpoints, or --pretrained none to silence this)")
    if not Path(value).exists():
        if from_cli:
            raise ValueError(f"--pretrained {value!r} does not exist")
        return None, (f"pretrained checkpoint {value!r} (from the config) not found: evaluating a "
                      f"RANDOMLY INITIALISED backbone (run `accelerate launch train/pretrain.py` "
                      f"first, or pass --pretrained)")
    found, notes = find_pretrained(value)
    return found, "; ".join(notes) or None


def read_checkpoint_config(path: str | Path | None) -> dict | None:
    """The pretraining run's resolved config stored with a checkpoint directory (else None)."""
    if path is None:
        return None
    meta = Path(path) / "trainer_state.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("config")


def choose_backbone(*, requested: str | None, checkpoint_config: dict | None, fallback: str) -> str:
    """``model.backbone`` if set, else the checkpoint's, else ``fallback`` (random init or a
    file without a config). ValueError when an explicit choice contradicts the checkpoint."""
    stored = (checkpoint_config or {}).get("model", {}).get("backbone")
    if requested and stored and requested != stored:
        raise ValueError(f"model.backbone={requested!r} but the checkpoint was pretrained with "
                         f"{stored!r}: leave model.backbone unset to use the checkpoint's")
    return requested or stored or fallback

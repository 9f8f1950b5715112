"""Experiment configuration: one YAML file gives defaults, ``--set key=value`` overrides them.

The schema is a tree of dataclasses, so every setting has a type, a default and a place in the
docs; :func:`load_config` validates everything at start-up and names the offending setting,
so a bad value fails before the first video is decoded rather than an hour in. The resolved
config (:func:`to_dict`) is written next to the run, handed to the tracker and stored in every
checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATASET_FORMATS = ("synthetic", "ucf101", "hmdb51", "kinetics400", "diving48", "ssv2", "folder", "csv")


@dataclass
class DataConfig:
    root: str | None = None  #: dataset root; None = the built-in synthetic dataset (generated once)
    format: str = "synthetic"  #: one of DATASET_FORMATS
    split: str = "train"
    split_id: int = 1
    annotation_dir: str | None = None  #: split / annotation files when not under root
    cache_dir: str | None = None  #: where the index cache and the synthetic data go
    loader: str = "auto"  #: auto | cpu | dali
    workers: int = 2
    clip_len: int = 16
    stride: int = 2
    crop: int = 112
    synthetic_codec: str = "h264"  #: codec of the generated synthetic dataset


@dataclass
class ModelConfig:
    backbone: str = "r2plus1d_18"


@dataclass
class MocoConfig:
    dim: int = 128
    queue_size: int = 2048
    momentum: float = 0.999
    temperature: float = 0.1
    shuffle_bn: bool = True
    #: the released FAME code's enqueue between the two loss terms (reproduce old numbers only)
    legacy_enqueue: bool = False


@dataclass
class DebiasConfig:
    method: str = "fame"  #: fame | be | none
    beta: float = 0.5  #: FAME foreground fraction (1.0 disables FAME)
    variant: str = "fame"  #: fame | seed | gauss | grid
    views: str = "single"  #: single | both
    background: str = "inter"  #: inter | intra
    legacy_hue: bool = False
    derangement: bool = True
    be_gamma: float = 0.3
    be_per_clip: bool = True
    backend: str = "auto"  #: auto | torch | cuda | native


@dataclass
class AugmentConfig:
    """Basic augmentations after FAME (spec section 5); probabilities 0 turn an op off."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.5


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "multistep"  #: multistep | cosine
    milestones: list[int] = field(default_factory=lambda: [120, 180])  #: epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    clip_grad: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 64  #: global batch over all processes
    max_steps: int | None = None  #: stop after this many optimizer steps (None: all epochs)
    seed: int = 0
    mixed_precision: str = "no"  #: no | bf16 | fp16
    checkpoint_every_steps: int = 0  #: 0 = only at epoch ends
    keep_checkpoints: int = 3
    log_every: int = 10
    image_every: int = 200  #: steps between clip / mask / merge image grids in TensorBoard


@dataclass
class Config:
    name: str = "pretrain"
    output_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting."""


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def validate(cfg: Config) -> Config:
    """Check every setting; raise :class:`ConfigError` naming the first bad one."""
    d, m, f, o, t = cfg.data, cfg.moco, cfg.debias, cfg.optim, cfg.train
    _choice("data.format", d.format, DATASET_FORMATS)
    _choice("data.loader", d.loader, ("auto", "cpu", "dali"))
    _choice("data.synthetic_codec", d.synthetic_codec, ("h264", "vp9", "mjpeg"))
    if d.format != "synthetic" and not d.root:
        raise ConfigError(f"data.root is required for data.format={d.format!r}")
    if d.root and not Path(d.root).exists():
        raise ConfigError(f"data.root {d.root!r} does not exist")
    _positive("data.workers", d.workers, allow_zero=True)
    if d.clip_len < 2:
        raise ConfigError(f"data.clip_len must be >= 2 (FAME needs frame differences); got {d.clip_len}")
    _positive("data.stride", d.stride)
    if d.crop < 16:
        raise ConfigError(f"data.crop must be >= 16 pixels; got {d.crop}")
    _positive("moco.dim", m.dim)
    _positive("moco.temperature", m.temperature)
    if not 0.0 <= m.momentum <= 1.0:
        raise ConfigError(f"moco.momentum must be in [0, 1]; got {m.momentum}")
    _positive("train.batch_size", t.batch_size)
    if m.queue_size % t.batch_size:
        raise ConfigError(
            f"moco.queue_size ({m.queue_size}) must be a multiple of train.batch_size ({t.batch_size})"
        )
    _choice("debias.method", f.method, ("fame", "be", "none"))
    _choice("debias.variant", f.variant, ("fame", "seed", "gauss", "grid"))
    _choice("debias.views", f.views, ("single", "both"))
    _choice("debias.background", f.background, ("inter", "intra"))
    _choice("debias.backend", f.backend, ("auto", "torch", "cuda", "native"))
    if not 0.0 <= f.beta <= 1.0:
        raise ConfigError(f"debias.beta must be in [0, 1]; got {f.beta}")
    if f.method == "fame" and f.variant == "grid" and f.beta != 0.5:
        raise ConfigError(f"debias.variant=grid takes 8 of 16 cells (spec section 3): leave "
                          f"debias.beta at 0.5 (got {f.beta})")
    if not 0.0 <= f.be_gamma <= 1.0:
        raise ConfigError(f"debias.be_gamma must be in [0, 1]; got {f.be_gamma}")
    a = cfg.augment
    for name in ("jitter_p", "gray_p", "blur_p"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise ConfigError(f"augment.{name} must be a probability in [0, 1]; got {getattr(a, name)}")
    for name in ("brightness", "contrast", "saturation"):
        _positive(f"augment.{name}", getattr(a, name), allow_zero=True)
    if not 0.0 <= a.hue <= 0.5:
        raise ConfigError(f"augment.hue must be in [0, 0.5]; got {a.hue}")
    _positive("optim.lr", o.lr)
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    _choice("optim.schedule", o.schedule, ("multistep", "cosine"))
    if sorted(o.milestones) != list(o.milestones):
        raise ConfigError(f"optim.milestones must be increasing; got {o.milestones}")
    if o.clip_grad is not None:
        _positive("optim.clip_grad", o.clip_grad)
    _positive("train.epochs", t.epochs)
    if t.max_steps is not None:
        _positive("train.max_steps", t.max_steps)
    _choice("train.mixed_precision", t.mixed_precision, ("no", "bf16", "fp16"))
    _positive("train.keep_checkpoints", t.keep_checkpoints)
    _positive("train.log_every", t.log_every)
    _positive("train.image_every", t.image_every, allow_zero=True)
    return cfg


def _merge(obj: Any, values: dict, prefix: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown setting {path!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"setting {path!r} is a section; got {value!r}")
            _merge(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, current, value, names[key].type))


def _coerce(path: str, current: Any, value: Any, type_hint: Any) -> Any:
    """Convert a YAML value to the type of the default; reject what does not fit."""
    hint = str(type_hint)
    if value is None:
        if "None" in hint:
            return None
        raise ConfigError(f"setting {path!r} cannot be null")
    if isinstance(current, bool) or hint == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"setting {path!r} must be true or false; got {value!r}")
    if hint.startswith("int") or isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"setting {path!r} must be an integer; got {value!r}")
    if hint.startswith("float") or isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"setting {path!r} must be a number; got {value!r}")
    if hint.startswith("list"):
        if isinstance(value, list):
            return value
        raise ConfigError(f"setting {path!r} must be a list; got {value!r}")
    if hint.startswith("str"):
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"setting {path!r} must be a string; got {value!r}")
    return value


def parse_override(text: str) -> dict:
    """``"train.epochs=5"`` -> ``{"train": {"epochs": 5}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value; got {text!r}")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    tree: dict = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file; a missing file or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with open(path) as fh:
        values = yaml.safe_load(fh) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return values


def load_config(
    path: str | Path | None = None, *, overrides: list[dict] | None = None, check: bool = True
) -> Config:
    """Defaults <- YAML file <- overrides (dicts, applied in order), then :func:`validate`
    (``check=False`` skips it, to peek at a file before the command line completes it)."""
    cfg = Config()
    if path is not None:
        _merge(cfg, read_yaml(path), "")
    for tree in overrides or []:
        _merge(cfg, tree, "")
    return validate(cfg) if check else cfg


def to_dict(cfg: Any) -> dict:
    """Any config dataclass (pretraining or evaluation) as a plain nested dict."""
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    cfg = Config()
    _merge(cfg, values, "")
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (the run's resolved config.yaml)."""
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def flatten(tree: dict, prefix: str = "") -> dict:
    """Flatten a config dict for TensorBoard's hparams (lists and None become strings)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out

"""Configuration of the downstream evaluations (finetune, linear probe, retrieval).

Same mechanics as :mod:`dali_fame.config` (one YAML file gives defaults, ``--set key=value``
overrides them, everything is validated at start-up naming the bad setting), and the same
``data``, ``optim`` and ``train`` sections, so a pretraining config's data settings read the same
here. The defaults of :func:`default_config` are the paper's protocols (fame-spec.md section 8):

=============  =====  ======  ======  ==========  =====  =========================
task           lr     wd      epochs  milestones  batch  other
=============  =====  ======  ======  ==========  =====  =========================
finetune       0.025  1e-4    150     60, 120     128    dropout before the FC
linear_probe   5      0       100     60, 80      128    frozen backbone, L2 feats
retrieval      -      -       -       -           -      no training
=============  =====  ======  ======  ==========  =====  =========================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dali_fame.config import (
    Config,
    ConfigError,
    DataConfig,
    MocoConfig,
    OptimConfig,
    TrainConfig,
    _choice,
    _merge,
    _positive,
    parse_override,
    read_yaml,
    validate,
)

TASKS = ("finetune", "linear_probe", "retrieval")

#: recall cut-offs of the retrieval protocol (spec section 8)
RECALL_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
#: a test set's name: it becomes a results column, a file suffix and a tracker key
TEST_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: prefix of an eval.extra_test_sets value naming a folder of the built-in synthetic dataset
SYNTHETIC_PREFIX = "synthetic:"


@dataclass
class EvalModelConfig:
    backbone: str | None = None  #: None: the pretraining checkpoint's backbone
    #: backbone of a random-init run when model.backbone is unset and there is no checkpoint
    fallback_backbone: str = "r2plus1d_18"
    dropout: float = 0.0  #: before the last FC (finetune: 0.7 UCF101, 0.5 HMDB51)


@dataclass
class EvalSection:
    """What to evaluate and how to test; the labels only name the run in results.md."""

    #: checkpoint dir / run dir / state-dict file; "none" = random init. --pretrained sets it.
    pretrained: str | None = None
    method: str | None = None  #: results label; None: from the checkpoint (FAME / BE / MoCo)
    pretrain_data: str | None = None  #: results label; None: the checkpoint's data.format
    train_split: str = "train"  #: training set (retrieval: the gallery)
    test_split: str = "test"  #: test set (retrieval: the queries)
    num_clips: int = 10  #: uniformly spaced test clips per video, predictions averaged
    batch_size: int = 8  #: videos per process in a test pass (x num_clips clips)
    eval_every: int = 10  #: epochs between test passes during training (0: only at the end)
    neighbors: int = 50  #: retrieval: neighbours saved per query in neighbors.json
    #: data without a split only: this fraction of each class becomes the test split (seeded)
    holdout: float = 0.0
    holdout_seed: int = 0  #: the hold-out's seed (independent of train.seed)
    #: finetune only: the released recipe's grayscale (p 0.2) + colour jitter (0.4, 0.4, 0.4,
    #: 0.1, p 0.8) on training clips; false = crop + flip only (the linear probe's protocol)
    color_augment: bool = False
    #: the main test set's name in results and on the console when there are extra test sets
    test_name: str = "test"
    #: more test sets, scored after the final test pass (not the eval_every ones) and reported
    #: beside it: name -> a dataset folder read like the main data (data.format, split
    #: eval.test_split, annotation files where the reader looks under that folder), with the
    #: training split's classes and no training video. An absolute path, a path relative to
    #: data.root, or "synthetic:<folder>": a folder of the built-in synthetic dataset (e.g.
    #: synthetic:same_scene), skipped with a warning when data.format is not synthetic.
    extra_test_sets: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalConfig:
    name: str = "eval"
    task: str = "finetune"  #: finetune | linear_probe | retrieval (must match the script)
    output_dir: str = "runs/eval"
    data: DataConfig = field(default_factory=DataConfig)
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSection = field(default_factory=EvalSection)


def default_config(task: str) -> EvalConfig:
    """The paper's protocol for ``task`` (spec section 8) before any YAML or override."""
    _choice("task", task, TASKS)
    cfg = EvalConfig(name=task, task=task, output_dir=f"runs/{task}")
    cfg.train.batch_size = 128
    cfg.train.log_every = 10
    cfg.train.image_every = 0
    if task == "finetune":
        cfg.optim = OptimConfig(lr=0.025, momentum=0.9, weight_decay=1e-4, milestones=[60, 120])
        cfg.train.epochs = 150
        cfg.model.dropout = 0.5
        cfg.eval.color_augment = True
    elif task == "linear_probe":
        cfg.optim = OptimConfig(lr=5.0, momentum=0.9, weight_decay=0.0, milestones=[60, 80])
        cfg.train.epochs = 100
    else:
        cfg.train.epochs = 1  # unused: retrieval does not train
    return cfg


def validate_eval(cfg: EvalConfig) -> EvalConfig:
    """Check every setting; raise :class:`ConfigError` naming the first bad one."""
    _choice("task", cfg.task, TASKS)
    # The data / optim / train sections are the pretraining ones: run the same checks on them
    # (a queue that fits the batch keeps the MoCo-only rule out of the way).
    validate(Config(data=cfg.data, optim=cfg.optim, train=cfg.train,
                    moco=MocoConfig(queue_size=max(cfg.train.batch_size, 1))))
    m, e = cfg.model, cfg.eval
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1); got {m.dropout}")
    for name in ("train_split", "test_split"):
        _choice(f"eval.{name}", getattr(e, name), ("train", "val", "test"))
    _positive("eval.num_clips", e.num_clips)
    _positive("eval.batch_size", e.batch_size)
    _positive("eval.eval_every", e.eval_every, allow_zero=True)
    _positive("eval.neighbors", e.neighbors)
    if e.color_augment and cfg.task != "finetune":
        raise ConfigError(f"eval.color_augment is for finetuning only: the {cfg.task} protocol uses the "
                          "loader's crop and flip alone (spec section 5)")
    if not 0.0 <= e.holdout < 1.0:
        raise ConfigError(f"eval.holdout must be in [0, 1) (0: the data's own split); got {e.holdout}")
    _check_test_sets(e)
    return cfg


def _check_test_sets(e: EvalSection) -> None:
    """eval.test_name and eval.extra_test_sets: names usable as columns and file suffixes,
    distinct, and every extra set given as a non-empty folder path."""
    if not isinstance(e.test_name, str) or not TEST_SET_NAME.fullmatch(e.test_name):
        raise ConfigError(f"eval.test_name must be a name of letters, digits, '_', '-' or '.'; got {e.test_name!r}")
    if not isinstance(e.extra_test_sets, dict):
        raise ConfigError("eval.extra_test_sets must be a mapping name -> dataset folder (e.g. "
                          f"{{same-scene: synthetic:same_scene}}); got {e.extra_test_sets!r}")
    for name, where in e.extra_test_sets.items():
        key = f"eval.extra_test_sets.{name}"
        if not isinstance(name, str) or not TEST_SET_NAME.fullmatch(name):
            raise ConfigError(f"{key}: a test set's name must be letters, digits, '_', '-' or '.'")
        if name.lower() == e.test_name.lower():
            raise ConfigError(f"{key}: the name is eval.test_name's (the main test set); pick another")
        if not isinstance(where, str) or not where.strip() or where.strip() == SYNTHETIC_PREFIX:
            raise ConfigError(f"{key} must be a dataset folder (a path, or synthetic:<folder>); got {where!r}")
    lowered = [n.lower() for n in e.extra_test_sets]
    if len(set(lowered)) != len(lowered):
        raise ConfigError(f"eval.extra_test_sets: names differ only in case ({', '.join(e.extra_test_sets)}): "
                          "they would share result files")


def load_eval_config(
    path: str | Path | None, *, task: str, overrides: list[dict] | None = None
) -> EvalConfig:
    """:func:`default_config` (task) <- YAML file <- overrides, then :func:`validate_eval`.

    A YAML file written for another task (its ``task:`` differs) is an error: a finetune
    config given to the linear probe would silently train with the wrong protocol.
    """
    cfg = default_config(task)
    if path is not None:
        values = read_yaml(path)
        if values.get("task", task) != task:
            raise ConfigError(f"config file {str(path)!r} is for task {values['task']!r}, "
                              f"not {task!r}: pick a configs/{task}_*.yaml file")
        _merge(cfg, values, "")
    for tree in overrides or []:
        _merge(cfg, tree, "")
    if cfg.data.root and cfg.data.format == "synthetic":
        # a dataset root without a format (--data-root alone, demo config): class folders
        cfg.data.format = "folder"
    if cfg.task != task:
        raise ConfigError(f"task={cfg.task!r} cannot be changed for this script ({task})")
    return validate_eval(cfg)


def cli_overrides(args: Any) -> list[dict]:
    """The scripts' flags as override trees (flags the script lacks or left unset are skipped).

    ``args`` is the scripts' ``argparse.Namespace``: output_dir, data_root, dataset_format,
    max_steps, epochs, seed, loader, pretrained, then every ``--set`` in order.
    """
    flags = {
        "output_dir": "output_dir", "data_root": "data.root", "dataset_format": "data.format",
        "max_steps": "train.max_steps", "epochs": "train.epochs", "seed": "train.seed",
        "loader": "data.loader",
    }
    trees = []
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            trees.append(parse_override(f"{key}={value}"))
    if getattr(args, "pretrained", None) is not None:
        # not through parse_override: a path must stay a string whatever YAML makes of it
        trees.append({"eval": {"pretrained": str(args.pretrained)}})
    return trees + [parse_override(s) for s in getattr(args, "set", None) or []]


def setting_mismatches(data: DataConfig, checkpoint_config: dict | None) -> list[str]:
    """Clip settings where the evaluation differs from the pretraining run (for a warning:
    evaluating at another crop or clip length is allowed but rarely intended)."""
    stored = (checkpoint_config or {}).get("data", {})
    out = []
    for name in ("crop", "clip_len", "stride"):
        if name in stored and stored[name] != getattr(data, name):
            out.append(f"data.{name}={getattr(data, name)} (pretrained with {stored[name]})")
    return out

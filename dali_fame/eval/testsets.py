"""Test sets scored side by side: the main test split and ``eval.extra_test_sets``.

One number on one test set cannot show a shortcut: a model that reads the scene instead of the
motion scores 0% on the synthetic test split (every clip on another class's scene) and that alone
looks like a broken model. Scored next to the same clips on their own scene
(``same_scene/`` of :mod:`dali_fame.data.synthetic`), the gap is the bias. The evaluation scripts
therefore accept any number of extra test sets (dataset folders read like the main data), score
each after the main test pass with the same model, and report every set in one line and one
results row.

Each extra set is checked at start-up, before any video is decoded: its folder exists, it reads
as a dataset with the training split's classes (the classifier's outputs are indices into
them), and it shares no video with the training split (the rule of
:mod:`dali_fame.eval.splits`). Errors name the setting ``eval.extra_test_sets.<name>``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from dali_fame.eval.config import SYNTHETIC_PREFIX, EvalConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSet:
    """A named test set: its records (a :class:`~dali_fame.engine.data.SplitData`) and where
    they came from (``source``: the folder, or the main data's description)."""

    name: str
    split: object
    source: str


def extra_set_folders(cfg: EvalConfig, *, synthetic_root: Path | None) -> tuple[dict[str, Path], list[str]]:
    """Where each ``eval.extra_test_sets`` entry lives, and the warnings for skipped ones.

    Args:
        cfg: a validated evaluation config.
        synthetic_root: the generated synthetic dataset's folder (``data.format`` synthetic),
            else None.

    Returns:
        ``({name: folder}, warnings)``: ``synthetic:<folder>`` resolves under synthetic_root and
        is skipped (with a warning) for other data; a relative path resolves against
        ``data.root``.

    Raises:
        ValueError: a folder that does not exist, or a relative path without ``data.root``,
            naming the setting.
    """
    folders: dict[str, Path] = {}
    warnings: list[str] = []
    for name, where in cfg.eval.extra_test_sets.items():
        key = f"eval.extra_test_sets.{name}"
        where = where.strip()
        if where.startswith(SYNTHETIC_PREFIX):
            if synthetic_root is None:
                warnings.append(f"{key}={where} is a folder of the built-in synthetic dataset, but data.format "
                                f"is {cfg.data.format}: this test set is skipped")
                continue
            folder = synthetic_root / where[len(SYNTHETIC_PREFIX):]
        else:
            folder = Path(where).expanduser()
            if not folder.is_absolute():
                if not cfg.data.root:
                    raise ValueError(f"{key}={where} is relative, but there is no data.root to resolve it "
                                     f"against: give an absolute path (or synthetic:<folder> for the built-in data)")
                folder = Path(cfg.data.root) / folder
        if not folder.is_dir():
            raise ValueError(f"{key}: {folder} is not a folder")
        folders[name] = folder
    return folders, warnings


def extra_set_data(cfg: EvalConfig, folder: Path):
    """The :class:`~dali_fame.config.DataConfig` that reads an extra set: the main data's
    settings with ``root`` = the folder (annotation files looked for under it); the built-in
    synthetic dataset's sets are UCF101 style, as its main split."""
    fmt = "ucf101" if cfg.data.format == "synthetic" else cfg.data.format
    return dataclasses.replace(cfg.data, root=str(folder), format=fmt, annotation_dir=None)


def check_extra_set(name: str, extra, train) -> None:
    """Refuse an extra test set that the training split's classifier cannot score honestly.

    Args:
        name: the set's name (for the message).
        extra, train: :class:`~dali_fame.engine.data.SplitData` (``records`` with ``.path``,
            ``class_names``).

    Raises:
        ValueError: other classes (or another class order) than the training split's, or a
            video of the training split among the set's.
    """
    key = f"eval.extra_test_sets.{name}"
    if list(extra.class_names) != list(train.class_names):
        raise ValueError(f"{key}: its classes {list(extra.class_names)} are not the training split's "
                         f"{list(train.class_names)} (same names, same order: labels index the classifier)")
    shared = {r.path for r in extra.records} & {r.path for r in train.records}
    if shared:
        raise ValueError(f"{key}: shares {len(shared)} of its {len(extra.records)} videos with the training "
                         f"split (e.g. {min(shared)}): the evaluation would test on its own training videos")


def load_test_sets(cfg: EvalConfig, *, train, test, is_main: bool, wait, log=None) -> list[EvalSet]:
    """The main test split followed by every extra test set, each checked (see the module doc).

    Args:
        cfg: a validated evaluation config.
        train, test: the resolved training and main test splits
            (:func:`dali_fame.eval.splits.resolve_eval_splits`).
        is_main, wait: as :func:`dali_fame.engine.data.load_split` (only the main process reads).
        log: where skip warnings go (a logger with ``warning``; default this module's).

    Returns:
        ``[EvalSet(cfg.eval.test_name, test, ...), EvalSet(name, extra, folder), ...]`` in the
        order of ``eval.extra_test_sets``.

    Raises:
        ValueError: a bad extra set, the message starting with ``eval.extra_test_sets.<name>``.
    """
    from dali_fame.engine.data import load_split, synthetic_root

    synth = synthetic_root(cfg.data) if cfg.data.format == "synthetic" else None
    folders, warnings = extra_set_folders(cfg, synthetic_root=synth)
    for text in warnings:
        (log or logger).warning(text)
    sets = [EvalSet(cfg.eval.test_name, test, f"{cfg.data.format} split {cfg.eval.test_split}")]
    for name, folder in folders.items():
        try:
            extra = load_split(extra_set_data(cfg, folder), split=cfg.eval.test_split, is_main=is_main, wait=wait)
        except ValueError as err:
            raise ValueError(f"eval.extra_test_sets.{name} ({folder}): {err}") from None
        check_extra_set(name, extra, train)
        sets.append(EvalSet(name, extra, str(folder)))
    return sets


def side_by_side(values: dict[str, float], *, metric: str, chance: float | None = None) -> str:
    """One console line for one metric over the test sets, e.g.
    ``top-1 swapped-scene 0.0% | same-scene 83.3% (chance 12.5%)``.

    Args:
        values: test set name -> value in percent (the order is kept).
        metric: the metric's title (``top-1``, ``R@1``).
        chance: the metric's chance level in percent, or None to leave it out.
    """
    text = f"{metric} " + " | ".join(f"{name} {value:.1f}%" for name, value in values.items())
    return text if chance is None else f"{text} (chance {chance:.1f}%)"

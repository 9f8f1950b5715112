"""What every evaluation run leaves behind: results.json and a one-line markdown row.

``results.json`` holds the metrics (``top1``, ``top5`` for classification; ``R@1`` ... ``R@50``
for retrieval) of the main test set, how the weights were loaded, and the run's resolved config.
``results.md`` is a single table row so that ``cat runs/*/results.md`` under
:func:`markdown_header` makes a table::

    | protocol | method | backbone | pretrain data | dataset | top-1 | top-5 |

With extra test sets (``eval.extra_test_sets``, :mod:`dali_fame.eval.testsets`) results.json
also holds ``test_sets`` {name: metrics} for every set, the main one first, and the row has one
column group per set::

    | protocol | ... | dataset | top-1 swapped-scene | top-5 swapped-scene | top-1 same-scene | top-5 same-scene |
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dali_fame.eval.config import RECALL_KS

METRIC_COLUMNS = {
    "finetune": ("top1", "top5"),
    "linear_probe": ("top1", "top5"),
    "retrieval": tuple(f"R@{k}" for k in RECALL_KS),
}
_TITLES = {"top1": "top-1", "top5": "top-5"}


def method_label(checkpoint_config: dict | None, *, kind: str, source: str) -> str:
    """How the backbone was pretrained, for the results row: "FAME (beta 0.5)", "BE", "MoCo",
    "random init", or the file name of a foreign state dict."""
    if kind == "none":
        return "random init"
    if not checkpoint_config:
        return Path(source).stem
    debias = checkpoint_config.get("debias", {})
    method = debias.get("method", "none")
    if method == "fame" and debias.get("beta", 0.5) < 1.0:
        return f"FAME (beta {debias.get('beta', 0.5):g})"
    if method == "be":
        return "BE"
    return "MoCo"


def pretrain_data_label(checkpoint_config: dict | None, *, kind: str) -> str:
    if kind == "none":
        return "-"
    if not checkpoint_config:
        return "unknown"
    return str(checkpoint_config.get("data", {}).get("format", "unknown"))


def dataset_label(data_format: str, split_id: int) -> str:
    """``ucf101 split 1`` for the formats with numbered splits, else the format name."""
    return f"{data_format} split {split_id}" if data_format in ("ucf101", "hmdb51") else data_format


def metric_title(metric: str) -> str:
    """``top1`` -> ``top-1``; retrieval's ``R@k`` stays as it is."""
    return _TITLES.get(metric, metric)


def markdown_header(task: str, test_sets: list[str] | None = None) -> str:
    """The table header; with more than one test set, one column group per set, in order."""
    cols = ["protocol", "method", "backbone", "pretrain data", "dataset"]
    if test_sets and len(test_sets) > 1:
        cols += [f"{metric_title(m)} {name}" for name in test_sets for m in METRIC_COLUMNS[task]]
    else:
        cols += [metric_title(m) for m in METRIC_COLUMNS[task]]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def _cell(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def markdown_row(task: str, *, method: str, backbone: str, pretrain_data: str, dataset: str,
                 metrics: dict, test_sets: dict[str, dict] | None = None) -> str:
    """The run's row: ``metrics`` (the main test set's), or with more than one entry in
    ``test_sets`` ({name: metrics}, main first) every set's columns in :func:`markdown_header`'s
    order."""
    groups = list(test_sets.values()) if test_sets and len(test_sets) > 1 else [metrics]
    values = [_cell(group.get(name)) for group in groups for name in METRIC_COLUMNS[task]]
    cells = [task, method, backbone, pretrain_data, dataset, *values]
    return "| " + " | ".join(cells) + " |"


def write_results(
    run_dir: str | Path,
    *,
    task: str,
    metrics: dict,
    labels: dict,
    config: dict,
    extra: dict | None = None,
    test_sets: dict[str, dict] | None = None,
) -> str:
    """Write ``results.json`` and ``results.md`` into ``run_dir``; return the markdown row.

    metrics: the main test set's metric values (``top1``/``top5`` or ``R@k``, plus anything
    else); labels: the row's ``method``, ``backbone``, ``pretrain_data``, ``dataset``; config:
    the resolved config dict; extra: more JSON-able facts (weight loading report, timings);
    test_sets: {name: metrics} of every test set, the main one first (stored as
    ``test_sets``; the row gets one column group per set when there is more than one).
    """
    run_dir = Path(run_dir)
    row = markdown_row(task, **labels, metrics=metrics, test_sets=test_sets)
    payload = {"task": task, **metrics, **labels, **(extra or {})}
    if test_sets:
        payload["test_sets"] = test_sets
    payload["config"] = config
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (run_dir / "results.md").write_text(row + "\n")
    return row

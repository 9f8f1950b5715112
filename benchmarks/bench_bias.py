r"""The background-bias benchmark (issue #13): a thin wrapper of ``dali-fame bias-bench``.

The benchmark itself is dali_fame/bias/bench.py (world, pretraining runs, evaluation, report);
its configs are configs/bias/*.yaml. These are the same command:
    .venv/bin/python benchmarks/bench_bias.py --config configs/bias/cpu.yaml
    .venv/bin/dali-fame bias-bench --config configs/bias/cpu.yaml
    .venv/bin/dali-fame bench bias --config configs/bias/cpu.yaml
Without --config it runs configs/bias/cpu.yaml (the full CPU table, ~30 min on 2 cores).
"""

from __future__ import annotations

import sys

from dali_fame.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args and not {"-h", "--help"} & set(args):
        args = ["--config", "configs/bias/cpu.yaml", *args]
    sys.exit(main(["bias-bench", *args]))

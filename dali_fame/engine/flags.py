"""The command-line flags every script in train/ shares, declared once.

Only train/*.py parse the command line; this module just declares the common flags on the
parser a script hands it, so pretraining and the evaluations spell them identically.
"""

from __future__ import annotations

import argparse

from dali_fame.config import DATASET_FORMATS


def add_run_flags(parser: argparse.ArgumentParser, *, default_config: str, training: bool = True,
                  pretrained: bool = False) -> None:
    """Add --config, [--pretrained], --output-dir, --data-root, --dataset-format, [--max-steps,
    --epochs, --resume], --seed, --loader and --set (repeatable KEY=VALUE) to ``parser``."""
    parser.add_argument("--config", default=default_config, help=f"YAML config (default: {default_config})")
    if pretrained:
        parser.add_argument("--pretrained", help="pretraining checkpoint dir, a run's checkpoints/ dir "
                            "(newest), a state-dict file (.safetensors/.pt/.pth), or 'none' for random init")
    parser.add_argument("--output-dir", help="run directory (config: output_dir)")
    parser.add_argument("--data-root", help="dataset root (config: data.root); default: built-in synthetic data")
    parser.add_argument("--dataset-format", choices=[f for f in DATASET_FORMATS if f != "synthetic"])
    if training:
        parser.add_argument("--max-steps", type=int, help="stop training after N optimizer steps")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--resume", help="'auto' (newest checkpoint of --output-dir) or a checkpoint directory")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--loader", choices=("auto", "cpu", "dali"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any setting")

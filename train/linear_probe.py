r"""Linear probe of a pretrained backbone (spec section 8), with Accelerate.

The backbone is frozen (eval mode, no gradients, BatchNorm statistics fixed), its features are
L2-normalised, and only a new linear layer trains: SGD lr 5, weight decay 0, 100 epochs, batch
128, lr x0.1 at epochs 60 and 80. Training clips get only the loader's random resized crop
(area 0.2-1) and horizontal flip, then normalisation (spec section 5). Strict by construction:
loading must leave exactly the classifier's keys (fc.weight, fc.bias) missing and nothing
unexpected, and after training every backbone tensor must be bit-identical to the checkpoint's
(checked at the end; the run fails otherwise). Test protocol as finetune: 10 clips, top-1/top-5,
per-class accuracy, confusion matrix. The run is dali_fame.eval.finetune.run_finetune, as for train/finetune.py (same flags).

CPU demo (no arguments: built-in synthetic data, runs/demo_cpu/checkpoints of the default
`accelerate launch train/pretrain.py`):
    accelerate launch train/linear_probe.py
The demo scores the test split (every clip on another class's scene) and the same clips on
their own scene (eval.extra_test_sets) side by side:
    top-1 swapped-scene ...% | same-scene ...% (chance 12.5%)
One GPU, UCF101 split 1, R(2+1)D pretrained on Kinetics-400:
    accelerate launch train/linear_probe.py --config configs/linear_probe_ucf101.yaml \
        --data-root /data/ucf101/videos --dataset-format ucf101 --set data.annotation_dir=/data/ucf101/splits \
        --pretrained runs/fame_k400_r2plus1d/checkpoints
8 GPUs:
    accelerate launch --multi_gpu --num_processes 8 train/linear_probe.py --config configs/linear_probe_hmdb51.yaml \
        --data-root /data/hmdb51 --dataset-format hmdb51 --pretrained runs/fame_k400_r2plus1d/checkpoints
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dali_fame.engine.flags import add_run_flags
from dali_fame.engine.logs import run_main
from dali_fame.eval.config import cli_overrides, load_eval_config
from dali_fame.eval.finetune import run_finetune
from dali_fame.gpu_check import check_gpu_usable

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "linear_probe_demo.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p, default_config=str(DEFAULT_CONFIG), pretrained=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_gpu_usable(loader_flag=args.loader)  # a GPU torch cannot use: stop now, with the fix
    try:
        cfg = load_eval_config(args.config, task="linear_probe", overrides=cli_overrides(args))
    except ValueError as err:  # ConfigError is a ValueError
        raise SystemExit(f"config error: {err}") from None
    return run_finetune(cfg, pretrained_from_cli=args.pretrained is not None, resume=args.resume)


if __name__ == "__main__":
    run_main(main)

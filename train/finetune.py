r"""Finetune a pretrained backbone on action classification (spec section 8), with Accelerate.

All layers train; SGD lr 0.025, weight decay 1e-4, 150 epochs, batch 128, lr x0.1 at epochs 60
and 120, dropout before the last FC (0.7 UCF101, 0.5 HMDB51). Training clips: one 16 x 2 clip per
video per epoch with the loader's random resized crop + horizontal flip, the released recipe's
grayscale (p 0.2) + colour jitter (p 0.8) (eval.color_augment=false: none), then normalisation. Test: 10 uniformly spaced clips per video, short side resized + centre
crop, softmax scores averaged; top-1, top-5, per-class accuracy and a confusion-matrix figure.
The run itself is dali_fame.eval.finetune.run_finetune (the shared training loop of
dali_fame.engine.loop); train/linear_probe.py runs it with the backbone frozen (see there).

CPU demo (no arguments: built-in synthetic data, the checkpoint of the default pretraining
`accelerate launch train/pretrain.py`, i.e. runs/demo_cpu/checkpoints):
    accelerate launch train/finetune.py
The demo scores the test split (every clip on another class's scene) and the same clips on
their own scene (eval.extra_test_sets) side by side:
    top-1 swapped-scene ...% | same-scene ...% (chance 12.5%)
2 CPU processes:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 train/finetune.py
One GPU, UCF101 split 1:
    accelerate launch train/finetune.py --config configs/finetune_ucf101.yaml \
        --data-root /data/ucf101/videos --dataset-format ucf101 --set data.annotation_dir=/data/ucf101/splits \
        --pretrained runs/fame_ucf101_i3d/checkpoints
8 GPUs (train.batch_size is the global batch), HMDB51 split 1:
    accelerate launch --multi_gpu --num_processes 8 train/finetune.py --config configs/finetune_hmdb51.yaml \
        --data-root /data/hmdb51 --dataset-format hmdb51 --pretrained runs/fame_k400_r2plus1d/checkpoints
Random-init baseline: --pretrained none --set model.backbone=i3d.  Resume: --resume auto.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dali_fame.engine.flags import add_run_flags
from dali_fame.engine.logs import run_main
from dali_fame.eval.config import cli_overrides, load_eval_config
from dali_fame.eval.finetune import run_finetune
from dali_fame.gpu_check import check_gpu_usable

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "finetune_demo.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p, default_config=str(DEFAULT_CONFIG), pretrained=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_gpu_usable(loader_flag=args.loader)  # a GPU torch cannot use: stop now, with the fix
    try:
        cfg = load_eval_config(args.config, task="finetune", overrides=cli_overrides(args))
    except ValueError as err:  # ConfigError is a ValueError
        raise SystemExit(f"config error: {err}") from None
    return run_finetune(cfg, pretrained_from_cli=args.pretrained is not None, resume=args.resume)


if __name__ == "__main__":
    run_main(main)

r"""Linear probe of a pretrained backbone (spec section 8), with Accelerate.

The backbone is frozen (eval mode, no gradients, BatchNorm statistics fixed), its features are
L2-normalised, and only a new linear layer trains: SGD lr 5, weight decay 0, 100 epochs, batch
128, lr x0.1 at epochs 60 and 80. Training clips get only the loader's random resized crop
(area 0.2-1) and horizontal flip, then normalisation (spec section 5). Strict by construction:
loading must leave exactly the classifier's keys (fc.weight, fc.bias) missing and nothing
unexpected, and after training every backbone tensor must be bit-identical to the checkpoint's
(checked at the end; the run fails otherwise). Test protocol as finetune: 10 clips, top-1/top-5,
per-class accuracy, confusion matrix. The loop is train/finetune.py's (same flags).

CPU demo (no arguments: built-in synthetic data, runs/demo_cpu/checkpoints of the default
`accelerate launch train/pretrain.py`):
    accelerate launch train/linear_probe.py
One GPU, UCF101 split 1, R(2+1)D pretrained on Kinetics-400:
    accelerate launch train/linear_probe.py --config configs/linear_probe_ucf101.yaml \
        --data-root /data/ucf101/videos --dataset-format ucf101 --set data.annotation_dir=/data/ucf101/splits \
        --pretrained runs/fame_k400_r2plus1d/checkpoints
8 GPUs:
    accelerate launch --multi_gpu --num_processes 8 train/linear_probe.py --config configs/linear_probe_hmdb51.yaml \
        --data-root /data/hmdb51 --dataset-format hmdb51 --pretrained runs/fame_k400_r2plus1d/checkpoints
"""

from __future__ import annotations

from finetune import main  # train/ is on sys.path when this script runs

if __name__ == "__main__":
    raise SystemExit(main(task="linear_probe", doc=__doc__))

r"""MoCo pretraining with FAME (or BE, or neither) on videos, launched with Accelerate.

CPU demo (no arguments: synthetic dataset, tiny backbone, a few minutes):
    accelerate launch train/pretrain.py
2 CPU processes (real DDP over gloo):
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 train/pretrain.py
One GPU, Kinetics-400, R(2+1)D-18 at 112:
    accelerate launch train/pretrain.py --config configs/pretrain_k400_r2plus1d.yaml \
        --data-root /data/kinetics400 --dataset-format kinetics400
8 GPUs (the config's batch size is the global batch):
    accelerate launch --multi_gpu --num_processes 8 train/pretrain.py --config configs/pretrain_k400_i3d.yaml \
        --data-root /data/kinetics400
Resume the newest checkpoint of a run:
    accelerate launch train/pretrain.py --config ... --output-dir runs/x --resume auto
SIGTERM or SIGUSR1 to any one process (a cluster's pre-emption notice): every rank saves the same
checkpoint and exits 0; the same command with --resume auto continues. The loop itself is
dali_fame.engine.loop.train (shared with finetune and the linear probe).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast, set_seed

from dali_fame.augment import ClipAugment
from dali_fame.backends import select_fame_backend
from dali_fame.config import ConfigError, flatten, load_config, parse_override, save_config, to_dict
from dali_fame.engine.checkpoint import list_checkpoints
from dali_fame.engine.data import build_loader, load_split
from dali_fame.engine.flags import add_run_flags
from dali_fame.engine.logs import run_main, setup_logging
from dali_fame.engine.loop import StepOutput, report_replaced, restore, step_generator, train
from dali_fame.engine.monitor import clip_mask_grid, replica_fingerprint
from dali_fame.fame import FAME, BackgroundErasing
from dali_fame.gpu_check import check_gpu_usable
from dali_fame.moco import MoCo
from dali_fame.models import build_backbone

logger = get_logger("pretrain")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_cpu.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p, default_config=str(DEFAULT_CONFIG))
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    flags = {
        "output_dir": args.output_dir, "data.root": args.data_root, "data.format": args.dataset_format,
        "train.max_steps": args.max_steps, "train.epochs": args.epochs, "train.seed": args.seed,
        "data.loader": args.loader,
    }
    overrides = [parse_override(f"{k}={v}") for k, v in flags.items() if v is not None]
    cfg = load_config(args.config, check=False)
    if args.data_root and not args.dataset_format and cfg.data.format == "synthetic":
        overrides.insert(0, {"data": {"format": "folder"}})  # a bare --data-root: class folders
    return load_config(args.config, overrides=overrides + [parse_override(s) for s in args.set])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    check_gpu_usable(loader_flag=args.loader)  # a GPU torch cannot use: stop now, with the fix
    run_dir = Path(cfg.output_dir)
    if not args.resume and list_checkpoints(run_dir):
        raise SystemExit(f"{run_dir} already holds checkpoints: pass --resume auto to continue that run, "
                         f"or choose another --output-dir (nothing was overwritten)")
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision, log_with="tensorboard", project_dir=str(run_dir)
    )
    log_file = setup_logging(run_dir, rank=accelerator.process_index, is_main=accelerator.is_main_process,
                             script="pretrain")
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.train.batch_size % world:
        raise SystemExit(f"config error: train.batch_size ({cfg.train.batch_size}) must be divisible "
                         f"by the number of processes ({world})")
    local_batch = cfg.train.batch_size // world
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    # --- data: index (cached), sampler, loader ---------------------------------------------
    split = load_split(cfg.data, split=cfg.data.split, is_main=accelerator.is_main_process,
                       wait=accelerator.wait_for_everyone)
    num_views = 3 if cfg.debias.method == "fame" and cfg.debias.background == "intra" else 2
    loader, loader_choice = build_loader(
        split.records, cfg.data, batch_size=local_batch, mode="train", seed=cfg.train.seed, rank=rank,
        world_size=world, local_rank=accelerator.local_process_index, num_views=num_views)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise SystemExit(f"config error: {len(split.records)} videos give no full batch of "
                         f"{local_batch} per process: lower train.batch_size")

    # --- model, debiasing, augmentation, optimizer ----------------------------------------
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: pick each conv's algorithm once
    fame_backend = select_fame_backend(cfg.debias.backend, accelerator.device)
    both = cfg.debias.views == "both"
    if cfg.debias.method == "fame":
        debias = FAME(beta=cfg.debias.beta, variant=cfg.debias.variant, both=both,
                      background=cfg.debias.background, legacy_hue=cfg.debias.legacy_hue,
                      derangement=cfg.debias.derangement, backend=fame_backend.name)
    elif cfg.debias.method == "be":
        debias = BackgroundErasing(gamma=cfg.debias.be_gamma, per_clip=cfg.debias.be_per_clip, both=both)
    else:
        debias = None
    augment = ClipAugment(crop=cfg.data.crop, **vars(cfg.augment))
    model = MoCo(build_backbone(cfg.model.backbone), dim=cfg.moco.dim, queue_size=cfg.moco.queue_size,
                 momentum=cfg.moco.momentum, temperature=cfg.moco.temperature,
                 global_batch_size=cfg.train.batch_size, shuffle_bn=cfg.moco.shuffle_bn,
                 legacy_enqueue=cfg.moco.legacy_enqueue, generator=torch.Generator().manual_seed(cfg.train.seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.unwrap_model(model).set_distributed(
        rank=rank, world_size=world, gather=accelerator.gather, broadcast=broadcast)

    state = restore(accelerator, resume=args.resume, run_dir=run_dir)
    config_dict = to_dict(cfg)
    accelerator.init_trackers("tb", config=flatten(config_dict))
    logger.info(f"{len(split.records)} videos, {steps_per_epoch} steps/epoch, {world} process(es), "
                f"batch {cfg.train.batch_size} ({local_batch}/process), loader {loader_choice.name}, "
                f"FAME backend {fame_backend.name} ({fame_backend.reason})", main_process_only=True)

    def moco_step(batch: dict, step: int) -> StepOutput:
        """One MoCo forward: views uint8 (B, V, T, H, W, 3) -> debias -> augment -> loss."""
        views = batch["views"].to(accelerator.device, non_blocking=True)
        gen = step_generator(cfg.train.seed, step, rank)
        v0, v1 = views[:, 0], views[:, 1]
        masks = None
        if isinstance(debias, FAME):
            out = debias(v0, v1, generator=gen, intra=views[:, 2] if num_views == 3 else None)
            v0, v1, masks = out.view0, out.view1, out.mask0
        elif debias is not None:
            out = debias(v0, v1, generator=gen)
            v0, v1 = out.view0, out.view1
        # ClipAugment returns contiguous NCDHW (B, 3, T, H, W) float, the layout the key
        # encoder's shuffle path also uses: one memory format, one set of cuDNN kernels for the
        # query and the key encoder
        x0 = augment(v0, generator=gen)
        x1 = augment(v1, generator=gen)
        with accelerator.autocast():
            result = model(x0, x1)
        if cfg.train.image_every and (step + 1) % cfg.train.image_every == 1 and accelerator.is_main_process:
            grid = clip_mask_grid(views[0, 0], None if masks is None else masks[0], v0[0])
            accelerator.get_tracker("tensorboard", unwrap=True).add_image("fame/clip_mask_merged", grid, step + 1)
        return StepOutput(loss=result["loss"], metrics={"acc1": result["acc1"].detach()})  # read at the log interval

    run = train(accelerator=accelerator, model=model, optimizer=optimizer, loader=loader, step_fn=moco_step,
                   state=state, run_dir=run_dir, config=config_dict, train_cfg=cfg.train, optim_cfg=cfg.optim,
                   global_batch=cfg.train.batch_size, desc="pretrain")
    if not run.ok:  # the same message on every rank, then a non-zero exit everywhere
        accelerator.end_training()
        raise SystemExit(f"error: {run.message}")
    # every replica must hold the same weights and queue: gather a fingerprint from each rank
    prints = accelerator.gather(replica_fingerprint(accelerator.unwrap_model(model)).to(accelerator.device)[None])
    in_sync = bool((prints == prints[:1]).all())
    if accelerator.is_main_process:
        (run_dir / "replicas.json").write_text(json.dumps({"in_sync": in_sync, "fingerprints": prints.tolist()}))
    accelerator.end_training()
    if not in_sync:
        raise SystemExit(f"error: replicas diverged: fingerprints {prints.tolist()}")
    if accelerator.is_main_process:
        print(f"\n{run.message}" if run.stop == "preempted" else f"\ndone: {run.message}")
        print(f"  run directory : {run_dir}")
        print(f"  checkpoints   : {run_dir / 'checkpoints'}")
        print(f"  summary       : {run_dir / 'summary.csv'}")
        print(f"  TensorBoard   : tensorboard --logdir {run_dir / 'tb'}")
        print(f"  full log      : {log_file}")
        print("\n".join(report_replaced(run.replaced)) or "  replaced      : none (every video decoded)")
        if run.stop == "preempted":
            print(f"resume: the same command with --resume auto --output-dir {run_dir}")
        else:
            print("next:")
            print(f"  accelerate launch train/linear_probe.py --pretrained {run_dir / 'checkpoints'}")
            print(f"  accelerate launch train/retrieval.py --pretrained {run_dir / 'checkpoints'}")
            print(f"  accelerate launch train/finetune.py --pretrained {run_dir / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    run_main(main)

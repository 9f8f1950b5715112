r"""Finetune a pretrained backbone on action classification (spec section 8), with Accelerate.

All layers train; SGD lr 0.025, weight decay 1e-4, 150 epochs, batch 128, lr x0.1 at epochs 60
and 120, dropout before the last FC (0.7 UCF101, 0.5 HMDB51). Training clips: one 16 x 2 clip per
video per epoch with the loader's random resized crop + horizontal flip, then normalisation (no
colour augmentation). Test: 10 uniformly spaced clips per video, short side resized + centre
crop, softmax scores averaged; top-1, top-5, per-class accuracy and a confusion-matrix figure.
train/linear_probe.py runs this same loop with the backbone frozen (see there).

CPU demo (no arguments: built-in synthetic data, the checkpoint of the default pretraining
`accelerate launch train/pretrain.py`, i.e. runs/demo_cpu/checkpoints):
    accelerate launch train/finetune.py
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
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from dali_fame.config import flatten, save_config, to_dict
from dali_fame.engine.checkpoint import (
    TrainerState,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from dali_fame.engine.data import build_loader, load_split
from dali_fame.engine.flags import add_run_flags
from dali_fame.engine.monitor import MetricsLog, StepTimer, SummaryCSV
from dali_fame.engine.preemption import PreemptionFlag
from dali_fame.engine.schedule import set_lr
from dali_fame.eval.classify import CLASSIFIER_KEYS, VideoClassifier
from dali_fame.eval.config import (
    cli_overrides,
    load_eval_config,
    setting_mismatches,
)
from dali_fame.eval.inference import gather_indexed, multiclip_pass, normalize_clips
from dali_fame.eval.metrics import classification_results, save_confusion_figure, topk_accuracy
from dali_fame.eval.results import (
    dataset_label,
    markdown_header,
    method_label,
    pretrain_data_label,
    write_results,
)
from dali_fame.eval.weights import (
    WeightLoadError,
    assert_unchanged,
    check_load,
    choose_backbone,
    choose_checkpoint,
    load_pretrained,
    read_checkpoint_config,
    snapshot,
)
from dali_fame.models import build_backbone

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def parse_args(argv=None, *, task: str = "finetune", doc: str = __doc__) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p, default_config=str(CONFIGS / f"{task}_demo.yaml"), pretrained=True)
    return p.parse_args(argv)


def main(argv=None, *, task: str = "finetune", doc: str = __doc__) -> int:
    args = parse_args(argv, task=task, doc=doc)
    try:
        cfg = load_eval_config(args.config, task=task, overrides=cli_overrides(args))
        ckpt, ckpt_warning = choose_checkpoint(cfg.eval.pretrained, from_cli=args.pretrained is not None)
        ckpt_cfg = read_checkpoint_config(ckpt)
        backbone_name = choose_backbone(requested=cfg.model.backbone, checkpoint_config=ckpt_cfg,
                                        fallback=cfg.model.fallback_backbone)
    except ValueError as err:  # ConfigError is a ValueError
        raise SystemExit(f"config error: {err}") from None
    frozen = task == "linear_probe"
    logger = get_logger(task)
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with="tensorboard",
                              project_dir=str(run_dir))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.train.batch_size % world:
        raise SystemExit(f"config error: train.batch_size ({cfg.train.batch_size}) must be divisible "
                         f"by the number of processes ({world})")
    local_batch = cfg.train.batch_size // world
    set_seed(cfg.train.seed)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if ckpt_warning:
        logger.warning(ckpt_warning, main_process_only=True)
    for note in setting_mismatches(cfg.data, ckpt_cfg):
        logger.warning(f"evaluating with {note}", main_process_only=True)

    # --- data: training split (random crop + flip, 1 clip), test split (10 uniform clips) ----
    train_split = load_split(cfg.data, split=cfg.eval.train_split, is_main=is_main, wait=accelerator.wait_for_everyone)
    test_split = load_split(cfg.data, split=cfg.eval.test_split, is_main=is_main, wait=accelerator.wait_for_everyone)
    class_names = train_split.class_names
    common = {"seed": cfg.train.seed, "rank": rank, "world_size": world,
              "local_rank": accelerator.local_process_index}
    train_loader, loader_choice = build_loader(train_split.records, cfg.data, batch_size=local_batch,
                                               mode="train", num_views=1, **common)
    test_loader, _ = build_loader(test_split.records, cfg.data, batch_size=cfg.eval.batch_size, mode="eval",
                                  eval_clips=cfg.eval.num_clips, drop_last=False, **common)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise SystemExit(f"config error: {len(train_split.records)} training videos give no full batch of "
                         f"{local_batch} per process: lower train.batch_size")
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    # --- model: pretrained backbone + new classifier; strict key accounting -----------------
    model = VideoClassifier(build_backbone(backbone_name), num_classes=len(class_names),
                            dropout=0.0 if frozen else cfg.model.dropout, frozen=frozen, normalize_features=frozen)
    try:
        report = load_pretrained(model, ckpt)
        check_load(report, allowed_missing=CLASSIFIER_KEYS)  # only the new classifier may be missing
    except WeightLoadError as err:
        raise SystemExit(f"weights error: {err}") from None
    logger.info(f"weights: {report.summary()}", main_process_only=True)
    frozen_reference = snapshot(model.backbone) if frozen else None
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    net = accelerator.unwrap_model(model)  # test passes skip DDP: ranks may hold unequal test shards

    state = TrainerState()
    resume_from = resolve_resume(args.resume, run_dir)
    if resume_from is not None:
        state, _ = load_checkpoint(accelerator, resume_from)
        logger.info(f"resumed from {resume_from}: epoch {state.epoch}, step {state.step}", main_process_only=True)
    config_dict = to_dict(cfg)
    accelerator.init_trackers("tb", config=flatten(config_dict))
    summary = SummaryCSV(run_dir / "summary.csv") if is_main else None
    metrics_log = MetricsLog(run_dir / "metrics.jsonl") if is_main else None
    logger.info(f"{task}: backbone {backbone_name}, {len(class_names)} classes, {len(train_split.records)} train / "
                f"{len(test_split.records)} test videos, {steps_per_epoch} steps/epoch, {world} process(es), "
                f"batch {cfg.train.batch_size} ({local_batch}/process), loader {loader_choice.name}",
                main_process_only=True)

    def test_pass() -> tuple[dict, torch.Tensor]:
        net.eval()
        local = multiclip_pass(net, test_loader, device=accelerator.device, reduce="softmax",
                               autocast=accelerator.autocast, progress=is_main, desc=f"test ({cfg.eval.num_clips} clips)")
        net.train()
        out = gather_indexed(accelerator, local)  # (N, C) scores of every test video, by index
        if out["index"].numel() != len(test_split.records):
            logger.warning(f"{len(test_split.records) - out['index'].numel()} test videos failed to decode "
                           f"and are not scored", main_process_only=True)
        return classification_results(out["outputs"], out["labels"], class_names=class_names)

    # --- the loop ----------------------------------------------------------------------------
    timer = StepTimer()
    bar = tqdm(total=total_steps, initial=state.step, disable=not is_main, desc=task, dynamic_ncols=True)
    stop_reason = None
    model.train()
    with PreemptionFlag() as preempt:
        while state.step < total_steps and stop_reason is None:
            train_loader.set_epoch(state.epoch)
            epoch_loss = epoch_acc = 0.0
            epoch_steps = 0
            epoch_start = time.perf_counter()
            for batch_idx, batch in enumerate(train_loader):
                if batch_idx < state.batch_in_epoch:  # resuming mid-epoch: same batches, skipped
                    continue
                timer.data_ready()
                views = batch["views"].to(accelerator.device, non_blocking=True)  # (B, 1, T, H, W, 3) uint8
                labels = batch["labels"].to(accelerator.device)
                x = normalize_clips(views[:, 0])  # (B, 3, T, H, W) float
                lr = set_lr(optimizer, cfg.optim, state.step, steps_per_epoch=steps_per_epoch,
                            epochs=cfg.train.epochs)
                with accelerator.autocast():
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), labels)
                bad = accelerator.gather(torch.tensor([float(not torch.isfinite(loss))], device=accelerator.device))
                if bad.any():
                    stop_reason = f"non-finite loss at step {state.step} (epoch {state.epoch})"
                    break
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                if cfg.optim.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                timer.step_done(views.shape[0] * world)
                acc1 = topk_accuracy(logits.detach().float(), labels, ks=(1,))[1]
                state.step += 1
                state.batch_in_epoch = batch_idx + 1
                epoch_loss += loss.item()
                epoch_acc += acc1
                epoch_steps += 1
                bar.update(1)
                if state.step % cfg.train.log_every == 0 or state.step == total_steps:
                    speed = timer.snapshot()
                    metrics = {"train/loss": loss.item(), "train/acc1": acc1, "train/lr": lr,
                               "train/clips_per_s": speed["clips_per_s"],
                               "train/data_wait_frac": speed["data_wait_frac"]}
                    accelerator.log(metrics, step=state.step)
                    if metrics_log is not None:
                        metrics_log.append(state.step, {**metrics, "epoch": state.epoch})
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc1=f"{acc1:.1f}", lr=f"{lr:.3g}",
                                    clips_s=f"{speed['clips_per_s']:.1f}", wait=f"{speed['data_wait_frac']:.0%}")
                if cfg.train.checkpoint_every_steps and state.step % cfg.train.checkpoint_every_steps == 0:
                    save_checkpoint(accelerator, run_dir, state, config=config_dict, keep=cfg.train.keep_checkpoints)
                if preempt.requested or state.step >= total_steps:
                    break
            else:
                state.batch_in_epoch = steps_per_epoch
            if stop_reason is None and state.batch_in_epoch >= steps_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            row = None
            if epoch_steps:
                row = {"epoch": state.epoch if state.batch_in_epoch else state.epoch - 1, "step": state.step,
                       "loss": epoch_loss / epoch_steps, "acc1": epoch_acc / epoch_steps,
                       "seconds": round(time.perf_counter() - epoch_start, 2), "test_top1": "", "test_top5": ""}
            if (row and cfg.eval.eval_every and state.batch_in_epoch == 0 and state.epoch % cfg.eval.eval_every == 0
                    and state.step < total_steps and stop_reason is None and not preempt.requested):
                test_metrics, _ = test_pass()
                accelerator.log({"test/top1": test_metrics["top1"], "test/top5": test_metrics["top5"]}, step=state.step)
                row.update(test_top1=test_metrics["top1"], test_top5=test_metrics["top5"])
                if is_main:
                    bar.write(f"epoch {state.epoch}: test top-1 {test_metrics['top1']:.1f}, "
                              f"top-5 {test_metrics['top5']:.1f}")
            if summary is not None and row:
                summary.append(row)
            if stop_reason is None and (state.batch_in_epoch == 0 or preempt.requested or state.step >= total_steps):
                save_checkpoint(accelerator, run_dir, state, config=config_dict, keep=cfg.train.keep_checkpoints)
            if preempt.requested:
                stop_reason = f"received {preempt.requested}: checkpoint saved at step {state.step}"
    bar.close()
    if stop_reason and stop_reason.startswith("non-finite"):
        logger.error(stop_reason, main_process_only=True)
        accelerator.end_training()
        return 1
    if frozen_reference is not None:
        assert_unchanged(net.backbone, frozen_reference)  # raises BackboneChangedError
        logger.info("frozen backbone check: all backbone tensors bit-identical to the checkpoint's",
                    main_process_only=True)
    if preempt.requested:
        accelerator.end_training()
        if is_main:
            print(f"\n{stop_reason}; resume with --resume auto --output-dir {run_dir}")
        return 0

    # --- final test: 10 clips per video, gathered from every process -------------------------
    test_metrics, cm = test_pass()
    accelerator.log({"test/top1": test_metrics["top1"], "test/top5": test_metrics["top5"]}, step=state.step)
    accelerator.end_training()
    if not is_main:
        return 0
    figure = save_confusion_figure(cm, run_dir / "confusion.png", class_names=class_names,
                                   title=f"{task} {backbone_name}: top-1 {test_metrics['top1']:.1f}%")
    row_labels = {"method": cfg.eval.method or method_label(ckpt_cfg, kind=report.kind, source=report.source),
                  "backbone": backbone_name,
                  "pretrain_data": cfg.eval.pretrain_data or pretrain_data_label(ckpt_cfg, kind=report.kind),
                  "dataset": dataset_label(cfg.data.format, cfg.data.split_id)}
    row = write_results(run_dir, task=task, metrics=test_metrics, labels=row_labels, config=config_dict,
                        extra={"weights": report.as_dict(), "steps": state.step, "epochs": state.epoch,
                               "confusion_matrix": cm.tolist(), "frozen_backbone_checked": frozen})
    print(f"\ndone: {state.step} steps, {state.epoch} epochs; test on {test_metrics['num_videos']} videos x "
          f"{cfg.eval.num_clips} clips: top-1 {test_metrics['top1']:.2f}%, top-5 {test_metrics['top5']:.2f}%, "
          f"mean class {test_metrics['mean_class_acc']:.2f}%")
    print(markdown_header(task))
    print(row)
    print(f"  results     : {run_dir / 'results.json'} (+ results.md)")
    print(f"  confusion   : {figure}")
    print(f"  TensorBoard : tensorboard --logdir {run_dir / 'tb'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Finetuning and the linear probe (spec section 8): one run, two protocols.

A pretrained backbone gets a new classifier and trains on action labels through the shared
training loop (:func:`dali_fame.engine.loop.train`); every ``eval.eval_every`` epochs and at the
end, a test pass scores ``eval.num_clips`` uniformly spaced clips per test video (softmax
averaged), gathered from every process as tensors.

- ``task="finetune"``: all layers train, dropout ``model.dropout`` before the last FC.
- ``task="linear_probe"``: the backbone is frozen (eval mode, no gradients, BatchNorm statistics
  fixed) and its features L2-normalised; only the FC trains. Strict: loading must leave exactly
  the classifier's keys missing, and after training every backbone tensor must be bit-identical
  to the checkpoint's (the run fails otherwise).

Training clips: one ``clip_len x stride`` clip per video per epoch with the loader's random
resized crop + horizontal flip; finetuning then applies the released recipe's grayscale (p 0.2)
and colour jitter (0.4, 0.4, 0.4, 0.1, p 0.8) unless ``eval.color_augment`` is false (the probe:
never), then normalisation. The train and test splits must not share videos
(:mod:`dali_fame.eval.splits`). Outputs in
``output_dir``: config.yaml, checkpoints/, metrics.jsonl, summary.csv (one row per epoch with the
ledger counts and the test pass columns), tb/, results.json + results.md, confusion.png.

Extra test sets (``eval.extra_test_sets``, :mod:`dali_fame.eval.testsets`) are checked at
start-up and scored after the final test pass with the same model; each gets its column group in
results.md, its entry in results.json's ``test_sets``, a confusion_<name>.png and its share of
one console line: ``top-1 swapped-scene 0.0% | same-scene 83.3% (chance 12.5%)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from dali_fame.augment import ClipAugment
from dali_fame.config import flatten, save_config, to_dict
from dali_fame.engine.data import build_loader, load_split
from dali_fame.engine.logs import setup_logging
from dali_fame.engine.loop import (
    StepOutput,
    agreed_error,
    report_replaced,
    restore,
    step_generator,
    train,
)
from dali_fame.eval.classify import CLASSIFIER_KEYS, VideoClassifier
from dali_fame.eval.config import EvalConfig, setting_mismatches
from dali_fame.eval.inference import gather_indexed, multiclip_pass, normalize_clips
from dali_fame.eval.metrics import classification_results, save_confusion_figure, topk_accuracy
from dali_fame.eval.results import (
    dataset_label,
    markdown_header,
    method_label,
    pretrain_data_label,
    write_results,
)
from dali_fame.eval.splits import resolve_eval_splits
from dali_fame.eval.testsets import EvalSet, load_test_sets, side_by_side
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

TASKS = ("finetune", "linear_probe")
#: summary.csv columns the test pass fills (empty in epochs without one)
TEST_COLUMNS = ("test_top1", "test_top5")


def run_finetune(cfg: EvalConfig, *, pretrained_from_cli: bool, resume: str | None) -> int:
    """Train a classifier on a pretrained backbone and test it; returns the exit code (0).

    Args:
        cfg: a validated config (:func:`dali_fame.eval.config.load_eval_config`) whose
            ``task`` is "finetune" or "linear_probe".
        pretrained_from_cli: ``eval.pretrained`` came from ``--pretrained`` (a missing
            checkpoint is then an error, not a loud random-init fallback).
        resume: None, "auto" (the newest checkpoint of ``cfg.output_dir``) or a checkpoint dir.

    Raises:
        SystemExit: with the message, for what the user must fix (config, weights, resume) and,
            on every rank with the same message, when training stopped on an error (a data
            failure, a non-finite loss).
        BackboneChangedError: the probe's frozen backbone changed.
    """
    task = cfg.task
    if task not in TASKS:
        raise ValueError(f"run_finetune runs {' or '.join(TASKS)}, not {task!r}")
    try:
        ckpt, ckpt_warning = choose_checkpoint(cfg.eval.pretrained, from_cli=pretrained_from_cli)
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
    log_file = setup_logging(run_dir, rank=accelerator.process_index, is_main=accelerator.is_main_process,
                             script=task)
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
    try:  # refuse, before any training, to test on the training videos unless asked for
        train_split, test_split = resolve_eval_splits(
            load_split(cfg.data, split=cfg.eval.train_split, is_main=is_main, wait=accelerator.wait_for_everyone),
            load_split(cfg.data, split=cfg.eval.test_split, is_main=is_main, wait=accelerator.wait_for_everyone),
            holdout=cfg.eval.holdout, seed=cfg.eval.holdout_seed,
            same_split=cfg.eval.test_split == cfg.eval.train_split)
        test_sets = load_test_sets(cfg, train=train_split, test=test_split, is_main=is_main,
                                   wait=accelerator.wait_for_everyone, log=logger)
    except ValueError as err:
        raise SystemExit(f"split error: {err}") from None
    if cfg.eval.test_split == cfg.eval.train_split:
        logger.warning(f"testing on the training split ({cfg.eval.train_split}): a check of fitting, "
                       f"not a result", main_process_only=True)
    class_names = train_split.class_names
    common = {"seed": cfg.train.seed, "rank": rank, "world_size": world,
              "local_rank": accelerator.local_process_index}
    train_loader, loader_choice = build_loader(train_split.records, cfg.data, batch_size=local_batch,
                                               mode="train", num_views=1, **common)
    test_loaders = {s.name: build_loader(s.split.records, cfg.data, batch_size=cfg.eval.batch_size, mode="eval",
                                         eval_clips=cfg.eval.num_clips, drop_last=False, **common)[0]
                    for s in test_sets}
    main_set = test_sets[0]
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise SystemExit(f"config error: {len(train_split.records)} training videos give no full batch of "
                         f"{local_batch} per process: lower train.batch_size")

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

    state = restore(accelerator, resume=resume, run_dir=run_dir)
    config_dict = to_dict(cfg)
    accelerator.init_trackers("tb", config=flatten(config_dict))
    logger.info(f"{task}: backbone {backbone_name}, {len(class_names)} classes, {len(train_split.records)} train / "
                f"{len(test_split.records)} test videos, {steps_per_epoch} steps/epoch, {world} process(es), "
                f"batch {cfg.train.batch_size} ({local_batch}/process), loader {loader_choice.name}",
                main_process_only=True)
    for s in test_sets[1:]:
        logger.info(f"extra test set {s.name}: {len(s.split.records)} videos from {s.source}", main_process_only=True)

    # The released finetune recipe: grayscale then colour jitter, no blur (eval.color_augment).
    augment = (ClipAugment(crop=cfg.data.crop, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4,
                           hue=0.1, gray_p=0.2, blur_p=0.0) if cfg.eval.color_augment else None)

    def classify_step(batch: dict, step: int) -> StepOutput:
        """views uint8 (B, 1, T, H, W, 3), labels int64 (B,) -> cross-entropy and top-1 (%)."""
        views = batch["views"].to(accelerator.device, non_blocking=True)
        labels = batch["labels"].to(accelerator.device)
        if augment is None:
            x = normalize_clips(views[:, 0])  # (B, 3, T, H, W) float
        else:
            x = augment(views[:, 0], generator=step_generator(cfg.train.seed, step, rank))
        with accelerator.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), labels)
        acc1 = topk_accuracy(logits.detach().float(), labels, ks=(1,))[1]
        return StepOutput(loss=loss, metrics={"acc1": acc1})

    def test_pass(test_set: EvalSet = main_set) -> tuple[dict, torch.Tensor]:
        """Score every video of ``test_set``: (metrics of classification_results, confusion int64 (C, C))."""
        net.eval()
        local, error = None, None
        try:
            local = multiclip_pass(net, test_loaders[test_set.name], device=accelerator.device, reduce="softmax",
                                   autocast=accelerator.autocast, progress=is_main,
                                   desc=f"test {test_set.name} ({cfg.eval.num_clips} clips)")
        except Exception as err:  # a rank that fails must still meet the others before the gather
            logger.exception(f"test pass failed on rank {rank}", main_process_only=False)
            error = f"the test pass failed: {type(err).__name__}: {err}"
        net.train()
        error = agreed_error(accelerator, error)
        if error is not None:
            accelerator.end_training()
            raise SystemExit(f"error: {error}")
        out = gather_indexed(accelerator, local)  # (N, C) scores of every test video, by index
        expected = len(test_set.split.records)
        if out["index"].numel() != expected:
            logger.warning(f"{expected - out['index'].numel()} videos of test set {test_set.name} failed to decode "
                           f"and are not scored", main_process_only=True)
        return classification_results(out["outputs"], out["labels"], class_names=class_names)

    def after_epoch(state, *, last: bool) -> dict:
        # the final test pass runs after training; in between, every eval_every epochs
        if last or not cfg.eval.eval_every or state.epoch % cfg.eval.eval_every:
            return {}
        test_metrics, _ = test_pass()
        accelerator.log({"test/top1": test_metrics["top1"], "test/top5": test_metrics["top5"]}, step=state.step)
        if is_main:
            tqdm.write(f"epoch {state.epoch}: test top-1 {test_metrics['top1']:.1f}, "
                       f"top-5 {test_metrics['top5']:.1f}")
        return {"test_top1": test_metrics["top1"], "test_top5": test_metrics["top5"]}

    run = train(accelerator=accelerator, model=model, optimizer=optimizer, loader=train_loader,
                step_fn=classify_step, state=state, run_dir=run_dir, config=config_dict, train_cfg=cfg.train,
                optim_cfg=cfg.optim, global_batch=cfg.train.batch_size, desc=task, end_of_epoch=after_epoch,
                epoch_columns=TEST_COLUMNS)
    if not run.ok:  # the same message on every rank, then a non-zero exit everywhere
        accelerator.end_training()
        raise SystemExit(f"error: {run.message}")
    if frozen_reference is not None:
        assert_unchanged(net.backbone, frozen_reference)  # raises BackboneChangedError
        logger.info("frozen backbone check: all backbone tensors bit-identical to the checkpoint's",
                    main_process_only=True)
    if run.stop == "preempted":
        accelerator.end_training()
        if is_main:
            print(f"\n{run.message}; resume with --resume auto --output-dir {run_dir}")
            for line in report_replaced(run.replaced):
                print(line)
        return 0

    # --- final test: 10 clips per video, gathered from every process; then the extra sets ------
    scored = {s.name: test_pass(s) for s in test_sets}
    test_metrics, cm = scored[main_set.name]
    accelerator.log({"test/top1": test_metrics["top1"], "test/top5": test_metrics["top5"]}, step=state.step)
    for s in test_sets[1:]:
        accelerator.log({f"test_{s.name}/top1": scored[s.name][0]["top1"],
                         f"test_{s.name}/top5": scored[s.name][0]["top5"]}, step=state.step)
    accelerator.end_training()
    if not is_main:
        return 0
    figure = save_confusion_figure(cm, run_dir / "confusion.png", class_names=class_names,
                                   title=f"{task} {backbone_name}: top-1 {test_metrics['top1']:.1f}%")
    for s in test_sets[1:]:
        save_confusion_figure(scored[s.name][1], run_dir / f"confusion_{s.name}.png", class_names=class_names,
                              title=f"{task} {backbone_name}, {s.name}: top-1 {scored[s.name][0]['top1']:.1f}%")
    per_set = ({s.name: {**scored[s.name][0], "source": s.source, "confusion_matrix": scored[s.name][1].tolist()}
                for s in test_sets} if len(test_sets) > 1 else None)
    row_labels = {"method": cfg.eval.method or method_label(ckpt_cfg, kind=report.kind, source=report.source),
                  "backbone": backbone_name,
                  "pretrain_data": cfg.eval.pretrain_data or pretrain_data_label(ckpt_cfg, kind=report.kind),
                  "dataset": dataset_label(cfg.data.format, cfg.data.split_id)}
    row = write_results(run_dir, task=task, metrics=test_metrics, labels=row_labels, config=config_dict,
                        extra={"weights": report.as_dict(), "steps": state.step, "epochs": state.epoch,
                               "confusion_matrix": cm.tolist(), "frozen_backbone_checked": frozen,
                               "replaced_videos": [path for path, _ in run.replaced]},
                        test_sets=per_set)
    print(f"\ndone: {state.step} steps, {state.epoch} epochs; test on {test_metrics['num_videos']} videos x "
          f"{cfg.eval.num_clips} clips: top-1 {test_metrics['top1']:.2f}%, top-5 {test_metrics['top5']:.2f}%, "
          f"mean class {test_metrics['mean_class_acc']:.2f}%")
    if per_set:
        print(side_by_side({name: m["top1"] for name, m in per_set.items()}, metric="top-1",
                           chance=100.0 / len(class_names)))
    print(markdown_header(task, list(per_set or [])))
    print(row)
    print(f"  results     : {run_dir / 'results.json'} (+ results.md)")
    print(f"  confusion   : {figure}" + "".join(f", confusion_{name}.png" for name in list(per_set or [])[1:]))
    print(f"  TensorBoard : tensorboard --logdir {run_dir / 'tb'}")
    print(f"  full log    : {log_file}")
    for line in report_replaced(run.replaced):
        print(line)
    return 0

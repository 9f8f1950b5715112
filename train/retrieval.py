r"""Video retrieval with a pretrained backbone (spec section 8), with Accelerate. No training.

Every video of the training split (the gallery) and of the test split (the queries) becomes
one feature: the mean of its 10 uniformly spaced 16 x 2 clips' L2-normalised backbone features
(short side resized + centre crop). Each set is centred by its own mean and L2-normalised;
queries rank the gallery by cosine similarity; a query is a hit at k when any of its k nearest
gallery videos has its class. Reports R@1, R@5, R@10, R@20, R@50, and saves the nearest
neighbours of every query (neighbors.json) for a visual report. Extra test sets
(eval.extra_test_sets; the demo: the test videos on their own scene) query the same gallery
after the main queries: one column group each in results.md, test_sets in results.json,
neighbors_<name>.json, and one console line `R@1 swapped-scene ...% | same-scene ...% (chance ...%)`.

CPU demo (no arguments: built-in synthetic data, runs/demo_cpu/checkpoints of the default
`accelerate launch train/pretrain.py`):
    accelerate launch train/retrieval.py
One GPU, UCF101 split 1, R(2+1)D pretrained on Kinetics-400 (paper: R@1 64.6 ... R@50 94.2):
    accelerate launch train/retrieval.py --config configs/retrieval_ucf101.yaml \
        --data-root /data/ucf101/videos --dataset-format ucf101 --set data.annotation_dir=/data/ucf101/splits \
        --pretrained runs/fame_k400_r2plus1d/checkpoints
8 GPUs (each process encodes its shard; features are gathered as tensors):
    accelerate launch --multi_gpu --num_processes 8 train/retrieval.py --config configs/retrieval_hmdb51.yaml \
        --data-root /data/hmdb51 --dataset-format hmdb51 --pretrained runs/fame_k400_r2plus1d/checkpoints
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from dali_fame.config import flatten, save_config, to_dict
from dali_fame.engine.data import build_loader, load_split
from dali_fame.engine.flags import add_run_flags
from dali_fame.engine.logs import run_main, setup_logging
from dali_fame.eval.config import (
    RECALL_KS,
    cli_overrides,
    load_eval_config,
    setting_mismatches,
)
from dali_fame.eval.inference import gather_indexed, multiclip_pass
from dali_fame.eval.results import (
    dataset_label,
    markdown_header,
    method_label,
    pretrain_data_label,
    write_results,
)
from dali_fame.eval.retrieval import chance_recall_at_1, evaluate_retrieval
from dali_fame.eval.splits import resolve_eval_splits
from dali_fame.eval.testsets import load_test_sets, side_by_side
from dali_fame.eval.weights import (
    WeightLoadError,
    check_load,
    choose_backbone,
    choose_checkpoint,
    load_pretrained,
    read_checkpoint_config,
)
from dali_fame.gpu_check import check_gpu_usable
from dali_fame.models import build_backbone

logger = get_logger("retrieval")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "retrieval_demo.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p, default_config=str(DEFAULT_CONFIG), training=False, pretrained=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_gpu_usable(loader_flag=args.loader)  # a GPU torch cannot use: stop now, with the fix
    try:
        cfg = load_eval_config(args.config, task="retrieval", overrides=cli_overrides(args))
        ckpt, ckpt_warning = choose_checkpoint(cfg.eval.pretrained, from_cli=args.pretrained is not None)
        ckpt_cfg = read_checkpoint_config(ckpt)
        backbone_name = choose_backbone(requested=cfg.model.backbone, checkpoint_config=ckpt_cfg,
                                        fallback=cfg.model.fallback_backbone)
    except ValueError as err:  # ConfigError is a ValueError
        raise SystemExit(f"config error: {err}") from None
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with="tensorboard",
                              project_dir=str(run_dir))
    log_file = setup_logging(run_dir, rank=accelerator.process_index, is_main=accelerator.is_main_process,
                             script="retrieval")
    is_main = accelerator.is_main_process
    set_seed(cfg.train.seed)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if ckpt_warning:
        logger.warning(ckpt_warning, main_process_only=True)
    for note in setting_mismatches(cfg.data, ckpt_cfg):
        logger.warning(f"evaluating with {note}", main_process_only=True)

    # --- model: the pretrained backbone alone; every one of its keys must load ---------------
    backbone = build_backbone(backbone_name)
    try:
        report = load_pretrained(backbone, ckpt, prefix="")
        check_load(report, allowed_missing=())  # every backbone key must load
    except WeightLoadError as err:
        raise SystemExit(f"weights error: {err}") from None
    logger.info(f"weights: {report.summary()}", main_process_only=True)
    backbone.to(accelerator.device).eval()

    # --- splits first: refuse to test on the training videos before decoding anything -------
    try:
        gallery, queries = resolve_eval_splits(
            load_split(cfg.data, split=cfg.eval.train_split, is_main=is_main, wait=accelerator.wait_for_everyone),
            load_split(cfg.data, split=cfg.eval.test_split, is_main=is_main, wait=accelerator.wait_for_everyone),
            holdout=cfg.eval.holdout, seed=cfg.eval.holdout_seed,
            same_split=cfg.eval.test_split == cfg.eval.train_split)
        test_sets = load_test_sets(cfg, train=gallery, test=queries, is_main=is_main,
                                   wait=accelerator.wait_for_everyone, log=logger)
    except ValueError as err:
        raise SystemExit(f"split error: {err}") from None

    # --- features: 10-clip averages of the gallery and of every query set, gathered ----------
    features = {}
    splits = {}
    # the main test split queries as "queries", an extra set as "queries <name>"
    role_of = {s.name: "queries" if s is test_sets[0] else f"queries {s.name}" for s in test_sets}
    roles = [("gallery", cfg.eval.train_split, gallery)]
    roles += [(role_of[s.name], cfg.eval.test_split, s.split) for s in test_sets]
    for role, split_name, split in roles:
        loader, choice = build_loader(split.records, cfg.data, batch_size=cfg.eval.batch_size, mode="eval",
                                      eval_clips=cfg.eval.num_clips, drop_last=False, seed=cfg.train.seed,
                                      rank=accelerator.process_index, world_size=accelerator.num_processes,
                                      local_rank=accelerator.local_process_index)
        local = multiclip_pass(backbone, loader, device=accelerator.device, reduce="l2",
                               autocast=accelerator.autocast, progress=is_main,
                               desc=f"{role} ({split_name}, {cfg.eval.num_clips} clips)")
        features[role] = gather_indexed(accelerator, local)
        splits[role] = split
        missing = len(split.records) - features[role]["index"].numel()
        if missing:
            logger.warning(f"{missing} {role} videos failed to decode and are left out", main_process_only=True)
    logger.info(f"backbone {backbone_name}: {features['gallery']['index'].numel()} gallery, "
                f"{features['queries']['index'].numel()} query videos, loader {choice.name}",
                main_process_only=True)
    for s in test_sets[1:]:
        logger.info(f"extra test set {s.name}: {features[role_of[s.name]]['index'].numel()} query videos from "
                    f"{s.source}", main_process_only=True)

    # --- recall@k and the neighbours of every query, per query set ------------------------------
    g = features["gallery"]
    names = splits["gallery"].class_names
    g_records = [splits["gallery"].records[i] for i in g["index"].tolist()]
    per_set, neighbor_files = {}, []
    for s in test_sets:
        role = role_of[s.name]
        q = features[role]
        set_recalls, sims, idx = evaluate_retrieval(q["outputs"], q["labels"], g["outputs"], g["labels"],
                                                    ks=RECALL_KS, keep=cfg.eval.neighbors)
        q_records = [splits[role].records[i] for i in q["index"].tolist()]
        neighbors = []
        for qi, rec in enumerate(q_records):
            neighbors.append({
                "query": rec.video_id, "path": rec.path, "label": rec.label, "class": names[rec.label],
                "neighbors": [{"video_id": g_records[j].video_id, "path": g_records[j].path,
                               "label": g_records[j].label, "class": names[g_records[j].label],
                               "similarity": round(sim, 5)}
                              for sim, j in zip(sims[qi, :cfg.eval.neighbors].tolist(),
                                                idx[qi, :cfg.eval.neighbors].tolist())],
            })
        neighbor_files.append((run_dir / ("neighbors.json" if s is test_sets[0] else f"neighbors_{s.name}.json"),
                               neighbors))
        per_set[s.name] = {**set_recalls, "num_queries": len(q_records), "source": s.source,
                           "chance_R@1": chance_recall_at_1(q["labels"], g["labels"])}
    main = per_set[test_sets[0].name]
    recalls = {k: main[k] for k in set_recalls}
    num_queries = main["num_queries"]
    config_dict = to_dict(cfg)
    accelerator.init_trackers("tb", config=flatten(config_dict))
    accelerator.log({f"retrieval/{k}": v for k, v in recalls.items()}, step=0)
    for s in test_sets[1:]:
        accelerator.log({f"retrieval_{s.name}/{k}": per_set[s.name][k] for k in recalls}, step=0)
    accelerator.end_training()
    if not is_main:
        return 0
    for path, neighbors in neighbor_files:
        path.write_text(json.dumps(neighbors, indent=1) + "\n")
    labels = {"method": cfg.eval.method or method_label(ckpt_cfg, kind=report.kind, source=report.source),
              "backbone": backbone_name,
              "pretrain_data": cfg.eval.pretrain_data or pretrain_data_label(ckpt_cfg, kind=report.kind),
              "dataset": dataset_label(cfg.data.format, cfg.data.split_id)}
    extra_sets = len(test_sets) > 1
    row = write_results(run_dir, task="retrieval", metrics=recalls, labels=labels, config=config_dict,
                        extra={"weights": report.as_dict(), "num_queries": num_queries,
                               "num_gallery": len(g_records)},
                        test_sets=per_set if extra_sets else None)
    print(f"\ndone: {num_queries} queries against {len(g_records)} gallery videos ({cfg.eval.num_clips} clips each): "
          + ", ".join(f"{k} {v:.1f}" for k, v in recalls.items()))
    if extra_sets:
        print(side_by_side({name: m["R@1"] for name, m in per_set.items()}, metric="R@1",
                           chance=main["chance_R@1"]))
    print(markdown_header("retrieval", list(per_set) if extra_sets else None))
    print(row)
    print(f"  results     : {run_dir / 'results.json'} (+ results.md)")
    print(f"  neighbours  : {', '.join(str(path) for path, _ in neighbor_files)}")
    print(f"  TensorBoard : tensorboard --logdir {run_dir / 'tb'}")
    print(f"  full log    : {log_file}")
    return 0


if __name__ == "__main__":
    run_main(main)

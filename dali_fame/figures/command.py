"""``dali-fame figure KIND``: the paper's figures as commands, PNGs written to ``--out``.

Kinds (one module each in :mod:`dali_fame.figures`):

* ``masks``: FAME masks and merged clips over frames (paper Figure 6 kind);
* ``cam``: class-agnostic activation maps of one or more encoders on clips (Figure 1 kind);
* ``temporal``: temporal-kernel weight distributions per layer of R(2+1)D checkpoints (Figure 3);
* ``retrieval``: queries with their top-3 nearest training videos, hits and misses (Figure 8).

Data and clip settings are the evaluations': an evaluation YAML (default
``configs/retrieval_demo.yaml``: the built-in synthetic data, 8 frames of 64 x 64), overridden by
``--data-root``, ``--dataset-format`` and ``--set KEY=VALUE`` exactly as in ``train/*.py``;
``--pretrained`` takes anything the evaluations accept. Each command prints the files it wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dali_fame.config import DATASET_FORMATS

_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "retrieval_demo.yaml"
DEFAULT_CONFIG = str(_CONFIG) if _CONFIG.is_file() else None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/figures", help="folder for the PNGs (default: runs/figures)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"evaluation YAML giving the data / clip settings (default: {DEFAULT_CONFIG})")
    p.add_argument("--data-root", help="dataset root (config: data.root); default: built-in synthetic data")
    p.add_argument("--dataset-format", choices=[f for f in DATASET_FORMATS if f != "synthetic"])
    p.add_argument("--loader", choices=("auto", "cpu", "dali"))
    p.add_argument("--seed", type=int, help="clip sampling / permutation seed (config: train.seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any setting")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True

    p = kinds.add_parser("masks", help="FAME masks and merged clips over frames (Figure 6 kind)")
    _common(p)
    p.add_argument("--split", default="train", help="split to take the clips from (default: train)")
    p.add_argument("--clips", type=int, default=4, help="videos (one clip each, one PNG each; >= 2)")
    p.add_argument("--frames", type=int, default=8, help="frames per figure (columns)")
    p.add_argument("--beta", type=float, default=0.5, help="foreground fraction (default 0.5)")
    p.add_argument("--variant", default="fame", choices=("fame", "seed", "gauss", "grid"))
    p.add_argument("--legacy-hue", action="store_true", help="the released code's hue bins")

    p = kinds.add_parser("cam", help="activation maps of encoders on clips (Figure 1 kind)")
    _common(p)
    p.add_argument("--pretrained", action="append", metavar="[NAME=]PATH",
                   help="checkpoint (repeat for several, side by side); 'none' = random init; "
                        "default: the config's eval.pretrained")
    p.add_argument("--backbone", help="backbone (default: the checkpoint's, else model.fallback_backbone)")
    p.add_argument("--split", default="test", help="split to take the clips from (default: test)")
    p.add_argument("--clips", type=int, default=2, help="videos (one PNG each)")
    p.add_argument("--frames", type=int, default=8, help="frames per figure (columns)")
    p.add_argument("--reduce", default="mean-abs", choices=("mean-abs", "l2"),
                   help="channel reduction of the last feature map")

    p = kinds.add_parser("temporal", help="temporal-kernel weights per layer of R(2+1)D checkpoints (Figure 3 kind)")
    p.add_argument("--out", default="runs/figures", help="folder for the PNG (default: runs/figures)")
    p.add_argument("--pretrained", action="append", required=True, metavar="[NAME=]PATH",
                   help="checkpoint, repeat for several; 'NAME=none' = random init")
    p.add_argument("--backbone", help="backbone (default: the checkpoint's, else r2plus1d_18)")
    p.add_argument("--stat", default="abs", choices=("abs", "kernel-l2"),
                   help="abs: |w| of every temporal weight; kernel-l2: L2 norm of each (t,1,1) kernel")
    p.add_argument("--seed", type=int, default=0, help="seed of a random init")

    p = kinds.add_parser("retrieval", help="queries and their top-3 neighbours (Figure 8 kind)")
    _common(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--neighbors", metavar="PATH", help="a retrieval run's neighbors.json (or its folder)")
    src.add_argument("--pretrained", metavar="PATH",
                     help="compute the neighbours here with this checkpoint ('none' = random init; "
                          "default when --neighbors is not given: the config's eval.pretrained)")
    p.add_argument("--backbone", help="backbone (default: the checkpoint's, else model.fallback_backbone)")
    p.add_argument("--queries", help="comma-separated query positions to show (default: 4 spread "
                   "over the queries)")
    p.add_argument("--top", type=int, default=3, help="neighbours per query (default 3)")
    p.add_argument("--frames", type=int, default=1, help="frames per video (1: the middle frame)")


def _named(value: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path (or one that exists with an '=') -> (None, it)."""
    if "=" in value and not Path(value).exists():
        name, path = value.split("=", 1)
        if name and path:
            return name, path
    return None, value


def _eval_config(args):
    from dali_fame.eval.config import cli_overrides, load_eval_config

    return load_eval_config(args.config, task="retrieval", overrides=cli_overrides(args))


def _default_pretrained(cfg) -> str:
    """The config's eval.pretrained as the evaluations read it (missing demo run: random init)."""
    from dali_fame.eval.weights import choose_checkpoint

    ckpt, warning = choose_checkpoint(cfg.eval.pretrained, from_cli=False)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return str(ckpt) if ckpt is not None else "none"


def _encoders(values: list[str], *, backbone: str | None, fallback: str, seed: int):
    from dali_fame.figures.common import load_encoder

    out = []
    for value in values:
        name, path = _named(value)
        enc = load_encoder(path, backbone=backbone, fallback=fallback, name=name, seed=seed)
        print(f"weights {enc.name}: {enc.report.summary()} [{enc.backbone_name}]")
        out.append(enc)
    return out


def _print_paths(paths) -> None:
    for path in paths:
        print(f"wrote {path}")


def _masks(args) -> int:
    from dali_fame.figures.common import load_clips
    from dali_fame.figures.masks import masks_figure

    cfg = _eval_config(args)
    if args.clips < 2:
        raise ValueError(f"--clips must be >= 2 (FAME takes each background from another clip), got {args.clips}")
    clips = load_clips(cfg.data, split=args.split, count=args.clips, seed=cfg.train.seed)
    names = [r.video_id for r in clips.records]
    print(f"masks: {len(names)} clips {tuple(clips.clips.shape[1:])} of {cfg.data.root or 'the built-in synthetic data'} "
          f"({args.split}), FAME variant {args.variant}, beta {args.beta} (torch reference, CPU)")
    _print_paths(masks_figure(clips.clips, names, out_dir=args.out, beta=args.beta, variant=args.variant,
                              legacy_hue=args.legacy_hue, frames=args.frames, seed=cfg.train.seed))
    return 0


def _cam(args) -> int:
    from dali_fame.figures.cam import cam_figure
    from dali_fame.figures.common import load_clips

    cfg = _eval_config(args)
    sources = args.pretrained or [_default_pretrained(cfg)]
    encoders = _encoders(sources, backbone=args.backbone or cfg.model.backbone,
                         fallback=cfg.model.fallback_backbone, seed=cfg.train.seed)
    clips = load_clips(cfg.data, split=args.split, count=args.clips, seed=cfg.train.seed)
    names = [r.video_id for r in clips.records]
    print(f"cam: {len(names)} clips {tuple(clips.clips.shape[1:])} ({args.split}), {len(encoders)} encoder(s), {args.reduce}")
    _print_paths(cam_figure(clips.clips, names, encoders, out_dir=args.out, reduce=args.reduce,
                            frames=args.frames))
    return 0


def _temporal(args) -> int:
    from dali_fame.figures.temporal import temporal_figure

    encoders = _encoders(args.pretrained, backbone=args.backbone, fallback="r2plus1d_18", seed=args.seed)
    path, summary = temporal_figure(encoders, out_dir=args.out, stat=args.stat)
    layers = list(next(iter(summary.values())))
    print(f"temporal ({args.stat}), median per layer:")
    print("| checkpoint | " + " | ".join(layers) + " |")
    print("|---|" + "---|" * len(layers))
    for name, per_layer in summary.items():
        print(f"| {name} | " + " | ".join(f"{per_layer[la]['median']:.4f}" for la in layers) + " |")
    _print_paths([path, Path(args.out) / "temporal.json"])
    return 0


def _retrieval(args) -> int:
    import json

    from dali_fame.figures.retrieval import compute_neighbors, read_neighbors, retrieval_figure

    try:
        queries = [int(q) for q in args.queries.split(",") if q.strip()] if args.queries else None
    except ValueError:
        raise ValueError(f"--queries must be comma-separated integers, got {args.queries!r}") from None
    if args.neighbors:
        entries, title = read_neighbors(args.neighbors), f"neighbours from {args.neighbors}"
        written = []
    else:
        cfg = _eval_config(args)
        (encoder,) = _encoders([args.pretrained or _default_pretrained(cfg)],
                               backbone=args.backbone or cfg.model.backbone,
                               fallback=cfg.model.fallback_backbone, seed=cfg.train.seed)
        entries, recalls = compute_neighbors(
            encoder, cfg.data, gallery_split=cfg.eval.train_split, query_split=cfg.eval.test_split,
            num_clips=cfg.eval.num_clips, batch_size=cfg.eval.batch_size, keep=max(args.top, 10),
            seed=cfg.train.seed, holdout=cfg.eval.holdout, holdout_seed=cfg.eval.holdout_seed)
        summary = ", ".join(f"{k} {v:.1f}" for k, v in recalls.items())
        print(f"retrieval: {len(entries)} queries ({cfg.eval.num_clips} clips each): {summary}")
        title = f"{encoder.name} ({encoder.backbone_name}): {summary}"
        out = Path(args.out) / "neighbors.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(entries, indent=1) + "\n")
        written = [out]
    path = retrieval_figure(entries, out_dir=args.out, queries=queries, top=args.top,
                            frames=args.frames, title=title)
    _print_paths([path, *written])
    return 0


_KINDS = {"masks": _masks, "cam": _cam, "temporal": _temporal, "retrieval": _retrieval}


def run(args: argparse.Namespace) -> int:
    """Make the figure; a bad file or setting is one line on stderr naming it, exit code 2."""
    try:
        return _KINDS[args.kind](args)
    except ValueError as err:  # ConfigError, WeightLoadError, CheckpointError, VideoDecodeError
        print(f"dali-fame figure {args.kind}: error: {err}", file=sys.stderr)
        return 2

r"""How long the bias metrics of one encoder take, and what one decoding pass for K saves.

On a bias world (``--preset cpu``: 1,152 videos of 32 x 32; generated once into ``--work-dir``)
with K randomly initialised backbones (``--backbone tiny``, seeds 0..K-1), in one run:

1. correctness first: :func:`evaluate_encoders` (one pass for all K) must give every encoder
   exactly the metrics a separate :func:`evaluate_encoder` call gives it;
2. the stages of one encoder: reading the world + the (cached) index, decoding + forward,
   the three probes and the other metrics;
3. K separate :func:`evaluate_encoder` calls against one :func:`evaluate_encoders` call;
4. with ``--checkpoint NAME=PATH`` (repeatable; trained encoders of the same world, e.g. the
   bench's runs), the probe's sensitivity to its one hyper-parameter: the main metrics of those
   encoders and a random-init one for C = 0.1, 1 (the fixed value), 10, 100, from one pass.

Writes ``benchmarks/results/bias_eval.json`` and ``bias_eval.md`` with the machine's load
average (the numbers are wall seconds: on a shared machine they move with its load).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bias_eval.py            # K = 4, 2 clips
    .venv/bin/python benchmarks/bench_bias_eval.py --checkpoint moco=RUN/checkpoints \
        --checkpoint supervised_balanced=RUN2/checkpoints                        # + sensitivity
    .venv/bin/python benchmarks/bench_bias_eval.py --encoders 2 --preset ci    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROBE_CS = (0.1, 1.0, 10.0, 100.0)
SENSITIVITY_KEYS = ("same_top1", "swapped_top1", "unseen_top1", "static_top1",
                    "biased_probe_swapped_top1", "scene_decode_top1", "contrasted_acc")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader's workers): unlike wall
    time, hardly moved by other jobs on a shared machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", help="world preset (cpu | ci)")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "bench_bias_eval"))
    parser.add_argument("--encoders", type=int, default=4, help="K randomly initialised backbones")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--num-clips", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="a trained encoder for the probe-sensitivity table (repeatable)")
    parser.add_argument("--results-name", default="bias_eval")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dali_fame.bias.evaluate import (
        SETS,
        evaluate_encoder,
        evaluate_encoders,
        extract_features,
        index_world,
        load_backbone,
        metrics_from_features,
        read_world,
    )
    from dali_fame.bias.world import WorldOptions, generate_world

    world = generate_world(Path(args.work_dir) / f"world_{args.preset}",
                           options=WorldOptions.preset(args.preset), workers=2)
    clip = {"clip_len": args.clip_len, "stride": args.stride, "crop": args.crop,
            "num_clips": args.num_clips, "batch_size": args.batch_size, "workers": args.workers}
    encoders = {f"seed{s}": load_backbone(None, backbone=args.backbone, seed=s)
                for s in range(args.encoders)}
    # warm-up: the index cache, the probe's first optimizer step (imports torch._dynamo)
    evaluate_encoder(encoders["seed0"], world, **clip)

    # 1. correctness: one pass for K == K separate passes, exactly
    t0, c0 = time.perf_counter(), cpu_seconds()
    separate = {name: evaluate_encoder(enc, world, **clip) for name, enc in encoders.items()}
    t_separate, c_separate = time.perf_counter() - t0, cpu_seconds() - c0
    t0, c0 = time.perf_counter(), cpu_seconds()
    together = evaluate_encoders(encoders, world, **clip)
    t_together, c_together = time.perf_counter() - t0, cpu_seconds() - c0
    mismatched = [name for name in encoders if together[name] != separate[name]]
    if mismatched:
        print(f"FAILED: evaluate_encoders differs from evaluate_encoder for {mismatched}")
        return 1

    # 2. the stages of one encoder
    t0, c0 = time.perf_counter(), cpu_seconds()
    tables = read_world(world)
    indexed = index_world(tables, clip_len=args.clip_len, stride=args.stride)
    t1, c1 = time.perf_counter(), cpu_seconds()
    records = [rec for name in SETS for rec in indexed[name][0]]
    (features,) = extract_features([encoders["seed0"]], records, clip_len=args.clip_len,
                                   stride=args.stride, crop=args.crop, num_clips=args.num_clips,
                                   batch_size=args.batch_size, workers=args.workers)
    t2, c2 = time.perf_counter(), cpu_seconds()
    per_set, start = {}, 0
    for name in SETS:
        n = len(indexed[name][0])
        per_set[name], start = features[start:start + n], start + n
    metrics_from_features(per_set, {name: indexed[name][1] for name in SETS},
                          num_classes=tables.num_classes, num_known_scenes=tables.num_known_scenes)
    t3, c3 = time.perf_counter(), cpu_seconds()

    # 4. probe sensitivity on trained encoders
    sensitivity = []
    if args.checkpoint:
        trained = {"random_init": encoders["seed0"]}
        for item in args.checkpoint:
            name, sep, path = item.partition("=")
            if not sep:
                parser.error(f"--checkpoint {item!r}: expected NAME=PATH")
            trained[name] = load_backbone(path, backbone=args.backbone)
        feats = extract_features(list(trained.values()), records, clip_len=args.clip_len,
                                 stride=args.stride, crop=args.crop, num_clips=args.num_clips,
                                 batch_size=args.batch_size, workers=args.workers)
        labels = {name: indexed[name][1] for name in SETS}
        for name, f in zip(trained, feats):
            split, start = {}, 0
            for set_name in SETS:
                n = len(indexed[set_name][0])
                split[set_name], start = f[start:start + n], start + n
            for c in PROBE_CS:
                m = metrics_from_features(split, labels, num_classes=tables.num_classes,
                                          num_known_scenes=tables.num_known_scenes,
                                          inverse_regularisation=c)
                sensitivity.append({"encoder": name, "C": c} | {key: round(m[key], 1) for key in SENSITIVITY_KEYS})

    k = args.encoders
    result = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 1)},
        "world": {"preset": args.preset, "videos": len(records), "dir": str(world.out_dir)},
        "settings": clip | {"backbone": args.backbone, "threads": args.threads},
        "one_encoder_seconds": {"read_world_and_cached_index": round(t1 - t0, 2),
                                "decode_and_forward": round(t2 - t1, 2),
                                "probes_and_metrics": round(t3 - t2, 2),
                                "total": round(t3 - t0, 2)},
        "one_encoder_cpu_seconds": {"read_world_and_cached_index": round(c1 - c0, 2),
                                    "decode_and_forward": round(c2 - c1, 2),
                                    "probes_and_metrics": round(c3 - c2, 2),
                                    "total": round(c3 - c0, 2)},
        "k_encoders": k,
        "separate_calls_seconds": round(t_separate, 2),
        "one_pass_seconds": round(t_together, 2),
        "separate_calls_cpu_seconds": round(c_separate, 2),
        "one_pass_cpu_seconds": round(c_together, 2),
        "speedup": round(t_separate / t_together, 2),
        "metrics_identical": True,
        "seed0_metrics": separate["seed0"],
        "checkpoints": args.checkpoint,
        "probe_sensitivity": sensitivity,
    }
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.results_name}.json").write_text(json.dumps(result, indent=1) + "\n")
    s, c = result["one_encoder_seconds"], result["one_encoder_cpu_seconds"]
    md = [
        f"# Bias metrics: cost of one encoder, and K = {k} encoders in one pass",
        "",
        (f"`{result['command']}` on {result['machine']['cpus']} CPUs (1-min load average at the "
        f"end: {result['machine']['load_average_1min_at_end']}); world preset `{args.preset}` "
        f"({len(records)} videos), {args.backbone} backbone, {args.num_clips} clips of "
        f"{args.clip_len} x {args.stride} at {args.crop} px, {args.workers} loader workers."),
        "",
        "CPU seconds: this process + its loader workers (hardly moved by other jobs).",
        "",
        "| stage (one encoder) | wall s | CPU s |",
        "|---|---|---|",
        f"| read the world + cached index | {s['read_world_and_cached_index']} | {c['read_world_and_cached_index']} |",
        f"| decode + forward | {s['decode_and_forward']} | {c['decode_and_forward']} |",
        f"| 3 probes + metrics | {s['probes_and_metrics']} | {c['probes_and_metrics']} |",
        f"| **total** | **{s['total']}** | **{c['total']}** |",
        "",
        f"| {k} encoders | wall s | CPU s |",
        "|---|---|---|",
        f"| {k} x `evaluate_encoder` | {result['separate_calls_seconds']} | {result['separate_calls_cpu_seconds']} |",
        f"| 1 x `evaluate_encoders` (one decoding pass) | {result['one_pass_seconds']} | {result['one_pass_cpu_seconds']} |",
        f"| speed-up (wall) | {result['speedup']}x | metrics identical (checked first) |",
        "",
    ]
    if sensitivity:
        md += ["Probe sensitivity (C = scikit-learn's inverse regularisation; the benchmark uses 1):",
               "", "| encoder | C | " + " | ".join(SENSITIVITY_KEYS) + " |",
               "|---|---|" + "---|" * len(SENSITIVITY_KEYS)]
        md += [f"| {row['encoder']} | {row['C']} | " + " | ".join(str(row[key]) for key in SENSITIVITY_KEYS)
               + " |" for row in sensitivity]
        md.append("")
    (out_dir / f"{args.results_name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

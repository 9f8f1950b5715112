r"""Does FAME reduce background bias compared with plain MoCo? (the headline experiment, CPU scale)

1. Generates (once, cached in ``--work-dir``) a synthetic motion-class dataset whose train split is
   scene-biased (``--bias-train``: a class lies on "its" scene with that probability) and whose test
   split is anti-biased (``--bias-test 0``: never on its own scene). A model that recognises the
   scene instead of the motion scores ~0% on the test split.
2. Pretrains the same tiny backbone with MoCo (``debias.method=none``), FAME (beta 0.5) and,
   optionally, BE, with identical seed, steps and settings (``train/pretrain.py`` subprocesses).
3. Evaluates every encoder and a random-init floor with ``train/linear_probe.py`` (test on the
   anti-biased test split, and on the train split as a "did it learn anything" check) and
   ``train/retrieval.py`` (test videos query the train videos: R@1, R@5, plus scene@1, the
   fraction of queries whose nearest train video lies on the query's own scene: a direct measure
   of how much the embedding is organised by background).
4. Prints a side-by-side table and writes ``benchmarks/results/bias.json`` and ``bias.md``.

Run (CPU, 2 cores, about half an hour with the defaults):
    .venv/bin/python benchmarks/bench_bias.py
Quick smoke run:
    .venv/bin/python benchmarks/bench_bias.py --epochs 2 --probe-epochs 2 --methods none,fame \
        --work-dir runs/bench_bias_smoke --results-name bias_smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train"

METHOD_LABELS = {
    "none": "MoCo (no debias)",
    "fame": "FAME (beta 0.5)",
    "be": "BE (gamma 0.3)",
    "random": "random init",
}


def _run(cmd: list[str], *, log: Path, env: dict) -> float:
    """Run one subprocess, tee its output to ``log``; return wall seconds; raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(
            cmd, check=False, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True
        )
    dt = time.time() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"command failed (exit {proc.returncode}), log {log}:\n{tail}")
    return dt


def _data_flags(data_dir: Path, cache_dir: Path) -> list[str]:
    return [
        "--data-root",
        str(data_dir / "videos"),
        "--dataset-format",
        "ucf101",
        "--set",
        f"data.annotation_dir={data_dir}",
        "--set",
        f"data.cache_dir={cache_dir}",
    ]


def _scene_table(data_dir: Path) -> dict[str, int]:
    """Absolute video path -> scene (from the generator's annotations.csv)."""
    out = {}
    with open(data_dir / "annotations.csv") as fh:
        for row in csv.DictReader(fh):
            out[str((data_dir / row["path"]).resolve())] = int(row["scene"])
            out[Path(row["path"]).stem] = int(row["scene"])
    return out


def _scene_at_1(neighbors_json: Path, scenes: dict[str, int]) -> float:
    """% of queries whose nearest gallery video lies on the query's own scene."""
    rows = json.loads(neighbors_json.read_text())
    hits = 0
    for row in rows:
        q = scenes.get(str(Path(row["path"]).resolve()), scenes.get(row["query"]))
        nb = row["neighbors"][0]
        g = scenes.get(str(Path(nb["path"]).resolve()), scenes.get(nb["video_id"]))
        hits += int(q == g)
    return 100.0 * hits / max(len(rows), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--work-dir", default="runs/bench_bias", help="dataset cache + runs (relative to the repo)"
    )
    p.add_argument(
        "--methods", default="none,fame", help="comma list of debias.method values (none,fame,be)"
    )
    p.add_argument(
        "--epochs", type=int, default=60, help="pretraining epochs (same for every method)"
    )
    p.add_argument(
        "--probe-epochs", type=int, default=30, help="linear probe epochs (milestones at 60%%/80%%)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="pretraining/probe seed (same for every method)"
    )
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--videos-per-class", type=int, default=24)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bias-train", type=float, default=1.0)
    p.add_argument("--bias-test", type=float, default=0.0)
    p.add_argument("--no-train-probe", action="store_true", help="skip the train-split probe")
    p.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra --set for every pretraining run (e.g. moco.queue_size=64)",
    )
    p.add_argument(
        "--eval-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra --set for every probe / retrieval run (e.g. data.crop=64)",
    )
    p.add_argument(
        "--results-name", default="bias", help="writes benchmarks/results/NAME.json + NAME.md"
    )
    args = p.parse_args(argv)

    t_start = time.time()
    work = (REPO / args.work_dir).resolve()
    data_dir = work / "data"
    cache_dir = work / "cache"
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("ACCELERATE_USE_CPU", None)
    py = sys.executable

    # 1. dataset (cached: regenerated only when the options differ)
    data_opts = {
        "num_classes": args.classes,
        "videos_per_class": args.videos_per_class,
        "num_frames": args.frames,
        "size": args.size,
        "codec": "h264",
        "bias_train": args.bias_train,
        "bias_test": args.bias_test,
        "seed": args.data_seed,
    }
    stamp = work / "data_options.json"
    if (
        not (data_dir / "meta.json").is_file()
        or not stamp.is_file()
        or json.loads(stamp.read_text()) != data_opts
    ):
        from dali_fame.data.synthetic import generate_dataset

        print(f"generating dataset in {data_dir} ...", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        info = generate_dataset(data_dir, **data_opts, overwrite=True)
        stamp.write_text(json.dumps(data_opts))
        realised = {"train": info.realised_bias("train"), "test": info.realised_bias("test")}
    else:
        meta = json.loads((data_dir / "meta.json").read_text())
        realised = meta.get("bias_realised", {})
    scenes = _scene_table(data_dir)
    n_train = sum(
        1 for line in (data_dir / "trainlist01.txt").read_text().splitlines() if line.strip()
    )
    n_test = sum(
        1 for line in (data_dir / "testlist01.txt").read_text().splitlines() if line.strip()
    )

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pretrain_sets = ["train.image_every=0", "train.log_every=20", *args.pretrain_set]
    probe_epochs = args.probe_epochs
    probe_sets = [
        f"optim.milestones=[{max(1, round(0.6 * probe_epochs))},{max(1, round(0.8 * probe_epochs))}]",
        "model.fallback_backbone=tiny",
        *args.eval_set,
    ]
    commands: dict[str, list[str]] = {}
    timings: dict[str, float] = {}
    cached: list[str] = []  # pretraining runs reused from an earlier invocation (same command)
    results: dict[str, dict] = {}

    def setflags(pairs: list[str]) -> list[str]:
        out = []
        for kv in pairs:
            out += ["--set", kv]
        return out

    # 2. pretraining
    for m in methods:
        run_dir = work / "runs" / f"pretrain_{m}"
        ckpts = run_dir / "checkpoints"
        cmd = [
            py,
            str(TRAIN / "pretrain.py"),
            "--config",
            str(REPO / "configs/demo_cpu.yaml"),
            "--output-dir",
            str(run_dir),
            *_data_flags(data_dir, cache_dir),
            "--epochs",
            str(args.epochs),
            "--seed",
            str(args.seed),
            "--set",
            f"debias.method={m}",
            *setflags(pretrain_sets),
        ]
        commands[f"pretrain_{m}"] = cmd
        done_marker = run_dir / "bench_done.json"
        if done_marker.is_file() and json.loads(done_marker.read_text()).get("cmd") == cmd[1:]:
            timings[f"pretrain_{m}"] = json.loads(done_marker.read_text())["seconds"]
            cached.append(m)
            print(f"[{time.time() - t_start:6.0f}s] pretrain {m}: cached ({run_dir})", flush=True)
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            print(
                f"[{time.time() - t_start:6.0f}s] pretrain {m} ({args.epochs} epochs) ...",
                flush=True,
            )
            timings[f"pretrain_{m}"] = _run(cmd, log=work / "logs" / f"pretrain_{m}.log", env=env)
            done_marker.write_text(
                json.dumps({"cmd": cmd[1:], "seconds": timings[f"pretrain_{m}"]})
            )
        summary = (run_dir / "summary.csv").read_text().splitlines()
        rows = list(csv.DictReader(summary))
        results[m] = {
            "pretrain": {
                "first_epoch_loss": float(rows[0]["loss"]),
                "last_epoch_loss": float(rows[-1]["loss"]),
                "last_epoch_acc1": float(rows[-1]["acc1"]),
                "epochs": len(rows),
                "steps": int(rows[-1]["step"]),
                "seconds": round(timings[f"pretrain_{m}"], 1),
            },
            "checkpoint": str(ckpts),
        }
    results["random"] = {"checkpoint": "none"}

    # 3. evaluations
    for m in [*methods, "random"]:
        pretrained = results[m]["checkpoint"]
        extra = ["--set", "model.backbone=tiny"] if m == "random" else []
        evals = [
            ("probe_test", "linear_probe.py", "linear_probe_demo.yaml", ["eval.test_split=test"])
        ]
        if not args.no_train_probe:
            evals.append(
                (
                    "probe_train",
                    "linear_probe.py",
                    "linear_probe_demo.yaml",
                    ["eval.test_split=train"],
                )
            )
        evals.append(("retrieval", "retrieval.py", "retrieval_demo.yaml", []))
        for key, script, config, sets in evals:
            out_dir = work / "runs" / f"{key}_{m}"
            cmd = [
                py,
                str(TRAIN / script),
                "--config",
                str(REPO / "configs" / config),
                "--output-dir",
                str(out_dir),
                *_data_flags(data_dir, cache_dir),
                "--pretrained",
                pretrained,
                "--seed",
                str(args.seed),
                *extra,
                *setflags(
                    (probe_sets if script == "linear_probe.py" else list(args.eval_set)) + sets
                ),
            ]
            if script == "linear_probe.py":
                cmd += ["--epochs", str(probe_epochs)]
            commands[f"{key}_{m}"] = cmd
            print(f"[{time.time() - t_start:6.0f}s] {key} {m} ...", flush=True)
            if out_dir.exists():
                import shutil

                shutil.rmtree(out_dir)
            timings[f"{key}_{m}"] = _run(cmd, log=work / "logs" / f"{key}_{m}.log", env=env)
            res = json.loads((out_dir / "results.json").read_text())
            if script == "linear_probe.py":
                results[m][key] = {
                    "top1": res["top1"],
                    "top5": res["top5"],
                    "mean_class_acc": res.get("mean_class_acc"),
                    "num_videos": res.get("num_videos"),
                }
            else:
                results[m][key] = {k: res[k] for k in ("R@1", "R@5", "R@10", "R@20", "R@50")}
                results[m][key]["scene@1"] = _scene_at_1(out_dir / "neighbors.json", scenes)
                results[m][key]["num_queries"] = res.get("num_queries")

    wall = time.time() - t_start

    # 4. table
    cols = [
        "method",
        "pretrain loss (first -> last epoch)",
        "probe top-1 test (anti-biased)",
        "probe top-5 test",
    ]
    if not args.no_train_probe:
        cols.append("probe top-1 train (biased)")
    cols += ["retrieval R@1", "retrieval R@5", "scene@1 (NN on query's scene)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in [*methods, "random"]:
        r = results[m]
        pre = r.get("pretrain")
        cells = [
            METHOD_LABELS.get(m, m),
            f"{pre['first_epoch_loss']:.2f} -> {pre['last_epoch_loss']:.2f}" if pre else "-",
            f"{r['probe_test']['top1']:.1f}",
            f"{r['probe_test']['top5']:.1f}",
        ]
        if not args.no_train_probe:
            cells.append(f"{r['probe_train']['top1']:.1f}")
        cells += [
            f"{r['retrieval']['R@1']:.1f}",
            f"{r['retrieval']['R@5']:.1f}",
            f"{r['retrieval']['scene@1']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    chance1 = 100.0 / args.classes
    argv_str = shlex.join(
        [
            ".venv/bin/python",
            "benchmarks/bench_bias.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    settings = {
        "dataset": {
            **data_opts,
            "realised_bias": realised,
            "num_train": n_train,
            "num_test": n_test,
            "num_scenes": args.classes,
        },
        "pretrain": {
            "config": "configs/demo_cpu.yaml",
            "epochs": args.epochs,
            "seed": args.seed,
            "extra_set": pretrain_sets,
        },
        "linear_probe": {
            "config": "configs/linear_probe_demo.yaml",
            "epochs": probe_epochs,
            "extra_set": probe_sets,
        },
        "retrieval": {"config": "configs/retrieval_demo.yaml", "extra_set": list(args.eval_set)},
        "chance_top1": chance1,
    }
    payload = {
        "command": argv_str,
        "wall_seconds": round(wall, 1),
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "settings": settings,
        "results": results,
        "pretrain_reused_from_cache": cached,
        "subprocess_commands": {k: shlex.join(v) for k, v in commands.items()},
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.results_name}.json").write_text(json.dumps(payload, indent=1))
    md = [
        "# Background bias: FAME vs MoCo (CPU scale, synthetic motion classes)",
        "",
        f"Command: `{argv_str}`  ",
        f"Wall time: {wall / 60:.1f} min on {os.cpu_count()} CPU cores (shared)"
        + (
            f"; pretraining of {', '.join(cached)} reused from an earlier identical run (its time: "
            f"{sum(timings['pretrain_' + m] for m in cached) / 60:.1f} min)"
            if cached
            else ""
        )
        + ".  ",
        (
            f"Dataset: {args.classes} motion classes x {args.videos_per_class} videos ({n_train} train / {n_test} test), "
            f"{args.frames} frames {args.size}x{args.size} h264, train bias {args.bias_train} (realised "
            f"{realised.get('train', float('nan')):.2f}), test bias {args.bias_test} (realised "
            f"{realised.get('test', float('nan')):.2f}), data seed {args.data_seed}.  "
        ),
        (
            f"Pretraining: configs/demo_cpu.yaml (tiny backbone, 8 x 64 x 64 clips, colour augmentations off), "
            f"{args.epochs} epochs, seed {args.seed}, extra: {', '.join(pretrain_sets)}.  "
        ),
        (
            f"Linear probe: configs/linear_probe_demo.yaml, {probe_epochs} epochs; trained on the biased train split, "
            f"tested on the anti-biased test split (and on the train split). Retrieval: test videos query train videos.  "
        ),
        (
            f"Chance top-1 / R@1: {chance1:.1f}%. A scene-only model scores ~0% on the test split; scene@1 = % of "
            f"queries whose nearest train video lies on the query's own scene (test videos are never on their class's "
            f"scene, so a high scene@1 means the embedding is organised by background)."
        ),
        "",
        table,
        "",
        "Per-run wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        "",
    ]
    (out / f"{args.results_name}.md").write_text("\n".join(md))
    print()
    print(table)
    print(f"\nwall {wall / 60:.1f} min; wrote {out / (args.results_name + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""``dali-fame bias-bench``: pretrain every (method, seed), evaluate each encoder, report.

    dali-fame bias-bench --config configs/bias/cpu.yaml          # the full CPU table (~30 min)
    dali-fame bias-bench --config configs/bias/ci.yaml --results-dir /tmp/bias_ci   # ~1-2 min
    dali-fame bias-bench --config configs/bias/ucf101.yaml --check   # validate only, list what is missing

What one run does, in order:

1. **The world**: :func:`dali_fame.bias.world.generate_world` with the config's ``world``
   options (every option stated in the config; cached: the same options are a no-op), or an
   existing world directory (``world_dir``: real data laid out as the world contract).
2. **The runs**, ``parallel`` at a time, each a subprocess with ``threads_per_job`` torch threads:
   ``train/pretrain.py`` on ``lists/train_biased.csv`` for every method of :data:`METHODS` and
   seed (the method's ``--set debias.*`` on top of the ``pretrain`` recipe), and the supervised
   references ``train/finetune.py --pretrained none`` on ``lists/supervised_{balanced,biased}.csv``.
3. **The evaluations**, in this process (one thread per job slot): :func:`load_backbone` +
   :func:`evaluate_encoder` of :mod:`dali_fame.bias.evaluate` for every trained encoder and a
   randomly initialised one per seed (``random_init``).
4. **The report** (:mod:`dali_fame.bias.report`): ``RESULTS_DIR/NAME.json`` (per method: per
   seed metrics, mean and std over the seeds; chance levels; settings; per-run timings),
   ``NAME.md`` (one table, mean +- std, with a paragraph reading it) and PNG plots.

Caching and resuming: every run directory (``WORK_DIR/runs/<method>/seed<S>``) records the
command that produced it (``bench_run.json``) and every evaluation its inputs
(``bias_metrics.json``). A rerun reuses finished runs with the same command and world, resumes
an interrupted run from its newest checkpoint (``--resume auto``) and redoes anything whose
command changed. A failing run stops the benchmark (after the runs in flight finish) with an
error naming the run and its log file.

All relative paths of a bench config resolve against the repository root (where configs/ is).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: method name -> the pretraining settings it fixes (``train/pretrain.py --set KEY=VALUE``).
#: Every debias.* setting a method depends on is stated, so a method means the same whatever
#: the pretraining recipe's own debias section says.
METHODS: dict[str, dict[str, Any]] = {
    "moco": {"debias.method": "none"},
    "be": {"debias.method": "be", "debias.be_gamma": 0.3, "debias.views": "single"},
    **{
        f"fame_b{beta}": {"debias.method": "fame", "debias.beta": beta, "debias.variant": "fame",
                          "debias.background": "inter", "debias.views": "single"}
        for beta in (0.3, 0.5, 0.7)
    },
    "fame_intra": {"debias.method": "fame", "debias.beta": 0.5, "debias.variant": "fame",
                   "debias.background": "intra", "debias.views": "single"},
    **{
        f"fame_{variant}": {"debias.method": "fame", "debias.beta": 0.5, "debias.variant": variant,
                            "debias.background": "inter", "debias.views": "single"}
        for variant in ("seed", "gauss", "grid")
    },
}
#: the reference encoders: supervised from random init on the scene-balanced / scene-biased
#: training set (tested by the finetune run on test_swapped), and a random init
REFERENCES: tuple[str, ...] = ("supervised_balanced", "supervised_biased", "random_init")
#: the bench config's top-level keys (a typo is an error, not a silent default)
CONFIG_KEYS: tuple[str, ...] = (
    "name", "work_dir", "results_dir", "results_name", "seeds", "methods", "references",
    "parallel", "threads_per_job", "launch", "backbone", "clip", "world", "world_dir",
    "pretrain", "supervised", "evaluate",
)
#: the files a world directory must hold (the world contract)
WORLD_FILES: tuple[str, ...] = (
    "manifest.csv", "meta.json",
    *(f"lists/{s}.csv" for s in ("train_biased", "train_balanced", "test_same", "test_swapped",
                                  "test_unseen", "test_static", "supervised_balanced",
                                  "supervised_biased")),
)
MARKER = "bench_run.json"
METRICS_FILE = "bias_metrics.json"


class BenchConfigError(ValueError):
    """A bench config value is invalid; the message names the file and the setting."""


class BenchRunError(RuntimeError):
    """A pretraining / finetuning run or an evaluation failed; the message names it and its log."""


# ------------------------------------------------------------------------------ the config


@dataclasses.dataclass(frozen=True)
class Clip:
    """The clip every run uses: pretraining, supervised training and evaluation."""

    clip_len: int
    stride: int
    crop: int


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training script's YAML config and the ``--set`` overrides the bench adds to it."""

    config: Path
    set: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """:func:`dali_fame.bias.evaluate.evaluate_encoder`'s clips per video, videos per batch,
    decoding processes, and where the encoder runs ("cpu" or "cuda")."""

    num_clips: int
    batch_size: int
    workers: int
    device: str = "cpu"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A validated bench config (:func:`load_bench_config`); ``raw`` is the YAML mapping."""

    path: Path
    name: str
    work_dir: Path
    results_dir: Path
    results_name: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    references: tuple[str, ...]
    parallel: int
    threads_per_job: int
    launch: tuple[str, ...]
    backbone: str
    clip: Clip
    world: Any  # WorldOptions, or None when world_dir names an existing world
    world_dir: Path
    pretrain: Recipe
    supervised: Recipe
    evaluate: EvalSettings
    raw: dict

    @property
    def generated(self) -> bool:
        """True when the bench generates its world (``world`` options), False for ``world_dir``."""
        return self.world is not None


def _resolve(path: str | Path, where: str = "") -> Path:
    """``~`` and ``$VAR`` expanded; relative paths against the repository root."""
    text = os.path.expandvars(os.path.expanduser(str(path)))
    if "$" in text:
        raise BenchConfigError(f"{where or 'path'}: {str(path)!r} names an environment variable "
                               f"that is not set")
    path = Path(text)
    return path if path.is_absolute() else REPO / path


def _int(where: str, value: Any, *, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise BenchConfigError(f"{where} must be an integer >= {low}; got {value!r}")
    return value


def _mapping(where: str, value: Any, keys: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise BenchConfigError(f"{where} must be a mapping with {', '.join(keys)}; got {value!r}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise BenchConfigError(f"{where}.{unknown[0]}: unknown setting (known: {', '.join(keys)})")
    missing = [k for k in required if k not in value]
    if missing:
        raise BenchConfigError(f"{where}.{missing[0]}: missing")
    return value


def _names(where: str, value: Any, known: tuple[str, ...], *, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise BenchConfigError(f"{where} must be a {'' if allow_empty else 'non-empty '}list of "
                               f"names from {', '.join(known)}; got {value!r}")
    for i, name in enumerate(value):
        if name not in known:
            raise BenchConfigError(f"{where}[{i}]: unknown name {name!r}; choose from {', '.join(known)}")
    if len(set(value)) != len(value):
        raise BenchConfigError(f"{where} lists a name twice: {value!r}")
    return tuple(value)


def _world_options(where: str, value: Any):
    """The config's ``world`` mapping -> WorldOptions; every option must be stated."""
    from dali_fame.bias.world import WorldOptions

    names = tuple(f.name for f in dataclasses.fields(WorldOptions))
    if not isinstance(value, dict):
        raise BenchConfigError(f"{where} must be a mapping of world options ({', '.join(names)})")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise BenchConfigError(f"{where}.{unknown[0]}: unknown world option (known: {', '.join(names)})")
    # Stated in full so that a benchmark's world is read off its config, and a changed
    # default in WorldOptions cannot silently change a published table.
    missing = [n for n in names if n not in value]
    if missing:
        raise BenchConfigError(f"{where}.{missing[0]}: missing world option (a bench config "
                               f"states every option: missing {', '.join(missing)})")
    try:
        return WorldOptions.from_dict(dict(value))
    except (TypeError, ValueError) as err:
        raise BenchConfigError(f"{where}: {err}") from None


def _recipe(where: str, value: Any, *, task: str | None, clip: Clip, backbone: str) -> Recipe:
    """A training recipe, checked now by loading it the way its script will."""
    from dali_fame.config import ConfigError, load_config, parse_override
    from dali_fame.eval.config import load_eval_config

    value = _mapping(where, value, ("config", "set"), ("config",))
    config = _resolve(value["config"])
    sets = value.get("set") or {}
    if not isinstance(sets, dict):
        raise BenchConfigError(f"{where}.set must be a mapping KEY: VALUE; got {sets!r}")
    bench_owned = [k for k in sets if k.startswith(("data.clip_len", "data.stride", "data.crop",
                                                    "model.backbone", "debias."))]
    if bench_owned:
        raise BenchConfigError(f"{where}.set.{bench_owned[0]}: set by the bench itself (clip, "
                               f"backbone, or the method's debias settings)")
    # The bench passes the data itself (--data-root LIST --dataset-format csv): validate the
    # recipe without it, with the clip and backbone the bench will set.
    overrides = [{"data": {"format": "synthetic", "root": None}}]
    overrides += [parse_override(f"{k}={v}") for k, v in _clip_sets(clip, backbone).items()]
    try:
        overrides += [_tree(k, v) for k, v in sets.items()]
        if task is None:
            load_config(config, overrides=overrides)
        else:
            load_eval_config(config, task=task, overrides=overrides)
    except ConfigError as err:
        raise BenchConfigError(f"{where} ({config}): {err}") from None
    return Recipe(config=config, set=dict(sets))


def _tree(key: str, value: Any) -> dict:
    tree: dict = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _clip_sets(clip: Clip, backbone: str) -> dict[str, Any]:
    return {"data.clip_len": clip.clip_len, "data.stride": clip.stride, "data.crop": clip.crop,
            "model.backbone": backbone}


def load_bench_config(path: str | Path, *, results_dir: str | Path | None = None,
                      work_dir: str | Path | None = None, parallel: int | None = None) -> BenchConfig:
    """Read and validate a bench config (the keys :data:`CONFIG_KEYS`; see configs/bias/).

    Raises:
        BenchConfigError: the first bad setting, named (``seeds[1]``, ``world.bias``, ...).
    """
    from dali_fame.config import ConfigError, read_yaml
    from dali_fame.models import list_backbones

    path = _resolve(path)
    try:
        raw = read_yaml(path)
    except ConfigError as err:
        raise BenchConfigError(str(err)) from None

    def fail(err: BenchConfigError) -> BenchConfigError:
        return BenchConfigError(f"{path}: {err}")

    try:
        unknown = sorted(set(raw) - set(CONFIG_KEYS))
        if unknown:
            raise BenchConfigError(f"{unknown[0]}: unknown setting (known: {', '.join(CONFIG_KEYS)})")
        for key in ("name", "work_dir", "seeds", "methods", "clip", "pretrain", "evaluate"):
            if key not in raw:
                raise BenchConfigError(f"{key}: missing")
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise BenchConfigError(f"seeds must be a non-empty list of integers; got {seeds!r}")
        for i, s in enumerate(seeds):
            _int(f"seeds[{i}]", s, low=0)
        if len(set(seeds)) != len(seeds):
            raise BenchConfigError(f"seeds lists a seed twice: {seeds!r}")
        methods = _names("methods", raw["methods"], tuple(METHODS), allow_empty=False)
        references = _names("references", raw.get("references", []), REFERENCES, allow_empty=True)
        backbone = raw.get("backbone", "tiny")
        if backbone not in list_backbones():
            raise BenchConfigError(f"backbone: unknown {backbone!r}; choose from {', '.join(list_backbones())}")
        c = _mapping("clip", raw["clip"], ("clip_len", "stride", "crop"), ("clip_len", "stride", "crop"))
        clip = Clip(clip_len=_int("clip.clip_len", c["clip_len"], low=2),
                    stride=_int("clip.stride", c["stride"], low=1), crop=_int("clip.crop", c["crop"], low=16))
        e = _mapping("evaluate", raw["evaluate"], ("num_clips", "batch_size", "workers", "device"),
                     ("num_clips", "batch_size", "workers"))
        if e.get("device", "cpu") not in ("cpu", "cuda"):
            raise BenchConfigError(f"evaluate.device must be cpu or cuda; got {e['device']!r}")
        evaluate = EvalSettings(num_clips=_int("evaluate.num_clips", e["num_clips"], low=1),
                                batch_size=_int("evaluate.batch_size", e["batch_size"], low=1),
                                workers=_int("evaluate.workers", e["workers"], low=0),
                                device=e.get("device", "cpu"))
        if ("world" in raw) == ("world_dir" in raw):
            raise BenchConfigError("world: give exactly one of world (options of a generated world) "
                                   "and world_dir (an existing world directory)")
        work = _resolve(work_dir if work_dir is not None else raw["work_dir"])
        if "world" in raw:
            world, world_path = _world_options("world", raw["world"]), work / "world"
        else:
            world, world_path = None, _resolve(raw["world_dir"], "world_dir")
        pretrain = _recipe("pretrain", raw["pretrain"], task=None, clip=clip, backbone=backbone)
        supervised_needed = any(r.startswith("supervised") for r in references)
        if supervised_needed and "supervised" not in raw:
            raise BenchConfigError("supervised: missing (the supervised references need a finetune recipe)")
        supervised = (_recipe("supervised", raw["supervised"], task="finetune", clip=clip, backbone=backbone)
                      if "supervised" in raw else Recipe(config=Path(), set={}))
        launch = raw.get("launch", [])
        if not isinstance(launch, list) or not all(isinstance(x, str) for x in launch):
            raise BenchConfigError(f"launch must be a list of strings (a command prefix, e.g. "
                                   f"[accelerate, launch, --num_processes, '8']); got {launch!r}")
        name = raw["name"]
        if not isinstance(name, str) or not name:
            raise BenchConfigError(f"name must be a non-empty string; got {name!r}")
        results_name = raw.get("results_name", "bias")
        if not isinstance(results_name, str) or not results_name or "/" in results_name:
            raise BenchConfigError(f"results_name must be a file stem; got {results_name!r}")
        par = parallel if parallel is not None else raw.get("parallel", 1)
        return BenchConfig(
            path=path, name=name, work_dir=work,
            results_dir=_resolve(results_dir if results_dir is not None
                                 else raw.get("results_dir", "benchmarks/results")),
            results_name=results_name, seeds=tuple(seeds), methods=methods, references=references,
            parallel=_int("parallel", par, low=1),
            threads_per_job=_int("threads_per_job", raw.get("threads_per_job", 1), low=1),
            launch=tuple(launch), backbone=backbone, clip=clip, world=world, world_dir=world_path,
            pretrain=pretrain, supervised=supervised, evaluate=evaluate, raw=raw,
        )
    except BenchConfigError as err:
        raise fail(err) from None


def missing_world_files(world_dir: Path) -> list[str]:
    """The files of the world contract that ``world_dir`` lacks (empty: all there)."""
    return [f for f in WORLD_FILES if not (world_dir / f).is_file()]


# ---------------------------------------------------------------------------------- the runs


@dataclasses.dataclass
class Run:
    """One encoder of the table: how it is trained (``cmd``; None for random init) and where.

    ``kind``: "pretrain" (MoCo / BE / FAME), "supervised" (finetune.py from random init) or
    "random" (no training).
    """

    method: str
    seed: int
    kind: str
    run_dir: Path
    log: Path
    cmd: list[str] | None = None
    seconds: float = 0.0
    cached: bool = False
    train: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    eval_seconds: float = 0.0
    eval_cached: bool = False

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.seed}"


def _setflags(pairs: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in pairs.items():
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
        out += ["--set", f"{key}={text}"]
    return out


def plan_runs(cfg: BenchConfig) -> list[Run]:
    """Every encoder of the table, in report order: methods x seeds, then the references."""
    launch = list(cfg.launch) or [sys.executable]
    clip_sets = _clip_sets(cfg.clip, cfg.backbone)
    lists = cfg.world_dir / "lists"
    runs: list[Run] = []
    for method in (*cfg.methods, *cfg.references):
        for seed in cfg.seeds:
            run_dir = cfg.work_dir / "runs" / method / f"seed{seed}"
            log = cfg.work_dir / "logs" / f"{method}_seed{seed}.log"
            if method in METHODS:
                cmd = [*launch, str(REPO / "train" / "pretrain.py"), "--config", str(cfg.pretrain.config),
                       "--output-dir", str(run_dir), "--data-root", str(lists / "train_biased.csv"),
                       "--dataset-format", "csv", "--seed", str(seed),
                       *_setflags({**clip_sets, **cfg.pretrain.set, **METHODS[method]})]
                runs.append(Run(method, seed, "pretrain", run_dir, log, cmd))
            elif method.startswith("supervised"):
                cmd = [*launch, str(REPO / "train" / "finetune.py"), "--config", str(cfg.supervised.config),
                       "--output-dir", str(run_dir), "--data-root", str(lists / f"{method}.csv"),
                       "--dataset-format", "csv", "--pretrained", "none", "--seed", str(seed),
                       *_setflags({**clip_sets, **cfg.supervised.set})]
                runs.append(Run(method, seed, "supervised", run_dir, log, cmd))
            else:
                runs.append(Run(method, seed, "random", run_dir, log))
    return runs


def world_key(world_dir: Path) -> str:
    """SHA-256 of the world's meta.json and manifest.csv: a changed world invalidates every run."""
    h = hashlib.sha256()
    for name in ("meta.json", "manifest.csv"):
        h.update((world_dir / name).read_bytes())
    return h.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _train_summary(run: Run) -> dict:
    """First / last epoch loss (and accuracy) of a finished run, from its summary.csv."""
    summary = run.run_dir / "summary.csv"
    with open(summary, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise BenchRunError(f"run {run.name}: {summary} holds no epoch (log: {run.log})")
    out = {"epochs": len(rows), "steps": int(rows[-1]["step"]),
           "loss_first_epoch": float(rows[0]["loss"]), "loss_last_epoch": float(rows[-1]["loss"])}
    if rows[-1].get("acc1"):
        out["acc1_last_epoch"] = float(rows[-1]["acc1"])
    results = _read_json(run.run_dir / "results.json")
    if run.kind == "supervised" and results and "top1" in results:
        out["finetune_test_swapped_top1"] = float(results["top1"])
    return out


def train_run(run: Run, *, world: str, threads: int) -> None:
    """Train ``run`` (a subprocess) unless a finished run with the same command is there.

    An interrupted run with the same command continues from its newest checkpoint; a run
    directory left by another command is removed first.

    Raises:
        BenchRunError: the subprocess failed (exit status, log file and the log's tail).
    """
    marker_path = run.run_dir / MARKER
    key = {"cmd": run.cmd[1:], "world": world}  # not the interpreter: a moved venv is the same run
    marker = _read_json(marker_path)
    resume = False
    if marker and {k: marker.get(k) for k in key} == key:
        if marker.get("status") == "done":
            run.cached, run.seconds = True, float(marker.get("seconds", 0.0))
            run.train = _train_summary(run)
            return
        resume = (run.run_dir / "checkpoints").is_dir() and any((run.run_dir / "checkpoints").iterdir())
    elif run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    marker_path.write_text(json.dumps({**key, "status": "running"}, indent=1))
    cmd = [*run.cmd, "--resume", "auto"] if resume else run.cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    run.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run.log, "a" if resume else "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    run.seconds = time.perf_counter() - started + (float(marker.get("seconds", 0.0)) if resume and marker else 0.0)
    if proc.returncode != 0:
        tail = "\n".join(run.log.read_text(errors="replace").splitlines()[-15:])
        raise BenchRunError(f"run {run.name} failed (exit {proc.returncode}); log: {run.log}\n{tail}")
    run.train = _train_summary(run)
    marker_path.write_text(json.dumps({**key, "status": "done", "seconds": run.seconds}, indent=1))


def eval_run(run: Run, cfg: BenchConfig, *, world: str) -> None:
    """Evaluate ``run``'s encoder in this process (cached in ``bias_metrics.json``).

    Raises:
        BenchRunError: loading or evaluating failed (naming the run, its checkpoint and log).
    """
    from dali_fame.bias.evaluate import evaluate_encoder, load_backbone

    checkpoint = None if run.kind == "random" else run.run_dir / "checkpoints"
    trained = None if checkpoint is None else _read_json(run.run_dir / MARKER)
    key = {"world": world, "backbone": cfg.backbone, "clip": dataclasses.asdict(cfg.clip),
           "evaluate": dataclasses.asdict(cfg.evaluate), "seed": run.seed,
           "checkpoint": str(checkpoint), "trained": trained}
    path = run.run_dir / METRICS_FILE
    cached = _read_json(path)
    if cached and cached.get("key") == key:
        run.metrics, run.eval_seconds, run.eval_cached = cached["metrics"], cached["seconds"], True
        return
    started = time.perf_counter()
    try:
        # random init: the seed draws the weights (so the 3 random encoders differ like the others)
        backbone = load_backbone(checkpoint, backbone=cfg.backbone,
                                 seed=run.seed if checkpoint is None else None)
        backbone = backbone.to(cfg.evaluate.device)
        metrics = evaluate_encoder(backbone, cfg.world_dir, device=cfg.evaluate.device, clip_len=cfg.clip.clip_len,
                                   stride=cfg.clip.stride, crop=cfg.clip.crop,
                                   num_clips=cfg.evaluate.num_clips, batch_size=cfg.evaluate.batch_size,
                                   workers=cfg.evaluate.workers, seed=run.seed)
    except (ValueError, OSError, RuntimeError) as err:
        raise BenchRunError(f"evaluation of {run.name} failed (checkpoint {checkpoint}; training log "
                            f"{run.log}): {type(err).__name__}: {err}") from err
    run.metrics, run.eval_seconds = {k: float(v) for k, v in metrics.items()}, time.perf_counter() - started
    run.run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "metrics": run.metrics, "seconds": run.eval_seconds}, indent=1))


def _execute(jobs: list[tuple[str, Callable[[], str], str | None]], *, parallel: int,
             progress: Callable[[str], None]) -> None:
    """Run ``(name, fn, dependency)`` jobs, ``parallel`` at a time, each after its dependency.

    Ready evaluations go before waiting trainings (results appear, and are cached, early).
    ``fn`` returns the progress text. On a failure nothing new starts; the jobs in flight
    finish (so a rerun finds them cached), then the first error is raised.
    """
    done: set[str] = set()
    pending = list(jobs)
    running: dict[Future, str] = {}
    errors: list[BaseException] = []
    total = len(jobs)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while pending or running:
            if not errors:
                ready = [j for j in pending if j[2] is None or j[2] in done]
                ready.sort(key=lambda j: j[2] is None)  # dependents (evaluations) first
                while ready and len(running) < parallel:
                    job = ready.pop(0)
                    pending.remove(job)
                    running[pool.submit(job[1])] = job[0]
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                err = fut.exception()
                if err is not None:
                    errors.append(err)
                    progress(f"FAILED {name}")
                    continue
                done.add(name)
                progress(f"{len(done)}/{total} {fut.result()}")
    if errors:
        raise errors[0]


def run_bench(cfg: BenchConfig, *, command: str, out=print) -> dict:
    """The whole benchmark (module docstring); returns the bias.json payload it wrote."""
    import torch

    from dali_fame.bias import report
    from dali_fame.bias.evaluate import chance

    started = time.perf_counter()

    def progress(text: str) -> None:
        out(f"[{time.perf_counter() - started:7.1f}s] {text}", flush=True)

    if cfg.generated:
        from dali_fame.bias.world import generate_world

        progress(f"world: {cfg.world_dir} ...")
        info = generate_world(cfg.world_dir, options=cfg.world, workers=cfg.parallel)
        progress(f"world: {sum(info.meta['counts'].values())} videos "
                 f"({f'generated in {info.seconds:.1f}s' if info.seconds else 'cached'})")
    else:
        missing = missing_world_files(cfg.world_dir)
        if missing:
            raise BenchConfigError(f"{cfg.path}: world_dir {cfg.world_dir} lacks {', '.join(missing)} "
                                   f"(see the comments of {cfg.path.name} for what to supply)")
    world = world_key(cfg.world_dir)
    _warm_index(cfg)
    # The evaluations run in this process, one per job slot: each gets the per-job thread count.
    torch.set_num_threads(cfg.threads_per_job)
    runs = plan_runs(cfg)
    lock = threading.Lock()  # one eval writes its own files; the lock only orders progress lines

    def trainer(run: Run) -> Callable[[], str]:
        def fn() -> str:
            train_run(run, world=world, threads=cfg.threads_per_job)
            t = run.train
            with lock:
                return (f"train {run.name}: {'cached' if run.cached else 'done'} ({run.seconds:.1f}s; "
                        f"{t['epochs']} epochs, loss {t['loss_first_epoch']:.2f} -> {t['loss_last_epoch']:.2f})")
        return fn

    def evaluator(run: Run) -> Callable[[], str]:
        def fn() -> str:
            eval_run(run, cfg, world=world)
            m = run.metrics
            return (f"eval  {run.name}: {'cached' if run.eval_cached else 'done'} ({run.eval_seconds:.1f}s; "
                    f"same {m['same_top1']:.1f} swapped {m['swapped_top1']:.1f} "
                    f"static {m['static_top1']:.1f} scene {m['scene_decode_top1']:.1f})")
        return fn

    jobs: list[tuple[str, Callable[[], str], str | None]] = []
    for run in runs:
        if run.cmd is not None:
            jobs.append((f"train {run.name}", trainer(run), None))
        jobs.append((f"eval {run.name}", evaluator(run), f"train {run.name}" if run.cmd else None))
    progress(f"{len(runs)} encoders ({len(cfg.methods)} methods + {len(cfg.references)} references "
             f"x {len(cfg.seeds)} seeds), {cfg.parallel} at a time, {cfg.threads_per_job} thread(s) each")
    _execute(jobs, parallel=cfg.parallel, progress=progress)
    wall = time.perf_counter() - started
    payload = build_payload(cfg, runs, chance=chance(cfg.world_dir), command=command, wall=wall)
    paths = report.write_report(payload, cfg.results_dir, cfg.results_name)
    progress("wrote " + ", ".join(str(p) for p in paths))
    out(report.markdown_table(payload))
    return payload


def _warm_index(cfg: BenchConfig) -> None:
    """Probe the lists the training subprocesses read, once, before they start in parallel
    (each would otherwise probe the same videos; the index cache lives next to the lists)."""
    from dali_fame.data.index import build_index

    wanted = [("train_biased", "train")]
    for ref in cfg.references:
        if ref.startswith("supervised"):
            wanted += [(ref, "train"), (ref, "test")]
    for name, split in wanted:
        build_index(cfg.world_dir / "lists" / f"{name}.csv", format="csv", split=split,
                    clip_len=cfg.clip.clip_len, stride=cfg.clip.stride,
                    workers=max(1, min(cfg.parallel, os.cpu_count() or 1)), progress=False)


def summarize(per_seed: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of every key over the seeds."""
    keys = list(next(iter(per_seed.values())))
    mean, std = {}, {}
    for k in keys:
        values = [float(m[k]) for m in per_seed.values()]
        mu = sum(values) / len(values)
        mean[k] = mu
        std[k] = (sum((v - mu) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def build_payload(cfg: BenchConfig, runs: list[Run], *, chance: dict, command: str, wall: float) -> dict:
    """The bias.json content (schema in configs/bias/README of the module docstring)."""
    results: dict[str, dict] = {}
    for run in runs:
        entry = results.setdefault(run.method, {"kind": run.kind, "per_seed": {}, "train": {}})
        entry["per_seed"][str(run.seed)] = run.metrics
        if run.train:
            entry["train"][str(run.seed)] = run.train
    for entry in results.values():
        entry["mean"], entry["std"] = summarize(entry["per_seed"])
        if not entry["train"]:
            del entry["train"]
    world_meta = _read_json(cfg.world_dir / "meta.json") or {}
    return {
        "command": command,
        "wall_seconds": round(wall, 1),
        "seeds": list(cfg.seeds),
        "settings": {
            "config": _rel(cfg.path),
            "bench": cfg.raw,
            "methods": {m: METHODS[m] for m in cfg.methods},
            "pretrain_config": _rel(cfg.pretrain.config),
            "supervised_config": _rel(cfg.supervised.config) if cfg.supervised.set or cfg.references else None,
            "world": {k: world_meta.get(k) for k in ("options", "class_names", "num_known_scenes",
                                                     "unseen_scenes", "counts", "realised_bias",
                                                     "foreground", "test_foregrounds", "version")},
            "std": "sample standard deviation over the seeds (ddof 1; 0 for one seed)",
        },
        "chance": chance,
        "results": results,
        "runs": {run.name: {"train_seconds": round(run.seconds, 1), "train_cached": run.cached,
                            "eval_seconds": round(run.eval_seconds, 1), "eval_cached": run.eval_cached,
                            "log": _rel(run.log) if run.cmd else None,
                            "command": shlex.join(run.cmd) if run.cmd else None}
                 for run in runs},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "parallel": cfg.parallel, "threads_per_job": cfg.threads_per_job},
    }


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="bench config (configs/bias/cpu.yaml, ci.yaml, ucf101.yaml)")
    parser.add_argument("--results-dir", help="where NAME.json / NAME.md / plots go (default: the config's "
                        "results_dir, benchmarks/results)")
    parser.add_argument("--work-dir", help="world, runs and logs (default: the config's work_dir)")
    parser.add_argument("--parallel", type=int, help="runs at a time (default: the config's parallel)")
    parser.add_argument("--check", action="store_true", help="validate the config (and an existing world's "
                        "files) and exit")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_bench_config(args.config, results_dir=args.results_dir, work_dir=args.work_dir,
                                parallel=args.parallel)
        if args.check:
            missing = [] if cfg.generated else missing_world_files(cfg.world_dir)
            if missing:
                raise BenchConfigError(f"{cfg.path}: world_dir {cfg.world_dir} lacks {', '.join(missing)} "
                                       f"(see the comments of {cfg.path.name} for what to supply)")
            print(f"{cfg.path}: OK ({len(cfg.methods)} methods, {len(cfg.references)} references, "
                  f"seeds {list(cfg.seeds)}, world {'generated in ' if cfg.generated else ''}{cfg.world_dir})")
            return 0
    except BenchConfigError as err:
        raise SystemExit(f"bias-bench config error: {err}") from None
    argv = ["dali-fame", "bias-bench", "--config", args.config]
    for flag, value in (("--results-dir", args.results_dir), ("--work-dir", args.work_dir),
                        ("--parallel", args.parallel)):
        if value is not None:
            argv += [flag, str(value)]
    command = shlex.join(argv)
    try:
        run_bench(cfg, command=command)
    except BenchRunError as err:
        raise SystemExit(f"bias-bench: {err}\n(rerun the same command to continue: finished runs are reused)") from None
    return 0

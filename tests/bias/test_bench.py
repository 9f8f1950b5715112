"""``dali-fame bias-bench``: config validation, run caching / resuming, and the ci config end to end.

The end-to-end test runs the real command on configs/bias/ci.yaml (real videos, real
train/pretrain.py and train/finetune.py subprocesses, the real evaluation) once per session,
then checks the outputs against the contract and that a second invocation reuses every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dali_fame.bias import bench
from dali_fame.bias.bench import BenchConfigError, BenchRunError, Run, load_bench_config, train_run

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "configs" / "bias" / "ci.yaml"
REQUIRED_KEYS = ("same_top1", "swapped_top1", "unseen_top1", "static_top1", "scene_decode_top1",
                 "contrasted_acc", "biased_probe_swapped_top1", "retrieval_r1", "retrieval_scene_at1")


def _config(tmp_path: Path, **changes) -> Path:
    """configs/bias/ci.yaml with top-level ``changes`` (None deletes a key), in tmp_path."""
    values = yaml.safe_load(CI.read_text())
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# ------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("name", ["ci.yaml", "cpu.yaml"])
def test_shipped_synthetic_configs_validate(name):
    cfg = load_bench_config(REPO / "configs" / "bias" / name)
    assert cfg.generated and cfg.methods and cfg.seeds
    runs = bench.plan_runs(cfg)
    assert len(runs) == (len(cfg.methods) + len(cfg.references)) * len(cfg.seeds)
    # every method's pretraining command carries its own debias settings after the recipe's
    for run in runs:
        if run.kind == "pretrain":
            sets = [run.cmd[i + 1] for i, a in enumerate(run.cmd) if a == "--set"]
            for key, value in bench.METHODS[run.method].items():
                assert f"{key}={value}" in sets


def test_cpu_config_has_the_required_table():
    cfg = load_bench_config(REPO / "configs" / "bias" / "cpu.yaml")
    assert len(cfg.seeds) == 3
    assert set(cfg.methods) == set(bench.METHODS)
    assert set(cfg.references) == set(bench.REFERENCES)


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(BenchConfigError, match=r"methods\[1\]: unknown name 'mocoo'"):
        load_bench_config(_config(tmp_path, methods=["moco", "mocoo"]))


@pytest.mark.parametrize(("seeds", "pattern"), [
    ([0, -1], r"seeds\[1\] must be an integer >= 0"),
    ([0, "1"], r"seeds\[1\] must be an integer"),
    ([], r"seeds must be a non-empty list"),
    ([3, 3], r"seeds lists a seed twice"),
])
def test_bad_seeds_are_named(tmp_path, seeds, pattern):
    with pytest.raises(BenchConfigError, match=pattern):
        load_bench_config(_config(tmp_path, seeds=seeds))


def test_missing_and_unknown_world_options_are_named(tmp_path):
    world = yaml.safe_load(CI.read_text())["world"]
    partial = {k: v for k, v in world.items() if k != "bias"}
    with pytest.raises(BenchConfigError, match=r"world\.bias: missing world option"):
        load_bench_config(_config(tmp_path, world=partial))
    with pytest.raises(BenchConfigError, match=r"world\.colour: unknown world option"):
        load_bench_config(_config(tmp_path, world={**world, "colour": 1}))
    with pytest.raises(BenchConfigError, match=r"world: WorldOptions\.bias must be a probability"):
        load_bench_config(_config(tmp_path, world={**world, "bias": 1.5}))


def test_recipe_errors_name_the_section_and_setting(tmp_path):
    with pytest.raises(BenchConfigError, match=r"pretrain .*unknown setting 'train\.epochz'"):
        load_bench_config(_config(tmp_path, pretrain={"config": "configs/bias/pretrain_tiny.yaml",
                                                      "set": {"train.epochz": 2}}))
    with pytest.raises(BenchConfigError, match=r"pretrain\.set\.debias\.beta: set by the bench"):
        load_bench_config(_config(tmp_path, pretrain={"config": "configs/bias/pretrain_tiny.yaml",
                                                      "set": {"debias.beta": 0.3}}))
    with pytest.raises(BenchConfigError, match=r"supervised: missing"):
        load_bench_config(_config(tmp_path, supervised=None))
    with pytest.raises(BenchConfigError, match=r"world: give exactly one of world"):
        load_bench_config(_config(tmp_path, world_dir="/nonexistent"))
    with pytest.raises(BenchConfigError, match=r"evaluate\.workers: missing"):
        load_bench_config(_config(tmp_path, evaluate={"num_clips": 2, "batch_size": 4}))


def test_real_data_config_check_lists_the_missing_world_files(tmp_path):
    """configs/bias/ucf101.yaml cannot run here: --check says which files the world lacks."""
    (tmp_path / "world" / "lists").mkdir(parents=True)
    (tmp_path / "world" / "manifest.csv").write_text("path,set,label,scene,scene_kind,instance,static\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dali_fame.cli", "bias-bench", "--config", "configs/bias/ucf101.yaml",
         "--check", "--work-dir", str(tmp_path / "work")],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DALI_FAME_BIAS_WORLD": str(tmp_path / "world")},
    )
    assert proc.returncode != 0
    assert "world_dir" in proc.stderr and "meta.json" in proc.stderr
    assert "lists/test_swapped.csv" in proc.stderr and "manifest.csv," not in proc.stderr


# ------------------------------------------------------------------- caching and resuming


_FAKE_TRAINER = """
import json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--output-dir") + 1])
(out / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
(out / "summary.csv").write_text("epoch,step,loss,acc1\\n0,1,4.5,10\\n1,2,4.0,20\\n")
with open(out / "argv.txt", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
"""


def _run(tmp_path: Path, *, tag: str = "a", exit_code: int = 0) -> Run:
    script = tmp_path / "trainer.py"
    script.write_text(_FAKE_TRAINER)
    run_dir = tmp_path / "runs" / "moco" / "seed0"
    return Run("moco", 0, "pretrain", run_dir, tmp_path / "logs" / "moco_seed0.log",
               [sys.executable, str(script), "--output-dir", str(run_dir), "--tag", tag,
                "--exit", str(exit_code)])


def test_train_run_caches_resumes_and_redoes(tmp_path):
    """The run-cache rules: a finished run with the same command and world is reused; an
    interrupted one continues with --resume auto; another command starts afresh."""
    first = _run(tmp_path)
    train_run(first, world="w1", threads=1)
    assert not first.cached and first.train["loss_last_epoch"] == 4.0
    argv = first.run_dir / "argv.txt"
    assert argv.read_text().count("\n") == 1

    again = _run(tmp_path)
    train_run(again, world="w1", threads=1)
    assert again.cached and argv.read_text().count("\n") == 1  # not run again

    # interrupted (marker still says running, a checkpoint exists): resumed, not restarted
    marker = json.loads((first.run_dir / bench.MARKER).read_text())
    (first.run_dir / bench.MARKER).write_text(json.dumps({**marker, "status": "running"}))
    resumed = _run(tmp_path)
    train_run(resumed, world="w1", threads=1)
    lines = argv.read_text().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("--resume auto") and not resumed.cached

    # another world: the old run directory is removed and the run starts again
    train_run(_run(tmp_path), world="w2", threads=1)
    assert argv.read_text().count("\n") == 1


def test_failed_run_names_the_run_and_its_log(tmp_path):
    run = _run(tmp_path, exit_code=3)
    with pytest.raises(BenchRunError, match=r"run moco/seed0 failed \(exit 3\); log: .*moco_seed0\.log"):
        train_run(run, world="w", threads=1)
    # the failure is not cached as done: a rerun tries again
    assert json.loads((run.run_dir / bench.MARKER).read_text())["status"] == "running"


def test_summarize_uses_the_sample_std():
    mean, std = bench.summarize({"0": {"a": 10.0}, "1": {"a": 20.0}, "2": {"a": 30.0}})
    assert mean == {"a": 20.0} and std == {"a": 10.0}
    assert bench.summarize({"0": {"a": 7.0}}) == ({"a": 7.0}, {"a": 0.0})


# ------------------------------------------------------------------------------- end to end


def _bias_bench(work: Path, results: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dali_fame.cli", "bias-bench", "--config", str(CI),
         "--work-dir", str(work), "--results-dir", str(results)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, time.perf_counter() - started


@pytest.fixture(scope="module")
def ci_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bias_bench")
    first, first_s = _bias_bench(root / "work", root / "results")
    payload = json.loads((root / "results" / "bias.json").read_text())
    return root, first, first_s, payload


def test_ci_bench_writes_the_contract(ci_bench):
    root, proc, _, payload = ci_bench
    cfg = yaml.safe_load(CI.read_text())
    assert payload["seeds"] == cfg["seeds"]
    assert payload["command"].startswith("dali-fame bias-bench --config")
    assert payload["wall_seconds"] > 0
    assert set(payload["results"]) == set(cfg["methods"]) | set(cfg["references"])
    assert set(REQUIRED_KEYS) <= set(payload["chance"])
    for method, entry in payload["results"].items():
        assert set(entry["per_seed"]) == {str(s) for s in cfg["seeds"]}, method
        for seed, metrics in entry["per_seed"].items():
            assert set(REQUIRED_KEYS) <= set(metrics), (method, seed)
            for key, value in metrics.items():
                assert isinstance(value, float) and 0.0 <= value <= 100.0, (method, key, value)
        for key in entry["per_seed"][str(cfg["seeds"][0])]:
            values = [m[key] for m in entry["per_seed"].values()]
            assert entry["mean"][key] == pytest.approx(np.mean(values))
            expected_std = np.std(values, ddof=1) if len(values) > 1 else 0.0
            assert entry["std"][key] == pytest.approx(expected_std)
        if entry["kind"] != "random":
            assert entry["train"]["0"]["steps"] > 0
    # one training run per trained encoder, each with its log on disk
    for name, info in payload["runs"].items():
        if info["command"]:
            assert (REPO / info["log"]).is_file() or Path(info["log"]).is_file(), name
    assert "train moco/seed0: done" in proc.stdout and "eval  random_init/seed0: done" in proc.stdout
    md = (root / "results" / "bias.md").read_text()
    assert "| moco |" in md and "| *chance* |" in md and "bias_top1.png" in md


@pytest.mark.parametrize("name", ["bias_top1.png", "bias_scene_vs_swapped.png"])
def test_ci_bench_plots_are_real_images(ci_bench, name):
    from PIL import Image

    path = ci_bench[0] / "results" / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] >= 300 and image.shape[1] >= 400
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 20  # bars / points in several colours, text, axes: not a blank canvas


def test_ci_bench_rerun_reuses_every_run(ci_bench):
    root, _, first_s, first = ci_bench
    proc, second_s = _bias_bench(root / "work", root / "results_again")
    again = json.loads((root / "results_again" / "bias.json").read_text())
    assert all(r["train_cached"] or r["command"] is None for r in again["runs"].values())
    assert all(r["eval_cached"] for r in again["runs"].values())
    assert " done (" not in proc.stdout  # every line says cached
    for method, entry in first["results"].items():
        assert again["results"][method]["per_seed"] == entry["per_seed"]
    assert second_s < first_s

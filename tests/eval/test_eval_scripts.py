"""End to end: train/linear_probe.py, train/finetune.py (2 CPU processes) and train/retrieval.py
on a checkpoint written by a short real pretraining run, on a tiny synthetic dataset."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(script: str, args: list[str], *, launcher: list[str] | None = None, env: dict | None = None,
         ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(REPO / "train" / script), *args]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _data_args(dataset: Path, cache: Path) -> list[str]:
    return ["--data-root", str(dataset / "videos"), "--dataset-format", "ucf101",
            "--set", f"data.annotation_dir={dataset}", "--set", f"data.cache_dir={cache}",
            "--set", "data.crop=32", "--set", "data.clip_len=4", "--set", "data.workers=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """4 classes x 4 videos (12 train, 4 test), 16 frames of 64 x 64, and a 2-epoch pretraining."""
    from dali_fame.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("eval")
    dataset = root / "synth"
    generate_dataset(dataset, num_classes=4, videos_per_class=4, num_frames=16, size=64, codec="h264",
                     progress=False, num_workers=1, overwrite=True)
    run = root / "pretrain"
    _run("pretrain.py", ["--output-dir", str(run), *_data_args(dataset, root / "cache"),
                         "--set", "model.backbone=tiny", "--set", "train.batch_size=4", "--set", "moco.queue_size=16",
                         "--set", "train.image_every=0", "--set", "optim.schedule=cosine", "--epochs", "2"])
    return {"root": root, "dataset": dataset, "pretrain": run, "data": _data_args(dataset, root / "cache")}


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_linear_probe_learns_and_keeps_the_backbone_bit_identical(setup, tmp_path):
    out = tmp_path / "probe"
    proc = _run("linear_probe.py", [
        "--pretrained", str(setup["pretrain"] / "checkpoints"), "--output-dir", str(out), *setup["data"],
        "--epochs", "12", "--set", "train.batch_size=4", "--set", "eval.batch_size=3", "--set", "train.log_every=1",
        "--set", "optim.milestones=[8, 10]", "--set", "eval.eval_every=6",
        # fit check: test on the training videos (the held-out version is the slow test below)
        "--set", "eval.test_split=train"])
    res = _results(out)
    assert res["weights"]["kind"] == "moco"
    assert sorted(res["weights"]["missing"]) == ["fc.bias", "fc.weight"] and res["weights"]["unexpected"] == []
    assert "frozen backbone check: all backbone tensors bit-identical" in proc.stderr
    assert res["frozen_backbone_checked"] is True
    assert res["num_videos"] == 12 and res["steps"] == 36 and res["epochs"] == 12
    assert res["top1"] >= 50.0, f"the probe did not fit the 12 training videos (chance 25%): {res['top1']}"
    assert res["top5"] == 100.0  # 4 classes: every label is in the top 5
    assert res["config"]["optim"]["lr"] == 5.0 and res["config"]["optim"]["weight_decay"] == 0.0
    assert set(res["per_class"]) == {"horizontal_oscillation", "vertical_oscillation", "circle", "diagonal_bounce"}
    row = (out / "results.md").read_text().strip()
    assert row.startswith("| linear_probe | FAME (beta 0.5) | tiny | ucf101 | ucf101 split 1 |")
    assert row.endswith(f"| {res['top1']:.1f} | 100.0 |")
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tb").rglob("events.out.tfevents.*")), "no TensorBoard events"
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].split(",")[-2:] == ["test_top1", "test_top5"] and len(summary) == 13
    assert summary[6].split(",")[-2] != ""  # the test pass after epoch 6 was recorded
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 37))


def test_finetune_runs_in_two_cpu_processes(setup, tmp_path):
    out = tmp_path / "finetune"
    env = dict(_env(), ACCELERATE_USE_CPU="true")
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    proc = _run("finetune.py", ["--pretrained", str(setup["pretrain"]), "--output-dir", str(out), *setup["data"],
                                "--max-steps", "3", "--set", "train.batch_size=4", "--set", "eval.batch_size=1",
                                "--set", "train.log_every=1"], launcher=launcher, env=env)
    assert "2 process(es), batch 4 (2/process)" in proc.stderr
    res = _results(out)
    assert res["steps"] == 3 and res["num_videos"] == 4  # each rank scored 2 test videos; gathered: all 4
    assert sorted(res["weights"]["missing"]) == ["fc.bias", "fc.weight"]
    assert res["frozen_backbone_checked"] is False and res["config"]["model"]["dropout"] == 0.5
    assert sum(map(sum, res["confusion_matrix"])) == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # every finetuning weight moved: the backbone trained (unlike the probe's)
    from safetensors.torch import load_file

    from dali_fame.engine.checkpoint import list_checkpoints
    from dali_fame.eval.weights import read_state_dict, resolve_pretrained

    pre, _ = read_state_dict(resolve_pretrained(setup["pretrain"]))
    fin = load_file(str(list_checkpoints(out)[-1] / "model.safetensors"))
    key = "features.0.weight"
    assert not torch.equal(pre[f"encoder_q.backbone.{key}"], fin[f"backbone.{key}"])


def test_retrieval_end_to_end_on_a_pretraining_checkpoint(setup, tmp_path):
    out = tmp_path / "retrieval"
    ckpt = max((setup["pretrain"] / "checkpoints").iterdir())
    proc = _run("retrieval.py", ["--pretrained", str(ckpt), "--output-dir", str(out), *setup["data"],
                                 "--set", "eval.batch_size=3"])
    res = _results(out)
    recalls = [res[f"R@{k}"] for k in (1, 5, 10, 20, 50)]
    assert recalls == sorted(recalls) and recalls[-1] == 100.0  # 12 gallery videos < 50: all retrieved
    assert res["num_queries"] == 4 and res["num_gallery"] == 12 and res["weights"]["missing"] == []
    neighbors = json.loads((out / "neighbors.json").read_text())
    assert len(neighbors) == 4
    for q in neighbors:
        sims = [n["similarity"] for n in q["neighbors"]]
        assert len(sims) == 12 and sims == sorted(sims, reverse=True)
        assert len({n["video_id"] for n in q["neighbors"]}) == 12
    # R@k recomputed from the saved neighbours agrees with the reported numbers
    for k in (1, 5, 10):
        hits = sum(any(n["label"] == q["label"] for n in q["neighbors"][:k]) for q in neighbors)
        assert res[f"R@{k}"] == pytest.approx(100.0 * hits / 4)
    assert (out / "results.md").read_text().startswith("| retrieval | FAME (beta 0.5) | tiny | ucf101 |")
    assert "done: 4 queries against 12 gallery videos" in proc.stdout


def test_random_init_is_a_loud_fallback(setup, tmp_path):
    out = tmp_path / "random"
    proc = _run("retrieval.py", ["--output-dir", str(out), *setup["data"],
                                 "--set", f"eval.pretrained={tmp_path / 'no_such_run'}"])
    assert "RANDOMLY INITIALISED" in proc.stderr
    res = _results(out)
    assert res["method"] == "random init" and res["weights"]["kind"] == "none" and res["backbone"] == "tiny"


def test_checkpoints_that_do_not_fit_are_refused_naming_the_keys(setup, tmp_path):
    from safetensors.torch import save_file

    from dali_fame.eval.weights import read_state_dict, resolve_pretrained

    state, _ = read_state_dict(resolve_pretrained(setup["pretrain"]))
    del state["encoder_q.backbone.features.3.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    proc = _run("retrieval.py", ["--pretrained", str(broken), "--output-dir", str(tmp_path / "a"), *setup["data"],
                                 "--set", "model.backbone=tiny"], ok=False)
    assert proc.returncode != 0 and "weights error:" in proc.stderr
    assert "missing from the checkpoint: [features.3.weight]" in proc.stderr
    # a backbone that contradicts the checkpoint's: refused before anything is created (in process)
    spec = importlib.util.spec_from_file_location("retrieval_script", REPO / "train" / "retrieval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit, match="pretrained with 'tiny'"):
        script.main(["--pretrained", str(setup["pretrain"]), "--output-dir", str(tmp_path / "b"),
                     *setup["data"], "--set", "model.backbone=r3d_18"])
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_linear_probe_beats_chance_on_held_out_videos(tmp_path):
    """4 classes x 12 videos (36 train, 12 held-out test), pretrain 5 epochs, probe 20 epochs.

    The test split keeps the training split's scene bias (0.9): the built-in dataset's test split
    has bias 0, where an encoder that learned the background scores *below* chance (the shortcut
    FAME targets), and at this scale a tiny encoder has not learned the motion yet.
    """
    from dali_fame.data.synthetic import generate_dataset

    dataset = tmp_path / "synth"
    generate_dataset(dataset, num_classes=4, videos_per_class=12, num_frames=16, size=64, codec="h264",
                     bias_test=0.9, progress=False, num_workers=1, overwrite=True)
    data = _data_args(dataset, tmp_path / "cache")
    _run("pretrain.py", ["--output-dir", str(tmp_path / "pre"), *data, "--epochs", "5",
                         "--set", "model.backbone=tiny", "--set", "train.batch_size=4", "--set", "moco.queue_size=16",
                         "--set", "moco.momentum=0.99", "--set", "train.image_every=0", "--set", "optim.schedule=cosine",
                         "--set", "augment.jitter_p=0", "--set", "augment.gray_p=0", "--set", "augment.blur_p=0"])
    out = tmp_path / "probe"
    _run("linear_probe.py", ["--pretrained", str(tmp_path / "pre"), "--output-dir", str(out), *data,
                             "--epochs", "20", "--set", "train.batch_size=4", "--set", "optim.milestones=[14, 18]",
                             "--set", "eval.eval_every=0"])
    res = _results(out)
    assert res["num_videos"] == 12 and res["config"]["eval"]["test_split"] == "test"
    assert res["top1"] >= 60.0, f"held-out top-1 {res['top1']:.1f}% is not clearly above chance (25%)"


@pytest.mark.slow
def test_linear_probe_resume_is_exact(setup, tmp_path):
    args = ["--pretrained", str(setup["pretrain"]), *setup["data"], "--epochs", "3", "--set", "train.batch_size=4",
            "--set", "train.log_every=1", "--set", "eval.eval_every=0"]

    def losses(run: Path) -> dict:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: row["train/loss"] for row in rows}

    _run("linear_probe.py", [*args, "--output-dir", str(tmp_path / "straight")])
    _run("linear_probe.py", [*args, "--output-dir", str(tmp_path / "halves"), "--max-steps", "4"])
    proc = _run("linear_probe.py", [*args, "--output-dir", str(tmp_path / "halves"), "--resume", "auto"])
    assert "resumed from" in proc.stderr and "bit-identical" in proc.stderr
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "halves")
    assert sorted(a) == sorted(b) == list(range(1, 10))
    assert b == pytest.approx(a, rel=1e-6)
    assert _results(tmp_path / "halves")["top1"] == _results(tmp_path / "straight")["top1"]

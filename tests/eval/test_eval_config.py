"""Evaluation configs: the paper's protocol defaults, every shipped YAML file, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dali_fame.config import ConfigError
from dali_fame.eval.config import cli_overrides, default_config, load_eval_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASKS = ("finetune", "linear_probe", "retrieval")
EVAL_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name.startswith(tuple(t + "_" for t in TASKS)))


def test_defaults_are_the_papers_protocols():
    ft = default_config("finetune")
    assert (ft.optim.lr, ft.optim.weight_decay, ft.train.epochs, ft.train.batch_size) == (0.025, 1e-4, 150, 128)
    assert ft.optim.milestones == [60, 120] and ft.optim.gamma == 0.1 and ft.optim.schedule == "multistep"
    lp = default_config("linear_probe")
    assert (lp.optim.lr, lp.optim.weight_decay, lp.train.epochs, lp.train.batch_size) == (5.0, 0.0, 100, 128)
    assert lp.optim.milestones == [60, 80]
    assert default_config("retrieval").eval.num_clips == 10


def test_every_task_and_dataset_has_a_config():
    names = {p.stem for p in EVAL_CONFIGS}
    assert names == {f"{t}_{d}" for t in TASKS for d in ("demo", "ucf101", "hmdb51", "diving48", "ssv2")}


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_eval_config_loads(path, tmp_path):
    task = next(t for t in TASKS if path.name.startswith(t + "_"))
    overrides = [] if "demo" in path.name else [{"data": {"root": str(tmp_path)}}]
    cfg = load_eval_config(path, task=task, overrides=overrides)
    assert cfg.task == task and cfg.eval.num_clips == 10 and cfg.data.clip_len in (8, 16)
    dataset = path.stem.split("_")[-1]
    if dataset == "demo":
        assert cfg.data.format == "synthetic" and cfg.eval.pretrained == "runs/demo_cpu/checkpoints"
    else:
        assert cfg.data.format == dataset and cfg.data.split_id == 1 and cfg.data.stride == 2
    if task == "finetune":
        assert cfg.optim.lr == 0.025 and cfg.model.dropout == {"ucf101": 0.7, "hmdb51": 0.5}.get(dataset, 0.5)
        if dataset != "demo":
            assert cfg.train.epochs == 150 and cfg.optim.milestones == [60, 120]
    if task == "linear_probe":
        assert cfg.optim.lr == 5.0 and cfg.optim.weight_decay == 0.0
        if dataset != "demo":
            assert cfg.train.epochs == 100 and cfg.optim.milestones == [60, 80]


def test_a_config_for_another_task_is_refused():
    with pytest.raises(ConfigError, match="is for task 'finetune'"):
        load_eval_config(CONFIGS / "finetune_demo.yaml", task="linear_probe")


@pytest.mark.parametrize("setting, message", [
    ("model.dropout=1.0", "model.dropout"),
    ("eval.num_clips=0", "eval.num_clips"),
    ("eval.test_split=dev", "eval.test_split"),
    ("optim.lr=-1", "optim.lr"),
    ("data.crop=8", "data.crop"),
    ("eval.nonsense=1", "eval.nonsense"),
])
def test_bad_values_name_the_setting(setting, message):
    args = argparse.Namespace(set=[setting])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_eval_config(CONFIGS / "finetune_demo.yaml", task="finetune", overrides=cli_overrides(args))


def test_flags_map_onto_settings(tmp_path):
    args = argparse.Namespace(output_dir="runs/x", data_root=str(tmp_path), dataset_format=None, max_steps=7,
                              epochs=3, seed=5, loader="cpu", pretrained="1e3", set=["eval.batch_size=2"])
    cfg = load_eval_config(CONFIGS / "linear_probe_demo.yaml", task="linear_probe", overrides=cli_overrides(args))
    assert (cfg.output_dir, cfg.train.max_steps, cfg.train.epochs, cfg.train.seed) == ("runs/x", 7, 3, 5)
    assert cfg.data.loader == "cpu" and cfg.eval.batch_size == 2
    assert cfg.eval.pretrained == "1e3"  # a path stays a string whatever YAML would make of it
    assert cfg.data.format == "folder"  # a root without a format on the synthetic demo: class folders
    # a paper config keeps its dataset format when only --data-root is given
    args = argparse.Namespace(data_root=str(tmp_path), dataset_format=None, set=[])
    cfg = load_eval_config(CONFIGS / "finetune_ucf101.yaml", task="finetune", overrides=cli_overrides(args))
    assert cfg.data.format == "ucf101" and cfg.data.root == str(tmp_path)

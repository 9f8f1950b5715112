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
        # the demo scores the synthetic same-scene set beside the (scene-swapped) test split
        assert cfg.eval.test_name == "swapped-scene"
        assert cfg.eval.extra_test_sets == {"same-scene": "synthetic:same_scene"}
    else:
        assert cfg.data.format == dataset and cfg.data.split_id == 1 and cfg.data.stride == 2
        assert cfg.eval.extra_test_sets == {} and cfg.eval.test_name == "test"
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
    ("eval.test_name=a b", "eval.test_name"),
    ("eval.extra_test_sets=[same_scene]", "eval.extra_test_sets must be a mapping"),
    ("eval.extra_test_sets={bad/name: /x}", "eval.extra_test_sets.bad/name: a test set's name"),
    ("eval.extra_test_sets={Swapped-Scene: /x}", "eval.extra_test_sets.Swapped-Scene: the name is eval.test_name's"),
    ("eval.extra_test_sets={same: ''}", "eval.extra_test_sets.same must be a dataset folder"),
    ("eval.extra_test_sets={same: 'synthetic:'}", "eval.extra_test_sets.same must be a dataset folder"),
    ("eval.extra_test_sets={same: 3}", "eval.extra_test_sets.same must be a dataset folder"),
    ("eval.extra_test_sets={Same: /x, same: /y}", "eval.extra_test_sets: names differ only in case"),
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


def test_extra_test_set_folders_resolve_and_missing_ones_name_the_setting(tmp_path):
    from dali_fame.eval.config import parse_override
    from dali_fame.eval.testsets import extra_set_data, extra_set_folders

    (tmp_path / "synth" / "same_scene").mkdir(parents=True)
    (tmp_path / "data" / "swapped").mkdir(parents=True)
    demo = load_eval_config(CONFIGS / "linear_probe_demo.yaml", task="linear_probe")
    folders, warnings = extra_set_folders(demo, synthetic_root=tmp_path / "synth")
    assert folders == {"same-scene": tmp_path / "synth" / "same_scene"} and warnings == []
    data = extra_set_data(demo, folders["same-scene"])  # read like the built-in data's main split
    assert (data.format, data.root, data.annotation_dir) == ("ucf101", str(tmp_path / "synth" / "same_scene"), None)
    assert (data.crop, data.clip_len) == (demo.data.crop, demo.data.clip_len)
    # the demo config on other data: the synthetic set is skipped, and said so
    other = load_eval_config(CONFIGS / "linear_probe_demo.yaml", task="linear_probe",
                             overrides=[{"data": {"root": str(tmp_path / "data"), "format": "ucf101"}}])
    folders, warnings = extra_set_folders(other, synthetic_root=None)
    assert folders == {} and len(warnings) == 1 and "eval.extra_test_sets.same-scene" in warnings[0]
    # a relative folder is the data root's; an absolute one is itself; a missing one is an error
    rel = load_eval_config(CONFIGS / "finetune_ucf101.yaml", task="finetune", overrides=[
        {"data": {"root": str(tmp_path / "data")}}, parse_override("eval.extra_test_sets={swapped: swapped}")])
    assert extra_set_folders(rel, synthetic_root=None)[0] == {"swapped": tmp_path / "data" / "swapped"}
    assert extra_set_data(rel, tmp_path / "data" / "swapped").format == "ucf101"
    missing = load_eval_config(CONFIGS / "finetune_ucf101.yaml", task="finetune", overrides=[
        {"data": {"root": str(tmp_path / "data")}}, parse_override(f"eval.extra_test_sets={{x: {tmp_path / 'no'}}}")])
    with pytest.raises(ValueError, match=r"eval\.extra_test_sets\.x: .*no is not a folder"):
        extra_set_folders(missing, synthetic_root=None)


def test_side_by_side_line_and_results_columns(tmp_path):
    import json

    from dali_fame.eval.results import markdown_header, write_results
    from dali_fame.eval.testsets import side_by_side

    line = side_by_side({"swapped-scene": 0.0, "same-scene": 83.333}, metric="top-1", chance=12.5)
    assert line == "top-1 swapped-scene 0.0% | same-scene 83.3% (chance 12.5%)"
    sets = {"swapped-scene": {"top1": 0.0, "top5": 50.0}, "same-scene": {"top1": 83.333, "top5": 100.0}}
    labels = {"method": "MoCo", "backbone": "tiny", "pretrain_data": "synthetic", "dataset": "synthetic"}
    row = write_results(tmp_path, task="linear_probe", metrics=sets["swapped-scene"], labels=labels, config={},
                        test_sets=sets)
    assert row == "| linear_probe | MoCo | tiny | synthetic | synthetic | 0.0 | 50.0 | 83.3 | 100.0 |"
    assert markdown_header("linear_probe", list(sets)).splitlines()[0].endswith(
        "| top-1 swapped-scene | top-5 swapped-scene | top-1 same-scene | top-5 same-scene |")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["top1"] == 0.0 and list(saved["test_sets"]) == ["swapped-scene", "same-scene"]
    # one test set: the table and the file are as they always were
    row = write_results(tmp_path, task="linear_probe", metrics=sets["same-scene"], labels=labels, config={})
    assert row.endswith("| 83.3 | 100.0 |") and "test_sets" not in json.loads((tmp_path / "results.json").read_text())
    assert markdown_header("linear_probe").splitlines()[0].endswith("| top-1 | top-5 |")

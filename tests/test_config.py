"""Config loading, overrides and start-up validation; LR schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dali_fame.config import ConfigError, from_dict, load_config, parse_override, to_dict
from dali_fame.engine.schedule import lr_at

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("pretrain_*.yaml")) + [CONFIGS / "demo_cpu.yaml"])
def test_shipped_pretrain_configs_load(path, tmp_path):
    cfg = load_config(path, overrides=[{"data": {"root": str(tmp_path)}}])
    assert cfg.train.batch_size == (16 if "demo" in path.name else 64)
    assert cfg.moco.queue_size % cfg.train.batch_size == 0


def test_overrides_are_typed_and_ordered():
    cfg = load_config(overrides=[parse_override("optim.lr=1e-3"), parse_override("train.epochs=5"),
                                 parse_override("optim.milestones=[2, 4]"), parse_override("train.epochs=7")])
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.train.epochs == 7 and cfg.optim.milestones == [2, 4]
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, setting", [
    ("debias.beta=1.5", "debias.beta"),
    ("train.batch_size=48", "moco.queue_size"),
    ("train.epoch=3", "train.epoch"),
    ("train.epochs=three", "train.epochs"),
    ("data.loader=gpu", "data.loader"),
    ("optim.milestones=[180, 120]", "optim.milestones"),
    ("data.clip_len=1", "data.clip_len"),
    ("augment.gray_p=2", "augment.gray_p"),
    ("data.format=ucf101", "data.root"),
])
def test_bad_values_fail_naming_the_setting(override, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        load_config(overrides=[parse_override(override)])


def test_multistep_and_cosine_schedules():
    kw = dict(base_lr=0.01, steps_per_epoch=10, epochs=200, milestones=[120, 180])
    assert lr_at(0, **kw) == 0.01
    assert lr_at(1199, **kw) == 0.01
    assert lr_at(1200, **kw) == pytest.approx(0.001)
    assert lr_at(1800, **kw) == pytest.approx(0.0001)
    cos = dict(kw, schedule="cosine")
    assert lr_at(0, **cos) == 0.01 and lr_at(2000, **cos) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(1000, **cos) == pytest.approx(0.005)
    assert lr_at(5, **dict(kw, warmup_epochs=1.0)) == pytest.approx(0.005)
    assert math.isclose(lr_at(333, **cos), 0.005 * (1 + math.cos(math.pi * 333 / 2000)))

"""Weight loading for the evaluations: key accounting for our MoCo checkpoints, torchvision-style
state dicts and random init; checkpoint resolution; the frozen-backbone check."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dali_fame.eval.classify import CLASSIFIER_KEYS, VideoClassifier
from dali_fame.eval.weights import (
    BackboneChangedError,
    WeightLoadError,
    assert_unchanged,
    check_load,
    choose_backbone,
    choose_checkpoint,
    load_pretrained,
    read_checkpoint_config,
    resolve_pretrained,
    snapshot,
)
from dali_fame.moco import MoCo
from dali_fame.models import build_backbone

CONFIG = {"model": {"backbone": "tiny"}, "data": {"format": "synthetic", "crop": 32},
          "debias": {"method": "fame", "beta": 0.5}}


def _moco(width: int = 32, seed: int = 0) -> MoCo:
    torch.manual_seed(seed)
    model = MoCo(build_backbone("tiny", width=width), dim=16, queue_size=8, global_batch_size=4)
    with torch.no_grad():  # make the key encoder differ from the query encoder
        for p in model.encoder_k.parameters():
            p.add_(1.0)
    return model


def _save_checkpoint(step_dir, state: dict, config: dict | None = CONFIG) -> None:
    """The layout train/pretrain.py writes: accelerate's model.safetensors + trainer_state.json."""
    step_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(step_dir / "model.safetensors"))
    if config is not None:
        (step_dir / "trainer_state.json").write_text(json.dumps({"trainer_state": {"step": 1}, "config": config}))


def _classifier(width: int = 32, **kw) -> VideoClassifier:
    return VideoClassifier(build_backbone("tiny", width=width), num_classes=5, **kw)


def test_moco_checkpoint_loads_the_query_backbone_and_only_the_classifier_is_missing(tmp_path):
    moco = _moco()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    _save_checkpoint(ckpt, moco.state_dict())
    model = _classifier()
    report = load_pretrained(model, ckpt)
    assert report.kind == "moco" and report.config == CONFIG
    assert sorted(report.missing) == sorted(CLASSIFIER_KEYS) and report.unexpected == []
    assert sorted(report.loaded) == sorted("backbone." + k for k in moco.encoder_q.backbone.state_dict())
    assert "queue" in report.ignored and "queue_ptr" in report.ignored
    assert any(k.startswith("encoder_k.") for k in report.ignored)
    assert any(k.startswith("encoder_q.head.") for k in report.ignored)
    check_load(report, allowed_missing=CLASSIFIER_KEYS)
    for k, v in moco.encoder_q.backbone.state_dict().items():  # the query encoder, not the key one
        assert torch.equal(model.backbone.state_dict()[k], v), k
    with pytest.raises(WeightLoadError, match="fc.weight"):
        check_load(report, allowed_missing=())  # e.g. retrieval: nothing may be missing
    # a bare backbone (retrieval) takes every key
    bare = build_backbone("tiny", width=32)
    report = load_pretrained(bare, ckpt, prefix="")
    assert report.missing == [] and report.unexpected == []
    check_load(report, allowed_missing=())


def test_torchvision_state_dict_drops_its_fc(tmp_path):
    from torchvision.models.video import r2plus1d_18

    tv = r2plus1d_18(num_classes=400)
    path = tmp_path / "r2plus1d_18.pth"
    # wrapped and DDP-prefixed, as many released checkpoints are
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    model = VideoClassifier(build_backbone("r2plus1d_18"), num_classes=7)
    report = load_pretrained(model, path)
    assert report.kind == "torchvision" and report.config is None
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]  # torchvision's 400-way classifier
    assert sorted(report.missing) == sorted(CLASSIFIER_KEYS) and report.unexpected == []
    check_load(report, allowed_missing=CLASSIFIER_KEYS)
    assert torch.equal(model.backbone.stem[0].weight, tv.stem[0].weight)
    assert model.fc.weight.shape == (7, 512)


def test_random_init_reports_everything_missing_and_passes():
    model = _classifier()
    report = load_pretrained(model, None)
    assert report.kind == "none" and set(report.missing) == set(model.state_dict())
    check_load(report, allowed_missing=CLASSIFIER_KEYS)
    assert "random init" in report.summary()


def test_missing_unexpected_and_misshapen_keys_are_errors(tmp_path):
    state = _moco().state_dict()
    dropped = "encoder_q.backbone.features.3.weight"
    partial = {k: v for k, v in state.items() if k != dropped}
    _save_checkpoint(tmp_path / "a", partial)
    report = load_pretrained(_classifier(), tmp_path / "a")
    with pytest.raises(WeightLoadError, match=r"missing from the checkpoint: \[backbone.features.3.weight\]"):
        check_load(report, allowed_missing=CLASSIFIER_KEYS)

    extra = dict(state, **{"encoder_q.backbone.extra.weight": torch.zeros(3)})
    _save_checkpoint(tmp_path / "b", extra)
    report = load_pretrained(_classifier(), tmp_path / "b")
    assert report.unexpected == ["backbone.extra.weight"]
    with pytest.raises(WeightLoadError, match="unexpected"):
        check_load(report, allowed_missing=CLASSIFIER_KEYS)

    _save_checkpoint(tmp_path / "c", _moco(width=16).state_dict())
    with pytest.raises(WeightLoadError, match="shape"):
        load_pretrained(_classifier(width=32), tmp_path / "c")

    # a file whose keys belong to another network: nothing loads, everything is accounted for
    torch.save({"encoder.conv.weight": torch.zeros(2)}, tmp_path / "other.pt")
    report = load_pretrained(_classifier(), tmp_path / "other.pt")
    with pytest.raises(WeightLoadError, match="no tensor was loaded"):
        check_load(report, allowed_missing=CLASSIFIER_KEYS)


def test_resolve_pretrained_finds_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    state = _moco().state_dict()
    _save_checkpoint(run / "checkpoints" / "step_00000002", state)
    _save_checkpoint(run / "checkpoints" / "step_00000010", state)
    (run / "checkpoints" / "step_00000020.tmp").mkdir()  # an interrupted save is never picked
    newest = run / "checkpoints" / "step_00000010"
    assert resolve_pretrained(run) == newest
    assert resolve_pretrained(run / "checkpoints") == newest
    assert resolve_pretrained(run / "checkpoints" / "step_00000002") == run / "checkpoints" / "step_00000002"
    assert read_checkpoint_config(newest) == CONFIG
    torch.save({}, tmp_path / "w.pt")
    assert resolve_pretrained(tmp_path / "w.pt") == tmp_path / "w.pt"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no checkpoint"):
        resolve_pretrained(tmp_path / "run" / "checkpoints" / "step_00000020.tmp")


def test_choose_checkpoint_and_backbone(tmp_path):
    assert choose_checkpoint("none", from_cli=True) == (None, None)
    ckpt, warning = choose_checkpoint(None, from_cli=False)
    assert ckpt is None and "RANDOMLY INITIALISED" in warning
    ckpt, warning = choose_checkpoint(str(tmp_path / "missing"), from_cli=False)
    assert ckpt is None and "not found" in warning
    with pytest.raises(ValueError, match="does not exist"):
        choose_checkpoint(str(tmp_path / "missing"), from_cli=True)
    _save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001", _moco().state_dict())
    ckpt, warning = choose_checkpoint(str(tmp_path / "run" / "checkpoints"), from_cli=True)
    assert ckpt.name == "step_00000001" and warning is None

    assert choose_backbone(requested=None, checkpoint_config=CONFIG, fallback="i3d") == "tiny"
    assert choose_backbone(requested=None, checkpoint_config=None, fallback="i3d") == "i3d"
    assert choose_backbone(requested="tiny", checkpoint_config=CONFIG, fallback="i3d") == "tiny"
    with pytest.raises(ValueError, match="pretrained with 'tiny'"):
        choose_backbone(requested="r2plus1d_18", checkpoint_config=CONFIG, fallback="i3d")


def _train_steps(model: VideoClassifier, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=5.0, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 4, 16, 16, generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_backbone_stays_bit_identical_and_changes_are_detected():
    model = _classifier(frozen=True, normalize_features=True)
    reference = snapshot(model.backbone)
    fc_before = model.fc.weight.detach().clone()
    _train_steps(model)
    assert not model.backbone.training  # BatchNorm statistics frozen too, whatever .train() says
    assert not torch.equal(model.fc.weight, fc_before)  # the probe did learn
    assert_unchanged(model.backbone, reference)

    with torch.no_grad():  # the smallest possible change to one weight
        w = model.backbone.features[0].weight
        w[0, 0, 0, 0, 0] = torch.nextafter(w[0, 0, 0, 0, 0], torch.tensor(float("inf")))
    with pytest.raises(BackboneChangedError, match=r"features\.0\.weight"):
        assert_unchanged(model.backbone, reference)

    model = _classifier(frozen=True)
    reference = snapshot(model.backbone)
    model.backbone.features[1].running_mean += 1e-3  # a BatchNorm statistic moved
    with pytest.raises(BackboneChangedError, match="running_mean"):
        assert_unchanged(model.backbone, reference)


def test_the_check_catches_a_backbone_that_trained():
    model = _classifier(frozen=False)
    reference = snapshot(model.backbone)
    _train_steps(model, steps=1)
    with pytest.raises(BackboneChangedError):
        assert_unchanged(model.backbone, reference)


def _record_files(step_dir) -> None:
    """Add the file record save_checkpoint writes (sizes and SHA-256) to a hand-made checkpoint."""
    import hashlib

    meta = step_dir / "trainer_state.json"
    payload = json.loads(meta.read_text())
    payload["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                        for p in step_dir.iterdir() if p.name != "trainer_state.json"}
    meta.write_text(json.dumps(payload))


def _safetensors_size(state: dict) -> int:
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in state.items()}))


def test_a_damaged_pretrained_checkpoint_is_skipped_or_refused_naming_the_file(tmp_path):
    from dali_fame.engine.checkpoint import CheckpointError
    from dali_fame.eval.weights import find_pretrained

    run = tmp_path / "run"
    state = _moco().state_dict()
    good, bad = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000004"
    for step_dir in (good, bad):
        _save_checkpoint(step_dir, state)
        torch.save({"state": {}}, step_dir / "optimizer.bin")
        _record_files(step_dir)
    (good / "optimizer.bin").unlink()  # what an evaluation does not read does not matter to it
    model = bad / "model.safetensors"
    model.write_bytes(model.read_bytes()[:500])
    found, notes = find_pretrained(run / "checkpoints")
    assert found == good
    assert notes[0] == f"skipping checkpoint {bad}: model.safetensors is 500 bytes, " \
                       f"{_safetensors_size(state)} were written (truncated)"
    ckpt, warning = choose_checkpoint(str(run), from_cli=True)
    assert ckpt == good and f"using {good} instead" in warning
    with pytest.raises(CheckpointError, match=r"step_00000004' is damaged: model\.safetensors is 500 bytes"):
        choose_checkpoint(str(bad), from_cli=True)
    with pytest.raises(CheckpointError, match="step_00000004' is damaged"):
        choose_checkpoint(str(bad), from_cli=False)  # it exists: no quiet random-init fallback
    (good / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint in it verifies"):
        resolve_pretrained(run)


def test_a_damaged_state_dict_file_is_a_weights_error_naming_it(tmp_path):
    state = {k: v.contiguous() for k, v in _moco().state_dict().items()}
    cut = tmp_path / "cut.safetensors"
    save_file(state, str(cut))
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(WeightLoadError, match=r"cut\.safetensors is 300 bytes but its header"):
        load_pretrained(_classifier(), cut)
    pt = tmp_path / "cut.pt"
    torch.save(state, pt)
    pt.write_bytes(pt.read_bytes()[:300])
    with pytest.raises(WeightLoadError, match=r"cut\.pt is not a whole zip archive"):
        load_pretrained(_classifier(), pt)
    legacy = tmp_path / "legacy" / "step_00000001"  # no file record: the structural check still runs
    _save_checkpoint(legacy, state)
    (legacy / "model.safetensors").write_bytes((legacy / "model.safetensors").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"model\.safetensors is 300 bytes"):
        resolve_pretrained(legacy)

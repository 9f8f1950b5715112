"""Tests of the bias metrics (dali_fame.bias.evaluate, dali_fame.bias.probe).

Hand-computed cases pin each metric on fixed tensors; an end-to-end run on a small world of real
encoded videos shows that the metrics measure what they claim: an encoder that sees only the
background decodes the scene and follows it (high on same-scene clips under the scene-biased
probe, low on swapped ones, no contrast between a clip and its static version), one that sees
only motion scores exactly chance on the static clips.

The end-to-end runs use the ci-preset world of tests/bias/conftest.py (real h264 files).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dali_fame.bias.evaluate import (
    METRIC_KEYS,
    SETS,
    SetLabels,
    chance,
    contrasted_accuracy,
    evaluate_encoder,
    evaluate_encoders,
    load_backbone,
    read_world,
    retrieval_at1,
)
from dali_fame.bias.probe import fit_probe
from dali_fame.eval.weights import WeightLoadError

CLIP = {"clip_len": 8, "stride": 2, "crop": 32, "num_clips": 2}


def _labels(labels, scenes, instances) -> SetLabels:
    return SetLabels(labels=torch.tensor(labels), scenes=torch.tensor(scenes),
                     instances=torch.tensor(instances))


class SceneColour(nn.Module):
    """A pure scene model: the clip's time-averaged colour on a 4 x 4 grid (48 features)."""

    feature_dim = 48

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.mean(dim=2), 4).flatten(1)


class MotionSpread(nn.Module):
    """A pure motion model: where the frames change, as the horizontal and vertical spread of
    the thresholded absolute frame differences (2 features; all zero for a still clip)."""

    feature_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = (x[:, :, 1:] - x[:, :, :-1]).abs().sum(dim=1)  # (B, T-1, H, W)
        # above codec noise: ~0.5 in normalised units is ~30/255 over the 3 channels
        energy = (diff > 0.5).float().mean(dim=1)  # (B, H, W)
        total = energy.sum(dim=(1, 2)).clamp(min=1e-12)
        ys = torch.arange(x.shape[3], dtype=x.dtype)
        xs = torch.arange(x.shape[4], dtype=x.dtype)
        py, px = energy.sum(dim=2) / total[:, None], energy.sum(dim=1) / total[:, None]
        my, mx = (py * ys).sum(1, keepdim=True), (px * xs).sum(1, keepdim=True)
        sy = ((py * (ys - my) ** 2).sum(1)).sqrt()
        sx = ((px * (xs - mx) ** 2).sum(1)).sqrt()
        return torch.stack([sx, sy], dim=1)


# ------------------------------------------------------------------------ hand-computed cases


def test_contrasted_accuracy_pairs_by_instance():
    # instances 7, 8, 9, 10 of classes 0, 1, 2, 0; static clips listed in another order
    unseen = _labels([0, 1, 2, 0], [5, 5, 6, 6], [7, 8, 9, 10])
    static = _labels([2, 0, 1, 0], [5, 6, 5, 6], [9, 10, 8, 7])
    pred_unseen = torch.tensor([0, 1, 0, 0])    # right, right, wrong, right
    pred_static = torch.tensor([1, 2, 1, 0])    # for instances 9, 10, 8, 7
    # 7: right, static 0 == 0 -> no; 8: right, static 1 == 1 -> no; 9: wrong -> no;
    # 10: right, static 2 != 0 -> yes.  1 of 4.
    assert contrasted_accuracy(pred_unseen, unseen, pred_static, static) == 25.0
    pred_static = torch.tensor([1, 2, 0, 1])  # 9, 10, 8, 7 -> instances 7, 8, 10 count
    assert contrasted_accuracy(pred_unseen, unseen, pred_static, static) == 75.0
    with pytest.raises(ValueError, match="exactly once"):
        contrasted_accuracy(pred_unseen, unseen, pred_static, _labels([0] * 4, [0] * 4, [7, 8, 9, 9]))


def test_retrieval_centres_each_set_by_its_own_mean():
    # Centred: queries become (0, 1), (0, -1); gallery (1, 1)/sqrt2, (-1, -1)/sqrt2, so query 0
    # finds gallery 0 and query 1 gallery 1. Without centring query 1 = (5, 4) is nearest to
    # gallery 0 = (1, 3) (cosine 0.84 against a negative one): the centring decides.
    queries = torch.tensor([[5.0, 6.0], [5.0, 4.0]])
    gallery = torch.tensor([[1.0, 3.0], [-1.0, 1.0]])
    query = _labels([0, 1], [7, 7], [0, 1])
    gal = _labels([0, 1], [7, 8], [2, 3])
    r1, scene1 = retrieval_at1(queries, query, gallery, gal)
    assert (r1, scene1) == (100.0, 50.0)  # q1 -> g1: its class, another scene
    uncentred = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).t()
    assert uncentred.argmax(dim=1).tolist() == [0, 0]


def _write_manifest(root: Path, rows, *, classes=4, known=3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "set", "label", "scene", "scene_kind", "instance", "static"])
        w.writerows(rows)
    (root / "meta.json").write_text(json.dumps({"class_names": [f"c{i}" for i in range(classes)],
                                                "num_known_scenes": known}))
    return root


def test_chance_levels_from_the_manifest(tmp_path):
    rows = [(f"v/b{i}.mp4", "train_biased", i % 4, i % 3, "known", 100 + i, 0) for i in range(8)]
    # gallery (train_balanced) classes 0, 0, 1, 2 and scenes 0, 1, 1, 2
    rows += [(f"v/g{i}.mp4", "train_balanced", lab, sc, "known", 200 + i, 0)
             for i, (lab, sc) in enumerate([(0, 0), (0, 1), (1, 1), (2, 2)])]
    # test foregrounds: classes 0, 1; on swapped scenes 1, 1
    for name, scenes in (("test_same", (0, 1)), ("test_swapped", (1, 1)),
                         ("test_unseen", (5, 6)), ("test_static", (5, 6))):
        rows += [(f"v/{name}{i}.mp4", name, i, scenes[i], "known", i, int(name == "test_static"))
                 for i in range(2)]
    got = chance(_write_manifest(tmp_path / "w", rows))
    assert set(got) == set(METRIC_KEYS)
    assert got["same_top1"] == got["static_top1"] == got["biased_probe_swapped_top1"] == 25.0
    assert got["scene_decode_top1"] == pytest.approx(100 / 3)
    assert got["contrasted_acc"] == pytest.approx(100 * 0.25 * 0.75)
    # R@1: query class 0 matches 2 of 4 gallery videos, class 1 one of 4: (0.5 + 0.25) / 2
    assert got["retrieval_r1"] == pytest.approx(37.5)
    # scene@1: both queries on scene 1, which 2 of 4 gallery videos show
    assert got["retrieval_scene_at1"] == pytest.approx(50.0)


def test_read_world_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="manifest.csv not found"):
        read_world(tmp_path)
    rows = [("v/a.mp4", s, 0, 0, "known", 1, 0) for s in SETS]
    rows.append(("v/x.mp4", "test_same", 0, 0, "known", 2, 0))  # a foreground only in one set
    with pytest.raises(ValueError, match="same foreground instances"):
        read_world(_write_manifest(tmp_path / "w", rows))
    rows = [("v/a.mp4", s, 0, 0, "known", 1, 0) for s in SETS] + [("v/y.mp4", "test_sam", 0, 0, "known", 1, 0)]
    with pytest.raises(ValueError, match=r"manifest.csv:8: set 'test_sam'"):
        read_world(_write_manifest(tmp_path / "w2", rows))


# --------------------------------------------------------------------------------- the probe


def _clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 separable classes in 16-d, crowded the way random-init features are: a huge common
    direction, class differences of 1%, plus a constant and a dead dimension."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 16, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(3).repeat_interleave(n_per_class)
    x = 0.01 * (centres[labels] + 0.1 * torch.randn(len(labels), 16, generator=g))
    x[:, 0] += 10.0
    x[:, 1] = 0.0
    return F.normalize(x, dim=1), labels


def test_probe_separates_separable_features_and_generalises():
    x, y = _clusters(20, seed=0)
    probe = fit_probe(x, y, num_classes=3)
    assert probe.train_top1 == 100.0
    x_test, y_test = _clusters(20, seed=1)
    assert torch.equal(probe.predict(x_test), y_test)
    assert torch.isfinite(probe.weight).all()


def test_probe_is_deterministic():
    x, y = _clusters(10, seed=3)
    a, b = fit_probe(x, y, num_classes=3), fit_probe(x.clone(), y.clone(), num_classes=3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(a.scores(x), b.scores(x))
    # C is scikit-learn's: a stronger penalty (smaller C) gives smaller weights
    strong = fit_probe(x, y, num_classes=3, inverse_regularisation=0.01)
    assert strong.weight.norm() < a.weight.norm()
    with pytest.raises(ValueError, match="outside 0..2"):
        fit_probe(x, y + 1, num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(torch.full_like(x, float("nan")), y, num_classes=3)


# -------------------------------------------------------------------------------- the encoder


def test_load_backbone_random_seeded_and_state_dict_files(tmp_path):
    a = load_backbone(None, backbone="tiny", seed=5, width=16)
    b = load_backbone(None, backbone="tiny", seed=5, width=16)
    assert not a.training
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # a MoCo-style file (query backbone + key encoder + queue) and a finetune-style one
    moco = {f"encoder_q.backbone.{k}": v for k, v in a.state_dict().items()}
    moco.update({f"encoder_k.backbone.{k}": v for k, v in a.state_dict().items()})
    moco["queue"] = torch.zeros(16, 8)
    torch.save(moco, tmp_path / "moco.pt")
    finetuned = {f"backbone.{k}": v for k, v in a.state_dict().items()}
    finetuned.update({"fc.weight": torch.zeros(2, 16), "fc.bias": torch.zeros(2)})
    torch.save(finetuned, tmp_path / "finetuned.pt")
    for name in ("moco.pt", "finetuned.pt"):
        c = load_backbone(tmp_path / name, backbone="tiny", width=16)
        assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(WeightLoadError, match="shape"):
        load_backbone(tmp_path / "moco.pt", backbone="tiny", width=32)
    # a pretraining run's checkpoints/ folder (the layout train/pretrain.py writes): its newest
    # step, and the backbone recorded in its config must be the one asked for
    from safetensors.torch import save_file

    for step in (1, 3):
        folder = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        weights = {k: v + (step == 3) for k, v in moco.items()}
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
        (folder / "trainer_state.json").write_text(json.dumps(
            {"trainer_state": {"step": step}, "config": {"model": {"backbone": "tiny"}}}))
    d = load_backbone(tmp_path / "run" / "checkpoints", backbone="tiny", width=16)
    assert all(torch.equal(v + 1, d.state_dict()[k]) for k, v in a.state_dict().items()
               if v.is_floating_point())
    with pytest.raises(ValueError, match="pretrained with 'tiny'"):
        load_backbone(tmp_path / "run" / "checkpoints", backbone="r3d_18")
    del moco["encoder_q.backbone.features.0.weight"]
    torch.save(moco, tmp_path / "partial.pt")
    with pytest.raises(WeightLoadError, match="missing from the checkpoint"):
        load_backbone(tmp_path / "partial.pt", backbone="tiny", width=16)


def test_seeded_random_init_is_the_same_from_concurrent_threads():
    # the bench loads encoders from several threads; without the lock around the seeded
    # construction their draws interleave (measured: 12 of 40 backbones differed)
    from concurrent.futures import ThreadPoolExecutor

    def build(seed: int) -> nn.Module:
        return load_backbone(None, backbone="tiny", seed=seed, width=64)

    reference = [build(s) for s in range(8)]
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(build, range(8)))
        for a, b in zip(reference, got):
            assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ------------------------------------------------------------------------------ end to end
# On the ci-preset world (tests/bias/conftest.py): 4 classes, 4 known scenes, 12 foregrounds
# per test set, 16 balanced and 24 biased training videos; chance 25% (contrasted 18.75%).


def test_scene_model_decodes_the_scene_and_follows_it(ci_world):
    m = evaluate_encoder(SceneColour(), ci_world, workers=1, batch_size=8, **CLIP)
    assert set(m) == set(METRIC_KEYS)
    assert m["scene_decode_top1"] >= 90.0
    assert m["retrieval_scene_at1"] >= 90.0
    # the scene-biased probe reads the class off the scene: right on the class's own scene,
    # wrong when the scene is another class's
    assert m["biased_probe_same_top1"] >= 75.0
    assert m["biased_probe_swapped_top1"] <= 10.0
    # a clip and its static version look alike to it: no contrast
    assert m["contrasted_acc"] <= 10.0


def test_motion_model_is_at_chance_on_static_clips(ci_world):
    encoder = MotionSpread().train()
    m = evaluate_encoder(encoder, ci_world, workers=1, batch_size=8, **CLIP)
    ch = chance(ci_world)
    # every static clip has no motion: one prediction for all, that class's share of a
    # balanced set, which is exactly chance
    assert m["static_top1"] == ch["static_top1"] == 25.0
    for key in ("same_top1", "swapped_top1", "unseen_top1", "biased_probe_swapped_top1"):
        assert m[key] >= 2 * ch[key], (key, m)
    # right on unseen scenes and changed by freezing the clip
    assert m["contrasted_acc"] >= 1.5 * ch["contrasted_acc"]
    assert encoder.training  # run in eval mode, handed back in the mode it came in


def test_one_decoding_pass_for_several_encoders_gives_each_its_own_metrics(ci_world):
    encoders = {"scene": SceneColour(), "motion": MotionSpread()}
    together = evaluate_encoders(encoders, ci_world.out_dir, workers=2, batch_size=5, **CLIP)
    alone = evaluate_encoder(encoders["motion"], ci_world, workers=0, batch_size=8, **CLIP)
    assert together["motion"] == alone  # another batching and worker count: the same numbers
    assert together["scene"]["scene_decode_top1"] > together["motion"]["scene_decode_top1"]


def test_a_damaged_video_is_an_error_naming_it_not_a_silent_substitute(ci_world, tmp_path):
    import shutil

    world = shutil.copytree(ci_world.out_dir, tmp_path / "world", symlinks=False)
    victim = read_world(world).sets["test_static"].paths[3]
    data = Path(victim).read_bytes()
    Path(victim).write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=Path(victim).name):
        evaluate_encoder(SceneColour(), world, workers=0, batch_size=8, **CLIP)

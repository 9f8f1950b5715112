"""`dali-fame figure KIND` on small real runs: real h264 videos of a tiny synthetic dataset decoded
by the CPU loader, tiny-backbone and R(2+1)D-18 checkpoints saved in the test. Each command must
write PNGs that decode, are large and colourful enough to be a figure, and change when the
input changes; the numbers behind them are checked against the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dali_fame.cli import main as cli
from dali_fame.fame import fame_mask
from dali_fame.fame.ops import select_top
from dali_fame.fame.variants import VARIANTS
from dali_fame.figures.cam import activation_maps, last_feature_map
from dali_fame.figures.masks import fame_maps
from dali_fame.figures.temporal import temporal_kernels
from dali_fame.models import build_backbone


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """4 classes x 4 videos (12 train, 4 test), 16 frames of 64 x 64 h264, and checkpoints."""
    from dali_fame.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("figures")
    generate_dataset(root / "synth", num_classes=4, videos_per_class=4, num_frames=16, size=64,
                     codec="h264", progress=False, num_workers=1, overwrite=True)
    ckpts = {}
    for name, seed in (("tiny_a", 1), ("tiny_b", 2)):
        torch.manual_seed(seed)
        torch.save(build_backbone("tiny").state_dict(), root / f"{name}.pt")
        ckpts[name] = root / f"{name}.pt"
    torch.manual_seed(0)
    r21d = build_backbone("r2plus1d_18").state_dict()
    torch.save(r21d, root / "r21d_init.pt")
    # "trained": every temporal (t, 1, 1) kernel doubled, everything else unchanged
    doubled = {k: v * 2 if v.ndim == 5 and v.shape[2] > 1 and v.shape[3:] == (1, 1) else v
               for k, v in r21d.items()}
    torch.save(doubled, root / "r21d_x2.pt")
    ckpts["r21d_init"], ckpts["r21d_x2"] = root / "r21d_init.pt", root / "r21d_x2.pt"
    data = ["--data-root", str(root / "synth" / "videos"), "--dataset-format", "ucf101",
            "--set", f"data.annotation_dir={root / 'synth'}", "--set", f"data.cache_dir={root / 'cache'}",
            "--set", "data.workers=0", "--set", "data.clip_len=6", "--set", "data.crop=48"]
    return {"root": root, "data": data, "ckpt": ckpts}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli(["figure", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _written(stdout: str, suffix: str = ".png") -> list[Path]:
    return [Path(line.split(" ", 1)[1]) for line in stdout.splitlines()
            if line.startswith("wrote ") and line.endswith(suffix)]


def _image(path: Path, *, min_width: int, min_height: int, min_colours: int) -> np.ndarray:
    """Decode a PNG and check that it is a real figure, not a blank or a stub."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        rgb = np.asarray(img.convert("RGB"))
    h, w, _ = rgb.shape
    assert w >= min_width and h >= min_height, f"{path} is only {w} x {h}"
    colours = np.unique(rgb.reshape(-1, 3), axis=0).shape[0]
    assert colours > min_colours, f"{path} has only {colours} colours"
    return rgb


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


# --- masks -------------------------------------------------------------------------------------

def test_masks_figure_writes_one_png_per_clip_and_follows_beta(world, tmp_path, capsys):
    args = ["masks", *world["data"], "--clips", "2", "--frames", "2"]  # matplotlib: ~50 ms per panel
    rc, out, err = _run([*args, "--out", str(tmp_path / "b05")], capsys)
    assert rc == 0, err
    paths = _written(out)
    assert len(paths) == 2 and all(p.parent == tmp_path / "b05" for p in paths)
    img = _image(paths[0], min_width=250, min_height=700, min_colours=500)  # 7 rows x 2 frames
    rc, out, err = _run([*args, "--beta", "0.3", "--out", str(tmp_path / "b03")], capsys)
    assert rc == 0, err
    assert _differ(img, _image(_written(out)[0], min_width=250, min_height=700, min_colours=500))


@pytest.mark.parametrize("variant", VARIANTS)
def test_fame_maps_score_binarises_to_the_library_mask(variant):
    """The figure's score row is exactly what the library binarises, for every variant."""
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (3, 4, 24, 28, 3), generator=gen, dtype=torch.uint8)
    clips[:, :, 5:12, 6:14] = torch.arange(4, dtype=torch.uint8).view(1, 4, 1, 1, 1) * 60  # a mover
    beta = 0.5 if variant == "grid" else 0.3
    maps = fame_maps(clips, beta=beta, variant=variant, seed=3)
    assert torch.equal(maps.mask, fame_mask(clips, beta=beta, variant=variant, backend="torch"))
    if variant != "grid":  # grid keeps whole cells, not a pixel count
        assert torch.equal(select_top(maps.score, int(beta * 24 * 28)), maps.mask)
    assert float(maps.score.min()) >= 0.0 and float(maps.score.max()) <= 1.0
    assert not bool((maps.perm == torch.arange(3)).any())  # every background is another clip's
    keep = maps.mask[:, None, :, :, None]
    assert torch.equal(maps.merged, torch.where(keep, clips, clips[maps.perm]))


def test_masks_figure_refuses_a_single_clip_naming_the_setting(world, tmp_path, capsys):
    rc, _, err = _run(["masks", *world["data"], "--clips", "1", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "--clips" in err
    rc, _, err = _run(["masks", *world["data"], "--variant", "grid", "--beta", "0.3",
                       "--out", str(tmp_path)], capsys)
    assert rc == 2 and "beta" in err and "grid" in err


# --- cam ---------------------------------------------------------------------------------------

def test_cam_figure_puts_checkpoints_side_by_side_and_depends_on_the_weights(world, tmp_path, capsys):
    a, b = str(world["ckpt"]["tiny_a"]), str(world["ckpt"]["tiny_b"])
    base = ["cam", *world["data"], "--backbone", "tiny", "--clips", "1", "--frames", "4"]
    rc, out, err = _run([*base, "--pretrained", f"A={a}", "--pretrained", f"B={b}",
                         "--out", str(tmp_path / "ab")], capsys)
    assert rc == 0, err
    assert "weights A: " in out and "24 tensors loaded, 0 missing" in out
    both = _image(_written(out)[0], min_width=500, min_height=350, min_colours=1000)  # 3 rows
    images = []
    for name, path in (("a", a), ("b", b)):
        rc, out, err = _run([*base, "--pretrained", path, "--out", str(tmp_path / name)], capsys)
        assert rc == 0, err
        images.append(_image(_written(out)[0], min_width=500, min_height=230, min_colours=1000))
    assert both.shape[0] > images[0].shape[0]  # one row per checkpoint
    assert _differ(images[0], images[1])


def test_activation_map_peaks_where_the_features_are_strong():
    """A 1x1 conv summing the channels: its feature map is large only on the bright square."""
    conv = nn.Conv3d(3, 4, kernel_size=1, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool3d(1), nn.Flatten()).eval()
    clips = torch.full((1, 4, 16, 16, 3), 105, dtype=torch.uint8)  # about the K400 mean: ~0 input
    clips[:, :, 2:6, 9:14] = 255
    fmap = last_feature_map(model, torch.zeros(1, 3, 4, 16, 16))
    assert fmap.shape == (1, 4, 4, 16, 16)  # the conv's map, not the 1 x 1 x 1 pool's
    for reduce in ("mean-abs", "l2"):
        amap = activation_maps(model, clips, reduce=reduce)
        assert amap.shape == (1, 4, 16, 16)
        assert float(amap[0, :, 2:6, 9:14].min()) > 0.99 and float(amap[0, :, 10:, :8].max()) < 0.1


def test_cam_figure_names_a_checkpoint_that_does_not_fit(world, tmp_path, capsys):
    rc, _, err = _run(["cam", *world["data"], "--backbone", "r3d_18", "--pretrained",
                       str(world["ckpt"]["tiny_a"]), "--out", str(tmp_path)], capsys)
    assert rc == 2 and "tiny_a.pt" in err


# --- temporal ----------------------------------------------------------------------------------

def test_temporal_figure_compares_checkpoints_per_layer(world, tmp_path, capsys):
    init, x2 = world["ckpt"]["r21d_init"], world["ckpt"]["r21d_x2"]
    rc, out, err = _run(["temporal", "--pretrained", f"init={init}", "--pretrained", f"x2={x2}",
                         "--out", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    assert "| checkpoint | stem | layer1 | layer2 | layer3 | layer4 |" in out
    img = _image(_written(out)[0], min_width=500, min_height=300, min_colours=100)
    stats = json.loads((tmp_path / "a" / "temporal.json").read_text())
    assert stats["layers"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    for layer in stats["layers"]:  # doubled kernels: doubled magnitudes, same count
        s_init, s_x2 = stats["checkpoints"]["init"][layer], stats["checkpoints"]["x2"][layer]
        assert s_x2["median"] == pytest.approx(2 * s_init["median"], rel=1e-6)
        assert s_x2["count"] == s_init["count"]
    assert stats["checkpoints"]["init"]["stem"]["count"] == 45 * 64 * 3  # stem.3: Conv3d(45, 64, (3, 1, 1))
    rc, out, err = _run(["temporal", "--pretrained", f"init={init}", "--pretrained", f"x2={init}",
                         "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert _differ(img, _image(_written(out)[0], min_width=500, min_height=300, min_colours=100))


def test_temporal_kernels_are_the_t11_convolutions_of_every_block():
    with torch.device("meta"):  # shapes only: no 31 M-parameter initialisation
        model = build_backbone("r2plus1d_18")
    expected = sum(m.weight.numel() for m in model.modules()
                   if isinstance(m, nn.Conv3d) and m.kernel_size[0] > 1 and m.kernel_size[1:] == (1, 1))
    assert expected > 0
    model = model.to_empty(device="cpu")
    kernels = temporal_kernels(model)
    assert list(kernels) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [len(v) for v in kernels.values()] == [1, 4, 4, 4, 4]  # 2 blocks x 2 convs per layer
    assert sum(w.size for ws in kernels.values() for w in ws) == expected


def test_temporal_values_by_hand():
    """One (3, 1, 1) conv of 2 x 1 kernels [1, -2, 2] and [0, 3, 4] next to a (1, 3, 3) spatial one."""
    from dali_fame.figures.temporal import temporal_values

    model = nn.Sequential()
    model.add_module("layer1", nn.Sequential(nn.Conv3d(1, 1, (1, 3, 3), bias=False),
                                             nn.Conv3d(1, 2, (3, 1, 1), bias=False)))
    with torch.no_grad():
        model.layer1[1].weight.copy_(torch.tensor([[1.0, -2.0, 2.0], [0.0, 3.0, 4.0]]).view(2, 1, 3, 1, 1))
    assert sorted(temporal_values(model, stat="abs")["layer1"].tolist()) == [0, 1, 2, 2, 3, 4]
    assert temporal_values(model, stat="kernel-l2")["layer1"].tolist() == [3.0, 5.0]  # sqrt(1+4+4), sqrt(9+16)
    with pytest.raises(ValueError, match="--stat"):
        temporal_values(model, stat="max")


def test_temporal_figure_refuses_a_network_without_temporal_convolutions(world, tmp_path, capsys):
    rc, _, err = _run(["temporal", "--pretrained", f"tiny={world['ckpt']['tiny_a']}", "--backbone", "tiny",
                       "--out", str(tmp_path)], capsys)
    assert rc == 2 and "TinyCNN3D has no temporal (t, 1, 1) convolution" in err


# --- retrieval ---------------------------------------------------------------------------------

def test_retrieval_figure_on_the_fly_and_from_neighbors_json(world, tmp_path, capsys):
    base = ["retrieval", *world["data"], "--backbone", "tiny", "--set", "eval.num_clips=2"]
    rc, out, err = _run([*base, "--pretrained", str(world["ckpt"]["tiny_a"]), "--queries", "0,1",
                         "--out", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    assert "retrieval: 4 queries (2 clips each): R@1" in out
    img_a = _image(_written(out)[0], min_width=400, min_height=250, min_colours=500)
    entries = json.loads((tmp_path / "a" / "neighbors.json").read_text())
    assert len(entries) == 4 and len({e["class"] for e in entries}) == 4  # one test video per class
    for e in entries:
        sims = [n["similarity"] for n in e["neighbors"]]
        assert len(sims) == 10 and sims == sorted(sims, reverse=True)
        assert all(Path(n["path"]).is_file() and n["path"] != e["path"] for n in e["neighbors"])
    # the same neighbours read back from the file: the same panels (title aside)
    rc, out, err = _run(["retrieval", "--neighbors", str(tmp_path / "a"), "--queries", "0,1",
                         "--out", str(tmp_path / "file")], capsys)
    assert rc == 0, err
    _image(_written(out)[0], min_width=400, min_height=250, min_colours=500)
    rc, out, err = _run([*base, "--pretrained", str(world["ckpt"]["tiny_b"]), "--queries", "0,1",
                         "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert _differ(img_a, _image(_written(out)[0], min_width=400, min_height=250, min_colours=500))


def test_retrieval_figure_names_a_bad_neighbors_file(tmp_path, capsys):
    bad = tmp_path / "neighbors.json"
    bad.write_text('{"not": "a list"}')
    rc, _, err = _run(["retrieval", "--neighbors", str(bad), "--out", str(tmp_path)], capsys)
    assert rc == 2 and str(bad) in err
    rc, _, err = _run(["retrieval", "--neighbors", str(tmp_path / "none"), "--out", str(tmp_path)], capsys)
    assert rc == 2 and "no neighbors.json" in err


# --- a real pretraining checkpoint (slow: a 2-epoch MoCo run first) -----------------------------

@pytest.mark.slow
def test_figures_read_a_pretraining_run_and_take_its_backbone(world, tmp_path, capsys):
    """A run's checkpoints/ folder: the backbone comes from its stored config (no --backbone)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "pretrain"
    proc = subprocess.run([sys.executable, str(repo / "train" / "pretrain.py"), "--output-dir", str(run),
                           *world["data"], "--set", "model.backbone=tiny", "--set", "train.batch_size=4",
                           "--set", "moco.queue_size=16", "--set", "train.image_every=0", "--epochs", "2"],
                          cwd=repo, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = str(run / "checkpoints")
    rc, out, err = _run(["cam", *world["data"], "--clips", "1", "--frames", "3", "--pretrained", ckpt,
                         "--pretrained", "none", "--out", str(tmp_path / "cam")], capsys)
    assert rc == 0, err
    assert "(moco): 24 tensors loaded, 0 missing [], 0 unexpected []" in out and "[tiny]" in out
    _image(_written(out)[0], min_width=350, min_height=300, min_colours=1000)
    rc, out, err = _run(["retrieval", *world["data"], "--set", "eval.num_clips=2", "--pretrained", ckpt,
                         "--out", str(tmp_path / "retrieval")], capsys)
    assert rc == 0, err
    _image(_written(out)[0], min_width=400, min_height=400, min_colours=500)

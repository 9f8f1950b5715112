"""dali_fame.data.synthetic: layout, decoded pixels, ground truth, motions, bias, determinism.

Codec tolerance (absolute error on 0..255, generator frames vs PyAV-decoded frames) is
video_io.CODEC_TOLERANCE: h264 / vp9 mean <= 4.0, 99th percentile <= 48; mjpeg mean <= 3.5,
99th percentile <= 16.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dali_fame.data import synthetic, video_io

TINY = {
    "num_classes": 3,
    "videos_per_class": 2,
    "num_frames": 12,
    "test_fraction": 0.5,
    "progress": False,
}
SIZES = {"h264": 64, "vp9": 64, "mjpeg": (63, 65)}  # mjpeg (4:4:4) takes odd, non-square sizes


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, synthetic.DatasetInfo]:
    """codec -> a tiny dataset (3 classes x 2 videos x 12 frames), bias_train 1, bias_test 0;
    the vp9 one has a distractor and camera shake."""
    out = {}
    for codec in video_io.CODECS:
        out[codec] = synthetic.generate_dataset(
            tmp_path_factory.mktemp(codec) / "ds",
            codec=codec,
            size=SIZES[codec],
            bias_train=1.0,
            bias_test=0.0,
            distractor=codec == "vp9",
            camera_shake=codec == "vp9",
            seed=5,
            **TINY,
        )
    return out


def _render(
    info: synthetic.DatasetInfo, video: synthetic.SyntheticVideo
) -> synthetic.RenderedVideo:
    meta = json.loads((info.out_dir / "meta.json").read_text())["options"]
    return synthetic.render_video(
        class_index=video.label,
        scene=video.scene,
        video_index=video.index,
        num_frames=info.num_frames,
        size=(info.height, info.width),
        seed=meta["seed"],
        distractor=meta["distractor"],
        camera_shake=meta["camera_shake"],
    )


def test_layout_split_files_and_annotations(datasets):
    info = datasets["h264"]
    out = info.out_dir
    names = ["horizontal_oscillation", "vertical_oscillation", "circle"]
    assert info.class_names == tuple(names)
    assert (out / "classInd.txt").read_text().splitlines() == [
        f"{i + 1} {n}" for i, n in enumerate(names)
    ]
    train = [line.split() for line in (out / "trainlist01.txt").read_text().splitlines()]
    test = [line.split() for line in (out / "testlist01.txt").read_text().splitlines()]
    assert len(train) == len(test) == 3  # test_fraction 0.5 of 2 videos per class
    for rel, label in train:
        class_name = rel.split("/")[0]
        assert int(label) == names.index(class_name) + 1  # UCF101 labels are 1-based
        assert (out / "videos" / rel).is_file() and rel.endswith(".mp4")
    for (rel,) in test:
        assert (out / "videos" / rel).is_file()
    with open(out / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "split", "scene"]
    assert [(r["path"], int(r["label"]), r["split"], int(r["scene"])) for r in rows] == [
        (v.path, v.label, v.split, v.scene) for v in info.videos
    ]
    for v in info.videos:
        assert (out / v.path).is_file()  # csv paths are relative to out_dir
        with np.load(out / "gt" / f"{v.video_id}.npz") as gt:
            assert (int(gt["class"]), int(gt["scene"])) == (v.label, v.scene)
            assert gt["masks"].dtype == bool and gt["masks"].shape == (12, 64, 64)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["options"]["codec"] == "h264" and meta["num_videos"] == 6
    assert meta["version"] == synthetic.FORMAT_VERSION and synthetic.is_current(out)


def test_same_scene_set_is_the_test_split_on_its_own_scene(datasets):
    """same_scene/ holds every test video again, on its class's scene, readable as UCF101."""
    from dali_fame.data.readers import read_dataset

    info = datasets["h264"]  # 3 scenes, bias_test 0: every test video is on another scene
    out, same = info.out_dir, info.out_dir / "same_scene"
    tests = [v for v in info.videos if v.split == "test"]
    assert [v.video_id for v in info.same_scene] == [v.video_id for v in tests]
    assert all(v.scene != v.label % 3 for v in tests)
    assert [v.scene for v in info.same_scene] == [v.label % 3 for v in tests]
    meta = json.loads((out / "meta.json").read_text())
    assert [synthetic.SyntheticVideo(**row) for row in meta["same_scene"]] == list(info.same_scene)
    assert (same / "classInd.txt").read_bytes() == (out / "classInd.txt").read_bytes()
    # the same relative paths as the main test list, under same_scene/videos
    assert (same / "testlist01.txt").read_text() == (out / "testlist01.txt").read_text()
    spec = read_dataset(str(same), format="ucf101", split="test")
    assert spec.class_names == list(info.class_names)
    assert [(Path(e.path), e.label) for e in spec.entries] == [
        (out / v.path, v.label) for v in info.same_scene
    ]
    for main, moved in zip(tests, info.same_scene):
        with np.load(out / "gt" / f"{main.video_id}.npz") as a, np.load(
            same / "gt" / f"{moved.video_id}.npz"
        ) as b:
            assert int(b["scene"]) == moved.scene and int(b["class"]) == main.label
            np.testing.assert_array_equal(a["masks"], b["masks"])  # same object and trajectory
            np.testing.assert_array_equal(a["centers"], b["centers"])
        # decoded: the same object where the mask is, another scene around it
        masks = np.load(out / "gt" / f"{main.video_id}.npz")["masks"]
        x = video_io.read_frames(out / main.path).astype(np.int16)
        y = video_io.read_frames(out / moved.path).astype(np.int16)
        inner = masks & ~_border(masks)  # codec blocks mix the object's edge with the scene
        assert inner.any() and np.abs(x - y)[inner].mean() < 8 and np.abs(x - y)[~masks].mean() > 10, main.video_id
    # the main splits never list a same-scene file
    assert "same_scene" not in (out / "trainlist01.txt").read_text()


def _border(masks: np.ndarray, width: int = 3) -> np.ndarray:
    """bool (T, H, W): pixels within ``width`` of a mask edge (either side)."""
    grown, shrunk = masks.copy(), masks.copy()
    for _ in range(width):
        for axis in (1, 2):
            for step in (1, -1):
                grown |= np.roll(grown, step, axis=axis)
                shrunk &= np.roll(shrunk, step, axis=axis)
    return grown & ~shrunk


def test_an_old_or_unfinished_dataset_is_not_current(tmp_path):
    out = tmp_path / "ds"
    synthetic.generate_dataset(out, **dict(TINY, num_classes=1, num_frames=3, size=32))
    assert synthetic.is_current(out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(dict(meta, version=1)))
    assert not synthetic.is_current(out)
    report = synthetic.inspect_dataset(out)
    assert any("format version 1" in p for p in report["problems"])
    (out / "meta.json").write_text("{trunc")
    assert not synthetic.is_current(out)
    (out / "meta.json").unlink()
    assert not synthetic.is_current(out)


@pytest.mark.parametrize("codec", video_io.CODECS)
def test_every_video_decodes_to_the_generators_frames(datasets, codec):
    info = datasets[codec]
    max_mean, max_p99 = video_io.CODEC_TOLERANCE[codec]
    for v in info.videos + info.same_scene:
        path = info.out_dir / v.path
        probe = video_io.probe_video(path)
        assert (probe.num_frames, probe.width, probe.height) == (12, info.width, info.height)
        assert probe.fps == pytest.approx(25.0) and not probe.variable_frame_rate
        decoded = video_io.read_frames(path)
        rendered = _render(info, v)
        err = np.abs(decoded.astype(np.int16) - rendered.frames.astype(np.int16))
        assert err.mean() <= max_mean and np.percentile(err, 99) <= max_p99, (
            v.video_id,
            err.mean(),
        )
        gt_dir = info.out_dir / ("same_scene/gt" if v in info.same_scene else "gt")
        with np.load(gt_dir / f"{v.video_id}.npz") as gt:
            np.testing.assert_array_equal(gt["masks"], rendered.masks)


def test_masks_mark_the_object_in_the_decoded_video(datasets):
    info = datasets["vp9"]  # distractor and camera shake on
    max_mean = video_io.CODEC_TOLERANCE["vp9"][0]
    for v in info.videos:
        decoded = video_io.read_frames(info.out_dir / v.path).astype(np.int16)
        rendered = _render(info, v)
        with np.load(info.out_dir / "gt" / f"{v.video_id}.npz") as gt:
            masks, d_masks = gt["masks"], gt["distractor_masks"]
        assert masks.any(axis=(1, 2)).all(), "the object is visible in every frame"
        assert d_masks.any() and not (masks & d_masks).any()
        background = rendered.background.astype(np.int16)
        # The generator's object differs from what is behind it almost everywhere in the mask...
        assert (rendered.frames[masks] != rendered.background[masks]).any(axis=-1).mean() > 0.9
        # ...and the decoded video shows it there: far from the background inside the mask,
        # equal to it up to codec error outside the object and the distractor.
        inside = np.abs(decoded - background)[masks].mean()
        outside = np.abs(decoded - background)[~(masks | d_masks)].mean()
        assert outside <= max_mean and inside > 5 * outside, (v.video_id, inside, outside)
        # The mask's pixels carry the object's colours, not the background's: per pixel, the
        # decoded colour is nearer the rendered object than the background behind it.
        obj = rendered.frames[masks].astype(np.int16)
        near_object = np.abs(decoded[masks] - obj).sum(-1) < np.abs(
            decoded[masks] - background[masks]
        ).sum(-1)
        assert near_object.mean() > 0.75, (v.video_id, near_object.mean())


def _trajectory(name: str, video_index: int, frames: int = 40):
    r = synthetic.render_video(
        class_index=synthetic.MOTIONS.index(name),
        scene=0,
        video_index=video_index,
        num_frames=frames,
        size=96,
        seed=1,
    )
    area = r.masks.sum(axis=(1, 2)).astype(float)
    t, ys, xs = np.nonzero(r.masks)
    centroid = np.stack([np.bincount(t, xs) / area, np.bincount(t, ys) / area], axis=1)
    return r, area, centroid


@pytest.mark.parametrize("video_index", [0, 1, 2])
def test_motion_defines_the_class(video_index):
    def spread(a):
        return float(a.max() - a.min())

    _, _, c = _trajectory("horizontal_oscillation", video_index)
    assert spread(c[:, 0]) > 15 and spread(c[:, 1]) < 1.5
    _, _, c = _trajectory("vertical_oscillation", video_index)
    assert spread(c[:, 1]) > 15 and spread(c[:, 0]) < 1.5
    r, _, _ = _trajectory("circle", video_index)
    radius = np.linalg.norm(r.centers - r.centers.mean(axis=0), axis=1)
    assert radius.mean() > 8 and radius.std() < 0.2 * radius.mean()
    r, _, _ = _trajectory("diagonal_bounce", video_index)
    step = np.abs(np.diff(r.centers, axis=0))
    assert np.mean(np.isclose(step[:, 0], step[:, 1], atol=1e-3)) > 0.7 and step.mean() > 1
    _, area, c = _trajectory("grow_shrink", video_index)
    assert area.max() / area.min() > 1.3 and spread(c[:, 0]) < 1 and spread(c[:, 1]) < 1
    r, area, c = _trajectory("rotate", video_index)
    assert area.max() / area.min() < 1.2 and spread(c[:, 0]) < 1 and spread(c[:, 1]) < 1
    iou = (r.masks[0] & r.masks[10]).sum() / (r.masks[0] | r.masks[10]).sum()
    assert iou < 0.9
    r, _, _ = _trajectory("still", video_index)
    assert (r.masks == r.masks[0]).all() and (r.frames == r.frames[0]).all()
    r, _, _ = _trajectory("zigzag", video_index)
    turns = [np.sum(np.diff(np.sign(np.diff(r.centers[:, axis]))) != 0) for axis in (0, 1)]
    assert max(turns) >= 4  # the fast axis turns every few frames
    r, _, _ = _trajectory("jump", video_index)
    moves = np.linalg.norm(np.diff(r.centers, axis=0), axis=1)
    assert np.sum(moves > 0) >= 2 and np.sum(moves == 0) >= 30  # rests, then jumps


def test_scene_and_distractor_change_only_the_background():
    # The bias benchmark relies on this: moving a video to another scene keeps its object.
    a = synthetic.render_video(class_index=2, scene=0, video_index=4, num_frames=6, size=64, seed=9)
    b = synthetic.render_video(class_index=2, scene=3, video_index=4, num_frames=6, size=64, seed=9)
    d = synthetic.render_video(
        class_index=2, scene=0, video_index=4, num_frames=6, size=64, seed=9, distractor=True
    )
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.frames[a.masks], b.frames[b.masks])
    assert np.abs(a.background.astype(int) - b.background).mean() > 10
    np.testing.assert_array_equal(a.masks, d.masks)
    assert d.distractor_masks.any() and not a.distractor_masks.any()


def test_appearance_varies_within_a_class():
    looks = []
    for index in range(8):
        r = synthetic.render_video(
            class_index=0, scene=0, video_index=index, num_frames=2, size=64, seed=9
        )
        looks.append([r.masks[0].sum(), *r.frames[0][r.masks[0]].astype(float).mean(axis=0)])
    looks = np.array(looks)
    assert len(np.unique(looks[:, 0])) == 8  # sizes / shapes differ
    assert looks[:, 1:].std(axis=0).mean() > 20  # colours differ


def test_bias_in_the_written_dataset(datasets):
    info = datasets["mjpeg"]  # bias_train 1, bias_test 0, 3 scenes
    for v in info.videos:
        with np.load(info.out_dir / "gt" / f"{v.video_id}.npz") as gt:
            scene, label = int(gt["scene"]), int(gt["class"])
        assert (scene == label % 3) == (v.split == "train"), v
    assert info.realised_bias("train") == 1.0 and info.realised_bias("test") == 0.0


def test_bias_probability_and_other_scenes_uniform():
    videos = synthetic.plan_videos(
        num_classes=10,
        videos_per_class=200,
        num_scenes=4,
        bias_train=0.7,
        bias_test=0.2,
        test_fraction=0.3,
        seed=3,
    )
    for split, bias in (("train", 0.7), ("test", 0.2)):
        rows = [v for v in videos if v.split == split]
        own = np.mean([v.scene == v.label % 4 for v in rows])
        assert abs(own - bias) < 0.05, (split, own)
        off = np.bincount([v.scene for v in rows if v.label == 1 and v.scene != 1], minlength=4)
        assert off[1] == 0 and off[[0, 2, 3]].min() > 0.5 * off[[0, 2, 3]].mean()
    one_scene = synthetic.plan_videos(
        num_classes=3, videos_per_class=4, num_scenes=1, bias_train=0.0
    )
    assert {v.scene for v in one_scene} == {0}


def _files(folder: Path) -> dict[str, bytes]:
    names = ["meta.json", "annotations.csv", "classInd.txt", "trainlist01.txt", "testlist01.txt"]
    files = {n: (folder / n).read_bytes() for n in names}
    for gt in ("gt", "same_scene/gt"):
        files.update({f"{gt}/{p.name}": p.read_bytes() for p in sorted((folder / gt).iterdir())})
    files["same_scene/testlist01.txt"] = (folder / "same_scene" / "testlist01.txt").read_bytes()
    return files


def test_same_seed_gives_byte_identical_ground_truth_for_any_worker_count(tmp_path):
    opts = dict(TINY, num_classes=2, num_frames=6, size=32, distractor=True, camera_shake=True)
    a = synthetic.generate_dataset(tmp_path / "a", seed=11, num_workers=1, **opts)
    b = synthetic.generate_dataset(tmp_path / "b", seed=11, num_workers=2, **opts)
    c = synthetic.generate_dataset(tmp_path / "c", seed=12, num_workers=1, **opts)
    fa, fb, fc = _files(a.out_dir), _files(b.out_dir), _files(c.out_dir)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["meta.json"] != fc["meta.json"]
    assert all(fa[k] != fc[k] for k in fa if "gt/" in k)  # every video changed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "h265"}, "codec 'h265'"),
        ({"num_frames": 1}, "num_frames"),
        ({"size": 63}, "even"),
        # valid: the control case (also: no test split at all)
        ({"size": (64, 66), "codec": "vp9", "num_frames": 2, "test_fraction": 0.0}, None),
        ({"size": (65, 64), "codec": "vp9"}, "even"),
        ({"size": 8}, "size"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 11}, "num_classes"),
        ({"videos_per_class": 0}, "videos_per_class"),
        ({"num_scenes": 0}, "num_scenes"),
        ({"bias_train": 1.5}, "bias_train"),
        ({"bias_test": -0.1}, "bias_test"),
        ({"fps": 0}, "fps"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"videos_per_class": 1, "test_fraction": 0.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options_fail_before_any_file_is_written(tmp_path, kwargs, message):
    out = tmp_path / "new"
    opts = dict(TINY, num_classes=1, num_frames=3, size=32) | kwargs
    if message is None:
        synthetic.generate_dataset(out, **opts)
        meta = json.loads((out / "meta.json").read_text())  # strict JSON: null, not NaN
        assert meta["splits"] == {"train": 2, "test": 0} and meta["bias_realised"]["test"] is None
        assert (out / "testlist01.txt").read_text() == ""
        return
    with pytest.raises(ValueError, match=message):
        synthetic.generate_dataset(out, **opts)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(ValueError, match=message):
        synthetic.generate_dataset(out, **opts)
    assert list(out.iterdir()) == []


def test_overwrite_rules(tmp_path):
    opts = dict(TINY, num_classes=1, num_frames=3, size=32)
    synthetic.generate_dataset(tmp_path / "ds", **opts)
    with pytest.raises(ValueError, match="overwrite"):
        synthetic.generate_dataset(tmp_path / "ds", **opts)
    info = synthetic.generate_dataset(tmp_path / "ds", overwrite=True, **dict(opts, codec="mjpeg"))
    assert (
        sorted(p.suffix for p in (tmp_path / "ds" / "videos" / info.class_names[0]).iterdir())
        == [".avi"] * 2
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        synthetic.generate_dataset(tmp_path / "other", overwrite=True, **opts)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


def test_cli_generate_inspect_and_preview(tmp_path, capsys):
    from dali_fame.cli import main

    out = tmp_path / "ds"
    args = [
        "synth",
        "--out",
        str(out),
        "--classes",
        "3",
        "--videos-per-class",
        "2",
        "--frames",
        "8",
    ]
    args += [
        "--size",
        "48x32",
        "--codec",
        "vp9",
        "--test-fraction",
        "0.5",
        "--bias-train",
        "1",
        "--no-progress",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "wrote 6 videos (3 train / 3 test) of 3 classes" in text and "48x32" in text
    assert "train 1.000" in text
    assert (
        main(["synth", "--out", str(out), "--inspect", "--preview", str(out / "preview.png")]) == 0
    )
    text = capsys.readouterr().out
    assert "all checks passed" in text and "circle_000" in text
    assert "same-scene test set (same_scene/): 3 videos" in text
    assert "circle_001" in text.split("decoded check")[1]  # the same-scene copy was decoded too
    assert (out / "preview.png").stat().st_size > 10_000
    # A broken video is reported, with a failing exit code.
    broken = out / "videos" / "circle" / "circle_000.webm"
    broken.write_bytes(broken.read_bytes()[:200])
    assert main(["synth", "--out", str(out), "--inspect"]) == 1
    assert "PROBLEMS" in capsys.readouterr().out
    # A bad option: clear message, exit code 2, nothing written.
    assert main(["synth", "--out", str(tmp_path / "bad"), "--size", "33", "--no-progress"]) == 2
    assert "even" in capsys.readouterr().out and not (tmp_path / "bad").exists()

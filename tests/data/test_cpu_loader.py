"""CPU loader: exact frames vs a direct PyAV decode, crops, sharding, bad files replaced, eval
mode, starting mid-epoch."""

from __future__ import annotations

import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from faults import (  # tests/faults.py (tests/ is on sys.path via conftest)
    damage_in_place,
    damaged_shard,
    expected_batches,
)
from torchvision.transforms import RandomResizedCrop

from dali_fame.data import video_io
from dali_fame.data.cpu_loader import build_cpu_loader
from dali_fame.data.frame_decoder import FrameDecoder
from dali_fame.data.ledger import NoHealthyVideoError
from dali_fame.data.plan import (
    CropWindow,
    center_square_window,
    clip_crop_window,
    random_resized_crop_box,
)
from dali_fame.data.records import VideoRecord
from dali_fame.data.sampler import (
    eval_clip_indices,
    train_clip_indices,
)

H, W = 48, 64  # small, non-square: exercises the (y, x) vs (x, y) order of crop boxes


def _record(path: Path, label: int, **extra) -> VideoRecord:
    info = video_io.probe_video(path)
    return VideoRecord(
        path=str(path), label=label, video_id=path.stem, num_frames=info.num_frames,
        fps=info.fps, width=info.width, height=info.height, codec=info.codec, **extra,
    )


def _frames(seed: int, num_frames: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a textured background with a bright square moving across it, so
    that every frame, and left vs right, differ."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(H // 4, W // 4, 3)).repeat(4, 0).repeat(4, 1)
    frames = np.empty((num_frames, H, W, 3), np.uint8)
    for t in range(num_frames):
        frame = np.roll(base, t, axis=1).copy()
        x = (3 * t) % (W - 12)
        frame[10:22, x : x + 12] = (255, 255 - 5 * (t % 50), 40)
        frames[t] = frame
    return frames


def _write(path: Path, seed: int, num_frames: int, codec: str) -> Path:
    video_io.write_video(path, _frames(seed, num_frames), fps=25, codec=codec)
    return path


def _write_vfr(path: Path, num_frames: int) -> Path:
    """h264 in Matroska with irregular timestamps (a variable-frame-rate file)."""
    rng = np.random.default_rng(3)
    frames = _frames(9, num_frames)
    pts = np.cumsum(rng.integers(20, 90, size=num_frames))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"g": "8", "bf": "2"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame_rgb, t in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts = int(t)
            frame.time_base = stream.codec_context.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[VideoRecord]:
    """9 h264 videos of 40 frames, one 20-frame (short) video, one with a segment offset."""
    root = tmp_path_factory.mktemp("cpu_loader_videos")
    records = [
        _record(_write(root / f"v{i}.mp4", i, 40, "h264"), label=i % 3) for i in range(9)
    ]
    records.append(_record(_write(root / "short.mp4", 20, 20, "h264"), label=1))
    seg = _write(root / "seg.mp4", 21, 60, "h264")
    records.append(_record(seg, label=2, start_frame=17, end_frame=55))
    return records


def _reference_views(record: VideoRecord, *, index: int, epoch: int, seed: int) -> np.ndarray:
    """What the loader must return with crop=None: read_frames of the sampler's indices
    (offset by start_frame), mirrored per clip by the clip's own flip draw."""
    rel = train_clip_indices(record.segment_frames, video_index=index, epoch=epoch, seed=seed)
    clips = []
    for view, row in enumerate(rel):
        clip = video_io.read_frames(record.path, row + record.start_frame)
        window = clip_crop_window(record.height, record.width, seed=seed, epoch=epoch,
                                  video_index=index, view=view)
        clips.append(clip[:, :, ::-1] if window.flip else clip)
    return np.stack(clips)


def _write_short_gop(path: Path, num_frames: int, encoder: str, gop: int) -> Path:
    """A file with a keyframe every `gop` frames (B-frames for h264), so that seeking matters."""
    frames = _frames(4, num_frames)
    options = {"g": str(gop)}
    if encoder == "libx264":
        options["bf"] = "2"
    pix_fmt = "yuvj444p" if encoder == "mjpeg" else "yuv420p"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("encoder,suffix", [("libx264", ".mp4"), ("libvpx-vp9", ".webm"),
                                            ("mjpeg", ".avi")])
def test_decoder_matches_sequential_pyav(tmp_path, encoder, suffix):
    path = _write_short_gop(tmp_path / f"a{suffix}", 90, encoder, gop=6)
    rng = np.random.default_rng(0)
    cases = [[89, 0, 89, 5, 5], [30, 31, 32], [0], [3, 50, 51, 88], [60, 10]] + [
        rng.integers(0, 90, size=int(rng.integers(1, 33))) for _ in range(6)
    ]
    for seek_gap in (16, 0):  # 0 seeks before every new frame that has a keyframe ahead of it
        decoder = FrameDecoder(seek_gap=seek_gap)
        for indices in cases:
            np.testing.assert_array_equal(decoder.decode(str(path), indices),
                                          video_io.read_frames(path, indices))
    with pytest.raises(video_io.VideoDecodeError, match="frame 90"):
        decoder.decode(str(path), [3, 90])


def test_fast_rgb_is_ffmpegs_default_conversion(tmp_path):
    path = _write_short_gop(tmp_path / "f.mp4", 30, "libx264", gop=6)
    with av.open(str(path)) as container:
        plain = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    indices = [29, 2, 17, 17]
    fast = FrameDecoder(rgb="fast").decode(str(path), indices)
    np.testing.assert_array_equal(fast, plain[indices])
    exact = FrameDecoder().decode(str(path), indices)
    # Chroma repeated vs interpolated: they differ at colour edges (this texture is all edges).
    assert np.abs(fast.astype(int) - exact).mean() > 0
    with pytest.raises(ValueError, match="rgb"):
        FrameDecoder(rgb="slow")


def test_decoder_variable_frame_rate_counts_frames_like_read_frames(tmp_path):
    path = _write_vfr(tmp_path / "vfr.mkv", 36)
    assert video_io.probe_video(path).variable_frame_rate
    decoder = FrameDecoder()
    for indices in ([35, 1, 20, 20], list(range(9, 36, 3)), [17]):
        np.testing.assert_array_equal(decoder.decode(str(path), indices),
                                      video_io.read_frames(path, indices))


def test_crop_box_is_torchvision_random_resized_crop():
    rng = np.random.default_rng(1)
    areas, ratios = [], []
    for _ in range(2000):
        y, x, h, w = random_resized_crop_box(120, 160, rng)
        assert 0 <= y and y + h <= 120 and 0 <= x and x + w <= 160
        areas.append(h * w / (120 * 160))
        ratios.append(w / h)
    assert 0.18 <= min(areas) < 0.25 and max(areas) <= 1.0
    assert 0.70 <= min(ratios) and max(ratios) <= 1.40
    # Same distribution as torchvision's sampler (large boxes with extreme aspect do not fit
    # and are redrawn, so the mean area is ~0.5, not 0.6).
    torch.manual_seed(0)
    tv = [h * w / (120 * 160) for _, _, h, w in (
        RandomResizedCrop.get_params(torch.zeros(3, 120, 160), scale=(0.2, 1.0),
                                     ratio=(3 / 4, 4 / 3)) for _ in range(2000))]
    assert np.mean(areas) == pytest.approx(np.mean(tv), abs=0.02)
    assert np.std(areas) == pytest.approx(np.std(tv), abs=0.02)
    assert center_square_window(48, 64) == CropWindow(0, 8, 48, 48, False)
    flips = [clip_crop_window(48, 64, seed=0, epoch=0, video_index=i, view=0).flip
             for i in range(400)]
    assert 0.4 < np.mean(flips) < 0.6


def test_train_batches_equal_direct_pyav_decode(videos):
    seed = 4
    loader = build_cpu_loader(videos, batch_size=3, crop=None, workers=0, seed=seed,
                              drop_last=False)
    assert len(loader) == 4
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seen = []
        for batch in loader:
            views, labels, index = batch["views"], batch["labels"], batch["index"]
            assert views.dtype == torch.uint8 and views.shape[1:] == (2, 16, H, W, 3)
            assert labels.dtype == torch.int64 and index.dtype == torch.int64
            for b, i in enumerate(index.tolist()):
                assert labels[b].item() == videos[i].label
                ref = _reference_views(videos[i], index=i, epoch=epoch, seed=seed)
                np.testing.assert_array_equal(views[b].numpy(), ref)
            seen += index.tolist()
        assert sorted(seen) == list(range(len(videos)))
        assert loader.stats == {"visited": 11, "delivered": 11, "replaced": 0, "short": 1}


def test_crops_match_torchvision_resized_crop(videos):
    """With a crop: the same box resized by torchvision (within resampling rounding)."""
    seed, crop = 9, 32
    loader = build_cpu_loader(videos[:6], batch_size=6, crop=crop, workers=0, seed=seed)
    batch = next(iter(loader))
    assert batch["views"].shape == (6, 2, 16, crop, crop, 3)
    for b, i in enumerate(batch["index"].tolist()):
        record = videos[i]
        rel = train_clip_indices(record.num_frames, video_index=i, epoch=0, seed=seed)
        for view in range(2):
            win = clip_crop_window(H, W, seed=seed, epoch=0, video_index=i, view=view)
            frames = torch.from_numpy(video_io.read_frames(record.path, rel[view]))
            ref = TF.resized_crop(frames.permute(0, 3, 1, 2), win.y, win.x, win.h, win.w,
                                  [crop, crop], antialias=True)
            if win.flip:
                ref = ref.flip(-1)
            diff = (batch["views"][b, view].permute(0, 3, 1, 2).int() - ref.int()).abs()
            assert diff.float().mean() < 0.6 and diff.max() <= 2


def test_workers_and_epochs_do_not_change_samples(videos):
    kw = {"batch_size": 4, "crop": 24, "seed": 1, "drop_last": True}
    a = build_cpu_loader(videos, workers=0, **kw)
    b = build_cpu_loader(videos, workers=2, **kw)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        batches_a, batches_b = list(a), list(b)
        assert len(batches_a) == len(batches_b) == len(a) == 2
        for x, y in zip(batches_a, batches_b):
            assert torch.equal(x["index"], y["index"]) and torch.equal(x["views"], y["views"])
    a.set_epoch(0)
    again = list(a)
    a.set_epoch(1)
    assert not torch.equal(again[0]["views"], next(iter(a))["views"])  # a new epoch redraws


def test_two_ranks_cover_the_dataset_exactly_once(videos):
    for epoch in (0, 3):
        seen = []
        for rank in (0, 1):
            loader = build_cpu_loader(videos, batch_size=2, crop=16, workers=0, seed=2,
                                      rank=rank, world_size=2, drop_last=False)
            loader.set_epoch(epoch)
            seen.append([i for batch in loader for i in batch["index"].tolist()])
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(len(videos)))


def test_eval_mode_uniform_clips_centre_crop(videos):
    loader = build_cpu_loader(videos[:4], batch_size=2, crop=24, workers=0, seed=0,
                              mode="eval", eval_clips=3, drop_last=False)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3]]  # no shuffling
    views = batches[0]["views"]
    assert views.shape == (2, 3, 16, 24, 24, 3)
    rel = eval_clip_indices(videos[1].num_frames, num_clips=3)
    for clip in range(3):
        frames = torch.from_numpy(video_io.read_frames(videos[1].path, rel[clip]))
        ref = TF.center_crop(TF.resize(frames.permute(0, 3, 1, 2), 24, antialias=True), 24)
        diff = (views[1, clip].permute(0, 3, 1, 2).int() - ref.int()).abs().float()
        assert diff.mean() < 1.0  # resize-then-crop vs crop-then-resize: rounding only
    loader.set_epoch(5)
    assert torch.equal(next(iter(loader))["views"], views)  # eval ignores the epoch


def _warned(caplog, path) -> int:
    """How many warnings name ``path``."""
    return sum(str(path) in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_eval_bad_files_are_replaced_reported_once_and_counted(videos, tmp_path, caplog):
    """Eval mode (test passes): files broken in three ways (empty, not a video, truncated)
    keep their places, filled by other videos of the shard; nothing is dropped."""
    good = videos[:6]
    src = Path(good[0].path).read_bytes()
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n")
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(src[: len(src) // 2])
    # Records as an index made before the files broke: the loader must cope on its own.
    bad = [VideoRecord(**{**good[0].__dict__, "path": str(p), "video_id": p.stem})
           for p in (zero, text, trunc)]
    records = good[:2] + [bad[0]] + good[2:4] + [bad[1], bad[2]] + good[4:]
    bad_index = {2, 5, 6}
    loader = build_cpu_loader(records, batch_size=3, crop=16, workers=2, seed=0, mode="eval",
                              eval_clips=2, drop_last=False)
    with caplog.at_level(logging.WARNING, logger="dali_fame.data.ledger"):
        batches = [b["index"].tolist() for b in loader]
    assert len(batches) == len(loader) == 3
    for scheduled, got in zip([[0, 1, 2], [3, 4, 5], [6, 7, 8]], batches):
        assert len(got) == 3
        for s, g in zip(scheduled, got):
            assert g not in bad_index and (g == s or s in bad_index)
    assert {i for b in batches for i in b} == set(range(9)) - bad_index
    assert loader.stats == {"visited": 9, "delivered": 6, "replaced": 3, "short": 0}
    assert {f.path for f in loader.failures} == {str(p) for p in (zero, text, trunc)}
    for p in (zero, text, trunc):
        assert _warned(caplog, p) == 1


SEED, WORLD = 5, 2


@pytest.fixture(scope="module")
def damaged(videos, tmp_path_factory):
    """14 videos (label = index); three of rank 0's epoch-0 shard damaged after indexing:
    positions 0 and 4 (in its two batches of 3) and 6 (the drop_last leftover)."""
    return damaged_shard(videos, tmp_path_factory.mktemp("damaged"), _record, num_videos=14,
                         seed=SEED, world_size=WORLD)


def test_damaged_videos_are_replaced_from_the_shard_batches_stay_full(damaged, caplog):
    records, bad = damaged
    bad_paths = {records[i].path for i in bad}
    kw = {"batch_size": 3, "crop": 16, "seed": SEED, "rank": 0, "world_size": WORLD}
    out: dict[int, list[list[dict]]] = {}
    for workers in (0, 2):
        loader = build_cpu_loader(records, workers=workers, **kw)
        assert len(loader) == 2
        caplog.clear()
        out[workers] = []
        with caplog.at_level(logging.WARNING, logger="dali_fame.data.ledger"):
            for epoch in (0, 1):
                loader.set_epoch(epoch)
                batches = list(loader)
                out[workers].append(batches)
                assert len(batches) == len(loader)
                expected = expected_batches(
                len(records), bad, seed=SEED, world_size=WORLD, epoch=epoch, batch_size=3)
                assert [b["index"].tolist() for b in batches] == expected
                shard = set(loader.sampler.shard().tolist())
                scheduled = loader.sampler.indices()[:6].tolist()
                for b in batches:
                    assert b["views"].shape == (3, 2, 16, 16, 16, 3)
                    assert b["labels"].tolist() == b["index"].tolist()  # the substitute's own
                    assert set(b["index"].tolist()) <= shard - bad
                replaced = sum(v in bad for v in scheduled)
                assert loader.stats["visited"] == 6
                assert loader.stats["delivered"] == 6 - replaced
                assert loader.stats["replaced"] == replaced
        failed = {f.path for f in loader.failures}
        assert failed <= bad_paths
        # Epoch 0 schedules two of them; epoch 0's leftover is never delivered.
        assert len(failed) >= 2
        for path in bad_paths:
            assert _warned(caplog, path) == (path in failed)
    for epoch_a, epoch_b in zip(out[0], out[2]):
        for a, b in zip(epoch_a, epoch_b):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["views"], b["views"])


def test_start_batch_yields_the_rest_of_an_uninterrupted_epoch(damaged):
    records, _ = damaged
    loader = build_cpu_loader(records, batch_size=2, crop=16, workers=0, seed=SEED, rank=0,
                              world_size=WORLD)
    assert len(loader) == 3
    loader.set_epoch(0)
    whole = list(loader)
    for k in (1, 2, 3):
        loader.set_epoch(0, start_batch=k)
        rest = list(loader)
        assert len(rest) == len(loader) - k
        for a, b in zip(whole[k:], rest):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["views"], b["views"])
        assert loader.stats["visited"] == 2 * (len(loader) - k)
    loader.set_epoch(1)  # start_batch does not stick to later epochs
    assert len(list(loader)) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_without_a_healthy_video_raises_naming_files(videos, tmp_path, workers):
    records = []
    for i in range(4):
        dst = tmp_path / f"b{i}.mp4"
        shutil.copyfile(videos[i].path, dst)
        records.append(_record(dst, label=i))
        damage_in_place(dst)
    loader = build_cpu_loader(records, batch_size=1, crop=16, workers=workers, seed=0,
                              rank=1, world_size=2)
    with pytest.raises(NoHealthyVideoError, match=r"rank 1 of 2, epoch 0: .*2 of its 2") as err:
        list(loader)
    shard = loader.sampler.shard().tolist()
    for i in shard:
        assert records[i].path in str(err.value)
    assert {f.index for f in loader.failures} == set(shard)


def test_build_rejects_bad_settings(videos):
    with pytest.raises(ValueError, match="mode"):
        build_cpu_loader(videos, batch_size=2, crop=16, workers=0, seed=0, mode="test")
    with pytest.raises(ValueError, match="rank"):
        build_cpu_loader(videos, batch_size=2, crop=16, workers=0, seed=0, rank=2, world_size=2)


@pytest.mark.slow
def test_memory_stays_flat_over_epochs(videos):
    def rss_kib(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    loader = build_cpu_loader(videos * 8, batch_size=4, crop=32, workers=2, seed=0)
    rss = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
        workers = loader.loader._iterator._workers  # persistent: the same processes each epoch
        rss.append(rss_kib(os.getpid()) + sum(rss_kib(w.pid) for w in workers))
    assert rss[-1] - rss[1] < 64 * 1024, rss

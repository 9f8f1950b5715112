"""DALI pipeline (CPU backend: VP9 and MJPEG): same frames as PyAV and the CPU loader, sharding,
bad files reported and skipped, eval mode."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_fame.data import video_io
from dali_fame.data.cpu_loader import build_cpu_loader
from dali_fame.data.plan import clip_crop_window
from dali_fame.data.records import VideoRecord
from dali_fame.data.sampler import train_clip_indices

pytestmark = pytest.mark.dali

H, W = 48, 64


def _frames(seed: int, num_frames: int) -> np.ndarray:
    """uint8 (T, H, W, 3): textured background, a bright square moving across it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(H // 4, W // 4, 3)).repeat(4, 0).repeat(4, 1)
    frames = np.empty((num_frames, H, W, 3), np.uint8)
    for t in range(num_frames):
        frame = np.roll(base, t, axis=1).copy()
        x = (3 * t) % (W - 12)
        frame[10:22, x : x + 12] = (255, 255 - 5 * (t % 50), 40)
        frames[t] = frame
    return frames


def _record(path: Path, label: int, **extra) -> VideoRecord:
    info = video_io.probe_video(path)
    return VideoRecord(
        path=str(path), label=label, video_id=path.stem, num_frames=info.num_frames,
        fps=info.fps, width=info.width, height=info.height, codec=info.codec, **extra,
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[VideoRecord]:
    """8 videos of 40 frames alternating VP9 / MJPEG, one short VP9, one VP9 segment."""
    root = tmp_path_factory.mktemp("dali_videos")
    records = []
    for i in range(8):
        codec = ("vp9", "mjpeg")[i % 2]
        path = root / f"v{i}{video_io.CODEC_SUFFIX[codec]}"
        video_io.write_video(path, _frames(i, 40), fps=25, codec=codec)
        records.append(_record(path, label=i % 3))
    video_io.write_video(root / "short.webm", _frames(20, 20), fps=25, codec="vp9")
    records.append(_record(root / "short.webm", label=1))
    video_io.write_video(root / "seg.webm", _frames(21, 60), fps=25, codec="vp9")
    records.append(_record(root / "seg.webm", label=2, start_frame=17, end_frame=55))
    return records


def _dali(records, **kw):
    from dali_fame.data.dali_pipeline import build_dali_loader

    kw.setdefault("device", "cpu")
    kw.setdefault("num_threads", 2)
    return build_dali_loader(records, **kw)


def test_full_frames_equal_direct_pyav_decode_and_cpu_loader(videos):
    """crop=None: DALI's frames are bit-identical to read_frames of the sampled indices."""
    seed = 4
    dali = _dali(videos, batch_size=4, crop=None, seed=seed, drop_last=False)
    cpu = build_cpu_loader(videos, batch_size=4, crop=None, workers=0, seed=seed,
                           drop_last=False)
    assert len(dali) == len(cpu) == 3
    for epoch in (0, 1):
        dali.set_epoch(epoch)
        cpu.set_epoch(epoch)
        seen = []
        for a, b in zip(dali, cpu):
            views = a["views"]
            assert views.dtype == torch.uint8 and views.shape[1:] == (2, 16, H, W, 3)
            assert a["labels"].dtype == torch.int64 and a["index"].dtype == torch.int64
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["labels"], b["labels"])
            assert torch.equal(views, b["views"])
            for row, i in enumerate(a["index"].tolist()):
                rec = videos[i]
                assert a["labels"][row].item() == rec.label
                rel = train_clip_indices(rec.segment_frames, video_index=i, epoch=epoch,
                                         seed=seed)
                for view in range(2):
                    ref = video_io.read_frames(rec.path, rel[view] + rec.start_frame)
                    flip = clip_crop_window(H, W, seed=seed, epoch=epoch, video_index=i,
                                            view=view).flip
                    np.testing.assert_array_equal(views[row, view].numpy(),
                                                  ref[:, :, ::-1] if flip else ref)
            seen += a["index"].tolist()
        assert sorted(seen) == list(range(len(videos)))
        assert dali.stats == {"visited": 10, "delivered": 10, "skipped": 0, "short": 1}


def test_crops_match_cpu_loader_within_resampling_tolerance(videos):
    """Same boxes and flips as the CPU loader; only the resize arithmetic differs
    (DALI vs torch antialiased bilinear): mean |diff| < 0.5, 99.9% of values within 2."""
    kw = {"batch_size": 5, "crop": 40, "seed": 7, "drop_last": True}
    dali = _dali(videos, **kw)
    cpu = build_cpu_loader(videos, workers=0, **kw)
    for a, b in zip(dali, cpu):
        assert a["views"].shape == (5, 2, 16, 40, 40, 3)
        assert torch.equal(a["index"], b["index"])
        diff = (a["views"].int() - b["views"].int()).abs().float()
        assert diff.mean() < 0.5
        assert torch.quantile(diff.flatten()[::7], 0.999) <= 2 and diff.max() <= 16


def test_two_ranks_cover_the_dataset_exactly_once(videos):
    seen = []
    for rank in (0, 1):
        loader = _dali(videos, batch_size=2, crop=16, seed=3, rank=rank, world_size=2,
                       drop_last=False)
        loader.set_epoch(2)
        seen.append([i for batch in loader for i in batch["index"].tolist()])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(len(videos)))


def test_eval_mode_and_abandoned_epoch(videos):
    loader = _dali(videos[:6], batch_size=2, crop=24, seed=0, mode="eval", eval_clips=3,
                   drop_last=False)
    cpu = build_cpu_loader(videos[:6], batch_size=2, crop=24, workers=0, seed=0, mode="eval",
                           eval_clips=3, drop_last=False)
    first = next(iter(loader))  # leave the epoch unfinished: the next one must start cleanly
    assert first["views"].shape == (2, 3, 16, 24, 24, 3)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(batches[0]["views"], first["views"])
    for a, b in zip(batches, cpu):
        assert (a["views"].int() - b["views"].int()).abs().float().mean() < 1.0


def _salt(videos, tmp_path):
    good = videos[:6]
    src = Path(good[0].path).read_bytes()
    zero = tmp_path / "zero.webm"
    zero.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n")
    trunc = tmp_path / "trunc.webm"
    trunc.write_bytes(src[: len(src) // 3])
    bad = [VideoRecord(**{**good[0].__dict__, "path": str(p), "video_id": p.stem})
           for p in (zero, text, trunc)]
    return good[:2] + [bad[0]] + good[2:4] + [bad[1], bad[2]] + good[4:], (zero, text, trunc)


def test_bad_files_mid_epoch_are_reported_skipped_and_counted(videos, tmp_path, caplog):
    records, bad = _salt(videos, tmp_path)
    loader = _dali(records, batch_size=3, crop=16, seed=0, drop_last=False)
    with caplog.at_level(logging.WARNING, logger="dali_fame.data.dali_pipeline"):
        delivered = [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(delivered) == [0, 1, 3, 4, 7, 8]
    assert loader.stats == {"visited": 9, "delivered": 6, "skipped": 3, "short": 0}
    assert sorted(s.path for s in loader.skipped) == sorted(map(str, bad))
    for p in bad:
        assert any(str(p) in r.getMessage() for r in caplog.records)
    # The next epoch runs too.
    loader.set_epoch(1)
    assert sum(len(b["index"]) for b in loader) == 6


def test_decoder_error_inside_dali_drops_the_batch_and_goes_on(videos, tmp_path, monkeypatch,
                                                               caplog):
    """Without the pre-check, a text file reaches DALI's decoder, which fails the whole batch:
    the batch is dropped, the culprit named, its batch-mates counted, the epoch completes."""
    from dali_fame.data import dali_pipeline

    monkeypatch.setattr(dali_pipeline, "_check_encoded",
                        lambda path, n: (np.fromfile(path, dtype=np.uint8), None))
    records, (zero, text, trunc) = _salt(videos, tmp_path)
    records = [r for r in records if r.path not in (str(zero), str(trunc))]  # 6 good + text
    loader = _dali(records, batch_size=2, crop=16, seed=0, drop_last=False,
                   prefetch_queue_depth=2)
    with caplog.at_level(logging.WARNING, logger="dali_fame.data.dali_pipeline"):
        delivered = [i for batch in loader for i in batch["index"].tolist()]
    stats = loader.stats
    assert stats["visited"] == 7 and stats["skipped"] == 2 and stats["delivered"] == 5
    assert len(delivered) == 5 and 4 not in delivered  # index 4 is the text file
    culprit = [s for s in loader.skipped if s.path == str(text)]
    assert culprit and "PyAV" in culprit[0].reason
    assert any(str(text) in r.getMessage() for r in caplog.records)


@pytest.mark.cuda
def test_gpu_mixed_decoding_matches_cpu_pipeline(videos):
    """NVDEC + DALI's GPU colour conversion vs the CPU decoder: same clips, same boxes, batches
    on the GPU; pixels within a small tolerance (different YUV->RGB arithmetic)."""
    kw = {"batch_size": 4, "crop": 32, "seed": 5, "drop_last": True}
    gpu = _dali(videos, device="gpu", local_rank=0, **kw)
    cpu = _dali(videos, **kw)
    for a, b in zip(gpu, cpu):
        assert a["views"].is_cuda and a["labels"].is_cuda
        assert torch.equal(a["index"].cpu(), b["index"])
        diff = (a["views"].cpu().int() - b["views"].int()).abs().float()
        assert diff.mean() < 3.0

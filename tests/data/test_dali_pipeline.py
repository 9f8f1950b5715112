"""DALI pipeline (CPU backend: VP9 and MJPEG): same frames as PyAV and the CPU loader, one decode
pass per video, the feed off the training thread, sharding, eval mode, and failed videos
replaced exactly as the CPU loader replaces them (full batches, len(loader) of them)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import (  # tests/faults.py (tests/ is on sys.path via conftest)
    damage_in_place,
    damaged_shard,
    expected_batches,
)

from dali_fame.data import video_io
from dali_fame.data.cpu_loader import build_cpu_loader
from dali_fame.data.ledger import NoHealthyVideoError
from dali_fame.data.plan import clip_crop_window, plan_sample
from dali_fame.data.records import VideoRecord
from dali_fame.data.sampler import train_clip_indices
from dali_fame.data.shard import ShardBatchSampler

pytestmark = pytest.mark.dali

H, W = 48, 64
SEED, WORLD = 11, 2


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


def _warned(caplog, path, also: str = "") -> int:
    """How many warnings name ``path`` (and contain ``also``)."""
    return sum(str(path) in r.getMessage() and also in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


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


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["views"], y["views"])


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
        assert dali.stats == {"visited": 10, "delivered": 10, "replaced": 0, "short": 1}
        assert dali.failures == []


def test_feed_is_paths_and_one_pass_plans(videos):
    """ClipSource standalone: per video the path bytes, the sorted unique frames of all views,
    their gather order and the boxes; no file is opened (a path that does not exist feeds)."""
    from dali_fame.data.dali_pipeline import ClipSource

    records = videos + [VideoRecord(**{**videos[0].__dict__, "path": "/nonexistent/x.webm"})]
    plan_kwargs = {"seed": 3, "mode": "train", "num_views": 3, "clip_len": 16, "stride": 2,
                   "eval_clips": 10, "crop": 32, "flip": True}
    sampler = ShardBatchSampler(len(records), batch_size=4, seed=3, drop_last=False)
    source = ClipSource(records, sampler, plan_kwargs=plan_kwargs)
    source.start_epoch(2)
    seen = []
    for positions in sampler.batches():
        paths, frames, order, extra = source()
        assert len(paths) == len(frames) == len(order) == len(extra) == len(positions)
        for k, p in enumerate(positions.tolist()):
            i = int(sampler.shard()[p])
            plan = plan_sample(records[i], video_index=i, epoch=2, **plan_kwargs)
            assert paths[k].dtype == np.uint8 and paths[k].tobytes().decode() == records[i].path
            assert frames[k].dtype == np.int32 and np.all(np.diff(frames[k]) > 0)
            assert order[k].dtype == np.int32 and order[k].shape == (3, 16)
            np.testing.assert_array_equal(frames[k][order[k]], plan.frame_indices)
            boxes = [(w.y, w.x, w.h, w.w, float(w.flip)) for w in plan.windows]
            np.testing.assert_array_equal(extra[k], np.array(boxes, np.float32))
            seen.append(i)
    assert sorted(seen) == list(range(len(records)))
    with pytest.raises(StopIteration):
        source()


def test_second_view_starting_first_gets_exactly_its_frames(videos):
    """One decode pass per video: a later view that starts before the first (and overlaps it)
    still gets exactly its planned frames (each equals read_frames of its indices)."""
    seed, records = 0, videos[:8:2]  # the VP9 ones
    found = None
    for epoch in range(50):
        for i, rec in enumerate(records):
            rel = train_clip_indices(rec.segment_frames, video_index=i, epoch=epoch, seed=seed)
            if rel[1, 0] < rel[0, 0] and rel[1, -1] >= rel[0, 0]:
                found = epoch, i
                break
        if found:
            break
    assert found, "no overlapping backward view in 50 epochs"
    epoch, target = found
    loader = _dali(records, batch_size=2, crop=None, seed=seed, flip=False, drop_last=False)
    loader.set_epoch(epoch)
    checked = 0
    for batch in loader:
        for row, i in enumerate(batch["index"].tolist()):
            rel = train_clip_indices(records[i].segment_frames, video_index=i, epoch=epoch,
                                     seed=seed)
            for view in range(2):
                np.testing.assert_array_equal(batch["views"][row, view].numpy(),
                                              video_io.read_frames(records[i].path, rel[view]))
            checked += i == target
    assert checked == 1


def test_crops_equal_cpu_loader(videos):
    """The CPU backend crops, resizes and flips with the CPU loader's own torch code: same
    boxes, same flips, bit-identical clips (train and eval)."""
    for mode in ("train", "eval"):
        kw = {"batch_size": 5, "crop": 40, "seed": 7, "drop_last": True, "mode": mode,
              "eval_clips": 3}
        dali = _dali(videos, **kw)
        cpu = build_cpu_loader(videos, workers=0, **kw)
        batches = list(dali)
        assert len(batches) == len(cpu) == 2
        _same_batches(batches, list(cpu))
        assert batches[0]["views"].shape == (5, 2 if mode == "train" else 3, 16, 40, 40, 3)


def test_dali_crop_ops_match_cpu_loader_within_resampling_tolerance(videos):
    """The GPU graph's ops (sequence_rearrange, slice, resize, flip, stack) run on the CPU
    backend: same boxes and flips as the CPU loader; only the resize arithmetic differs
    (DALI vs torch antialiased bilinear): mean |diff| < 0.5, 99.9% of values within 2."""
    kw = {"batch_size": 5, "crop": 40, "seed": 7, "drop_last": True}
    dali = _dali(videos, torch_crops=False, **kw)
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


# ------------------------------------------------------------------------ failed videos


@pytest.fixture(scope="module")
def damaged(videos, tmp_path_factory):
    """14 VP9/MJPEG videos of 48 x 64 (label = index); three of rank 0's epoch-0 shard damaged
    after indexing (same size and mtime): positions 0 and 4 (in its two batches of 3) and 6
    (the drop_last leftover, scheduled in a later epoch)."""
    return damaged_shard(videos, tmp_path_factory.mktemp("damaged"), _record, num_videos=14,
                         seed=SEED, world_size=WORLD)


def test_damaged_videos_are_replaced_as_by_the_cpu_loader(damaged, caplog):
    """Videos damaged after indexing: every batch full, len(loader) of them, each bad place
    holding the substitute the ledger's rule gives, pixels equal to the CPU loader's batches
    (which replace the same way); each bad file warned about once, never fed again."""
    records, bad = damaged
    bad_paths = {records[i].path for i in bad}
    kw = {"batch_size": 3, "crop": None, "seed": SEED, "rank": 0, "world_size": WORLD}
    dali = _dali(records, prefetch_queue_depth=2, **kw)
    cpu = build_cpu_loader(records, workers=0, **kw)
    assert len(dali) == len(cpu) == 2
    first_pipe = dali.pipe
    with caplog.at_level(logging.WARNING, logger="dali_fame.data.ledger"):
        for epoch in (0, 1, 2):
            dali.set_epoch(epoch)
            cpu.set_epoch(epoch)
            batches = list(dali)
            assert len(batches) == len(dali)
            assert [b["index"].tolist() for b in batches] == expected_batches(
                len(records), bad, seed=SEED, world_size=WORLD, epoch=epoch, batch_size=3)
            _same_batches(batches, list(cpu))
            for b in batches:
                assert b["views"].shape == (3, 2, 16, H, W, 3)
                assert b["labels"].tolist() == b["index"].tolist()  # the substitute's own
            scheduled = dali.sampler.indices().tolist()
            replaced = sum(v in bad for v in scheduled)
            assert dali.stats == {"visited": 6, "delivered": 6 - replaced,
                                  "replaced": replaced, "short": 0}
            if epoch == 0:
                assert replaced == 2 and dali.pipe is not first_pipe  # rebuilt after the error
    failed = [f.path for f in dali.failures]
    assert len(failed) == len(set(failed)) and set(failed) <= bad_paths  # once each
    assert len(failed) >= 2
    for f in dali.failures:
        assert f.reason.startswith("DALI decoders.video: ")
    for path in bad_paths:  # (the CPU loader's own ledger warns too, without "DALI")
        assert _warned(caplog, path, also="DALI") == (path in failed)


def test_unreadable_truncated_and_empty_files_are_replaced(videos, tmp_path):
    """An empty file (fn.io.file.read fails), a text file (the decoder fails) and a file cut to
    a third (its frames past the end raise: pad_mode="none", never black padding)."""
    good = videos[:6]
    src = Path(good[0].path).read_bytes()
    zero, text, trunc = tmp_path / "zero.webm", tmp_path / "text.webm", tmp_path / "trunc.webm"
    zero.write_bytes(b"")
    text.write_text("this is not a video\n")
    trunc.write_bytes(src[: len(src) // 3])
    bad = [VideoRecord(**{**good[0].__dict__, "path": str(p), "video_id": p.stem})
           for p in (zero, text, trunc)]
    records = good[:2] + [bad[0]] + good[2:4] + [bad[1], bad[2]] + good[4:]
    loader = _dali(records, batch_size=3, crop=16, seed=0, mode="eval", eval_clips=2,
                   drop_last=False)
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [3, 3, 3]
    delivered = [i for b in batches for i in b["index"].tolist()]
    assert set(delivered) <= {0, 1, 3, 4, 7, 8} and {0, 1, 3, 4, 7, 8} <= set(delivered)
    assert loader.stats == {"visited": 9, "delivered": 6, "replaced": 3, "short": 0}
    reasons = {f.path: f.reason for f in loader.failures}
    assert set(reasons) == {str(zero), str(text), str(trunc)}
    assert reasons[str(zero)].startswith("DALI io.file.read: File mapping failed")
    assert reasons[str(text)].startswith("DALI decoders.video: ")
    assert "out-of-bounds frame index" in reasons[str(trunc)]
    loader.set_epoch(1)  # known failures are replaced before feeding: no new failure
    assert sum(len(b["index"]) for b in loader) == 9
    assert len(loader.failures) == 3 and loader.stats["replaced"] == 3


def test_a_failed_batch_without_a_bad_video_is_decoded_again_whole(videos, caplog):
    """DALI raising for a batch whose videos all decode alone: no file is blamed, the batch
    comes from the probe, the pipeline is rebuilt and the batches it held are fed again, so
    the epoch equals an uninterrupted one."""
    records = videos[:8]
    loader = _dali(records, batch_size=2, crop=None, seed=1, prefetch_queue_depth=3)
    reference = list(loader)
    assert len(reference) == 4
    pipe, run, calls = loader.pipe, loader.pipe.run, []

    def failing_run():
        calls.append(1)
        out = run()
        if len(calls) == 2:
            raise RuntimeError("Critical error in pipeline:\nencountered:\n\ninjected\n")
        return out

    pipe.run = failing_run
    with caplog.at_level(logging.WARNING, logger="dali_fame.data.dali_pipeline"):
        again = list(loader)
    assert loader.pipe is not pipe and len(calls) == 2
    _same_batches(again, reference)
    assert loader.failures == []
    assert loader.stats == {"visited": 8, "delivered": 8, "replaced": 0, "short": 0}
    assert any("DALI: injected" in r.getMessage() for r in caplog.records)


def test_start_batch_yields_the_rest_of_an_uninterrupted_epoch(damaged):
    records, _ = damaged
    loader = _dali(records, batch_size=2, crop=16, seed=SEED, rank=0, world_size=WORLD)
    assert len(loader) == 3
    loader.set_epoch(0)
    whole = list(loader)
    for k in (1, 2, 3):
        loader.set_epoch(0, start_batch=k)
        rest = list(loader)
        assert len(rest) == len(loader) - k
        _same_batches(whole[k:], rest)
        assert loader.stats["visited"] == 2 * (len(loader) - k)
    loader.set_epoch(1)  # start_batch does not stick to later epochs
    assert len(list(loader)) == 3
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, start_batch=4)


def test_shard_without_a_healthy_video_raises_naming_files(videos, tmp_path):
    records = []
    for i in range(4):
        src = Path(videos[i].path)
        dst = tmp_path / f"b{i}{src.suffix}"
        shutil.copyfile(src, dst)
        records.append(_record(dst, label=i))
        damage_in_place(dst)
    loader = _dali(records, batch_size=1, crop=16, seed=0, rank=1, world_size=2)
    with pytest.raises(NoHealthyVideoError, match=r"rank 1 of 2, epoch 0: .*2 of its 2") as err:
        list(loader)
    shard = loader.sampler.shard().tolist()
    for i in shard:
        assert records[i].path in str(err.value)
    assert {f.index for f in loader.failures} == set(shard)
    with pytest.raises(NoHealthyVideoError):  # the next epoch stops the same way, at once
        loader.set_epoch(1)
        list(loader)


def test_data_workers_set_dali_threads(videos):
    from dali_fame.config import DataConfig
    from dali_fame.engine.data import build_loader

    data = DataConfig(loader="dali", workers=3, crop=16)
    loader, choice = build_loader(videos, data, batch_size=2, mode="train", seed=0, rank=0,
                                  world_size=1, local_rank=0)
    assert choice.name == "dali" and loader.pipe.num_threads == 3
    assert next(iter(loader))["views"].shape == (2, 2, 16, 16, 16, 3)
    with pytest.raises(ValueError, match="num_threads"):
        _dali(videos, batch_size=2, crop=16, seed=0, num_threads=0)


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


@pytest.mark.cuda
def test_gpu_damaged_videos_are_replaced_as_on_the_cpu(damaged):
    """The mixed decoder's failures go through the same probe and rebuild: same batches (by
    index) as the CPU pipeline."""
    records, bad = damaged
    kw = {"batch_size": 3, "crop": 16, "seed": SEED, "rank": 0, "world_size": WORLD}
    gpu = _dali(records, device="gpu", local_rank=0, **kw)
    for epoch in (0, 1):
        gpu.set_epoch(epoch)
        batches = list(gpu)
        assert [b["index"].cpu().tolist() for b in batches] == expected_batches(
                len(records), bad, seed=SEED, world_size=WORLD, epoch=epoch, batch_size=3)
        assert all(b["views"].is_cuda for b in batches)

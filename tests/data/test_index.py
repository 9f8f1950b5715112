"""Validated index: a salted dataset folder, the probe cache, segments and the CLI hook."""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dali_fame.data import index as index_mod
from dali_fame.data.index import (
    NOT_A_VIDEO,
    SHORT,
    TOO_SHORT,
    TRUNCATED,
    UNUSUAL_CODEC,
    VARIABLE_FRAME_RATE,
    ZERO_BYTE,
    build_index,
    probe_file,
)
from dali_fame.data.video_io import write_video

SIZE, FRAMES, FPS = 32, 20, 25.0
CLIP = {"clip_len": 8, "stride": 2}  # span 15: 20-frame videos are full, 10-frame ones short


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def write_vfr(path: Path, n: int = FRAMES) -> None:
    """h264 file whose frame intervals alternate 40 ms / 100 ms (irregular pts)."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = tb
        t = 0
        for i, rgb in enumerate(frames(n, 5)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = t, tb
            t += 40 if i % 2 == 0 else 100
            c.mux(s.encode(f))
        c.mux(s.encode(None))


def write_ffv1(path: Path, n: int = FRAMES) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        for rgb in frames(n, 6):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode(None))


def halve(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def salted(tmp_path_factory) -> Path:
    """Folder dataset: 3 good videos (h264/vp9/mjpeg) + unusual codec + short + VFR kept;
    zero-byte, 3 truncated (mp4 without its moov, webm cut, avi cut), text-as-mp4, 1-frame out."""
    root = tmp_path_factory.mktemp("salted")
    ok, bad = root / "ok", root / "bad"
    ok.mkdir()
    bad.mkdir()
    write_video(ok / "good_h264.mp4", frames(FRAMES, 1), fps=FPS, codec="h264")
    write_video(ok / "good_vp9.webm", frames(FRAMES, 2), fps=FPS, codec="vp9")
    write_video(ok / "good_mjpeg.avi", frames(FRAMES, 3), fps=FPS, codec="mjpeg")
    write_ffv1(ok / "odd_codec.mkv")
    write_video(ok / "short.mp4", frames(10, 4), fps=FPS, codec="h264")
    write_vfr(ok / "vfr.mp4")
    (bad / "zero.mp4").touch()
    halve(ok / "good_h264.mp4", bad / "trunc.mp4")
    halve(ok / "good_vp9.webm", bad / "trunc.webm")
    halve(ok / "good_mjpeg.avi", bad / "trunc.avi")
    (bad / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    write_video(bad / "one_frame.mp4", frames(1, 7), fps=FPS, codec="h264")
    (bad / "readme.txt").write_text("not listed")
    return root


EXPECTED_EXCLUDED = {
    "zero.mp4": ZERO_BYTE,
    "trunc.mp4": TRUNCATED,
    "trunc.webm": TRUNCATED,
    "trunc.avi": TRUNCATED,
    "text.mp4": NOT_A_VIDEO,
    "one_frame.mp4": TOO_SHORT,
}
EXPECTED_KEPT = {
    "good_h264.mp4",
    "good_vp9.webm",
    "good_mjpeg.avi",
    "odd_codec.mkv",
    "short.mp4",
    "vfr.mp4",
}


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".dali_fame_index"))
    return dst


def test_salted_folder_reports_each_file(salted, tmp_path):
    root = copy_tree(salted, tmp_path / "data")
    res = build_index(root, format="folder", workers=2, progress=False, **CLIP)
    excluded = {os.path.basename(e.path): e.reason for e in res.excluded}
    assert excluded == EXPECTED_EXCLUDED
    kept = {os.path.basename(r.path): r for r in res.records}
    assert set(kept) == EXPECTED_KEPT
    c = res.counts()
    assert c["listed"] == 12 == c["valid"] + c["excluded"]
    assert sum(c[r] for r in index_mod.EXCLUSION_REASONS) == c["excluded"]
    flagged = {f: {os.path.basename(p) for p, _ in v} for f, v in res.flagged.items()}
    assert flagged == {
        SHORT: {"short.mp4"},
        VARIABLE_FRAME_RATE: {"vfr.mp4"},
        UNUSUAL_CODEC: {"odd_codec.mkv"},
    }
    assert [os.path.basename(p) for p, _ in res.ignored] == ["readme.txt"]
    # records carry what the probe measured
    good = kept["good_vp9.webm"]
    assert (good.num_frames, good.width, good.height, good.codec) == (FRAMES, SIZE, SIZE, "vp9")
    assert good.fps == pytest.approx(FPS) and good.label == res.class_names.index("ok")
    assert kept["good_mjpeg.avi"].codec == "mjpeg" and kept["short.mp4"].num_frames == 10
    assert kept["odd_codec.mkv"].codec == "ffv1"
    assert all(
        os.path.isabs(r.path) and r.start_frame == 0 and r.end_frame is None for r in res.records
    )
    # the printed summary names every excluded file with its reason, and the counts
    text = res.summary()
    for name, reason in EXPECTED_EXCLUDED.items():
        line = next(
            ln for ln in text.splitlines() if ln.strip().startswith(str(root / "bad" / name))
        )
        assert f": {reason} (" in line
    assert "vfr.mp4" in text and "short.mp4" in text and "odd_codec.mkv" in text
    # the truncated mp4 is recognised from its box structure, the cut webm by frame count
    detail = {os.path.basename(e.path): e.detail for e in res.excluded}
    assert "moov" in detail["trunc.mp4"] or "box needs" in detail["trunc.mp4"]
    assert "claims 20" in detail["trunc.webm"] or "failed after" in detail["trunc.webm"]


def test_cache_reprobes_only_changed_files(salted, tmp_path, monkeypatch):
    root = copy_tree(salted, tmp_path / "data")
    first = build_index(root, format="folder", workers=1, progress=False, **CLIP)
    assert first.cache_path == str(root / ".dali_fame_index" / "probe_cache.json")
    assert len(first.probed) == 11  # every non-empty file
    calls: list[str] = []
    real = index_mod._probe_job

    def counting(job):
        calls.append(job[0])
        return real(job)

    monkeypatch.setattr(index_mod, "_probe_job", counting)
    second = build_index(root, format="folder", workers=1, progress=False, **CLIP)
    assert second.probed == [] and calls == [] and second.num_cached == 11
    assert second.records == first.records and second.excluded == first.excluded
    # rewrite one file: only it is probed again, and its new content is seen
    changed = root / "ok" / "good_h264.mp4"
    write_video(changed, frames(24, 9), fps=FPS, codec="h264")
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    third = build_index(root, format="folder", workers=1, progress=False, **CLIP)
    assert third.probed == [str(changed)] and calls == [str(changed)]
    assert next(r for r in third.records if r.path == str(changed)).num_frames == 24
    cache = json.loads(Path(third.cache_path).read_text())
    assert cache["files"]["ok/good_h264.mp4"]["mtime_ns"] == 1_000_000_000
    # another split of the same root shares the cache; a full decode answers a demux request
    assert build_index(root, format="folder", split="test", workers=1, progress=False).probed == []
    assert build_index(root, format="folder", mode="demux", workers=1, progress=False).probed == []


def test_cache_dir_and_read_only_fallback(salted, tmp_path, monkeypatch):
    root = copy_tree(salted, tmp_path / "data")
    shutil.rmtree(root / "bad")
    explicit = build_index(
        root, format="folder", cache_dir=tmp_path / "c", workers=1, progress=False
    )
    assert Path(explicit.cache_path).parent == tmp_path / "c"
    assert not (root / ".dali_fame_index").exists()
    # a root where the cache folder cannot be created (as on a read-only mount)
    (root / ".dali_fame_index").write_text("blocked")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fallback = build_index(root, format="folder", workers=1, progress=False)
    assert fallback.cache_path.startswith(str(tmp_path / "xdg" / "dali_fame" / "index"))
    assert build_index(root, format="folder", workers=1, progress=False).probed == []


def test_segments_missing_and_csv(tmp_path):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    write_video(rgb / "a.mp4", frames(FRAMES, 1), fps=FPS, codec="h264")
    write_video(rgb / "b.mp4", frames(FRAMES, 2), fps=FPS, codec="h264")
    (tmp_path / "Diving48_V2_train.json").write_text(
        json.dumps(
            [
                {"vid_name": "a", "label": 3, "start_frame": 2, "end_frame": 100},
                {"vid_name": "b", "label": 1, "start_frame": 19, "end_frame": 30},
                {"vid_name": "gone", "label": 0, "start_frame": 0, "end_frame": 10},
            ]
        )
    )
    res = build_index(tmp_path, format="diving48", workers=1, progress=False, **CLIP)
    (rec,) = res.records
    assert (rec.video_id, rec.label, rec.start_frame, rec.end_frame) == ("a", 3, 2, FRAMES)
    assert rec.segment_frames == FRAMES - 2
    reasons = {e.video_id: e.reason for e in res.excluded}
    assert reasons == {"b": TOO_SHORT, "gone": index_mod.MISSING}
    assert res.counts()["listed"] == 3


def test_probe_modes(salted):
    decode = probe_file(str(salted / "ok" / "good_vp9.webm"))
    demux = probe_file(str(salted / "ok" / "good_vp9.webm"), mode="demux")
    assert decode.reason is None and demux.reason is None
    assert decode.num_frames == demux.num_frames == FRAMES
    assert probe_file(str(salted / "bad" / "trunc.webm"), mode="demux").reason == TRUNCATED
    with pytest.raises(ValueError, match="mode="):
        probe_file(str(salted / "ok" / "good_vp9.webm"), mode="fast")


def test_cli_prints_summary_and_writes_report(salted, tmp_path, capsys):
    from dali_fame.cli import main

    root = copy_tree(salted, tmp_path / "data")
    report = tmp_path / "report.json"
    code = main(
        [
            "index",
            str(root),
            "--format",
            "folder",
            "--workers",
            "1",
            "--no-progress",
            "--clip-len",
            "8",
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "excluded files:" in out
    for name, reason in EXPECTED_EXCLUDED.items():
        assert f"{name}: {reason}" in out
    data = json.loads(report.read_text())
    c = data["counts"]
    assert c["listed"] == c["valid"] + c["excluded"] == 12
    assert len(data["records"]) == c["valid"] and len(data["excluded"]) == c["excluded"]
    # nothing valid -> exit code 1
    shutil.rmtree(root / "ok")
    assert main(["index", str(root), "--format", "folder", "--workers", "1", "--no-progress"]) == 1
    assert main(["index", str(tmp_path / "missing"), "--format", "folder"]) == 2

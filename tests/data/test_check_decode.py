"""dali-fame check-decode: the frame stamp round-trips (also through lossy codecs), the CPU loader
and DALI cpu pass, and a decoder that returns the wrong frames is caught and named."""

from __future__ import annotations

import numpy as np
import pytest

from dali_fame.cli import main as cli_main
from dali_fame.data import check_decode as cd
from dali_fame.data.cpu_loader import build_cpu_loader
from dali_fame.data.frame_decoder import FrameDecoder


@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """Every codec's stamped videos (verified by make_videos) and the clip plan."""
    root = tmp_path_factory.mktemp("stamped")
    return cd.prepare(root, seed=0, epochs=3)


def _spec(key: str) -> cd.DecoderSpec:
    return next(d for d in cd.DECODERS if d.key == key)


@pytest.mark.parametrize("number", [0, 1, 2, 5, 255, 256, 12345, 2**16 - 1])
def test_stamp_round_trips_plain_and_mirrored(number):
    frame = cd.stamp_frame(number)
    assert frame.shape == (cd.FRAME_HEIGHT, cd.FRAME_WIDTH, 3) and frame.dtype == np.uint8
    numbers, mirrored = cd.read_stamps(np.stack([frame, frame[:, ::-1]]))
    assert numbers.tolist() == [number, number]
    assert mirrored.tolist() == [False, True]


def test_stamp_survives_noise_and_rejects_non_stamps():
    rng = np.random.default_rng(0)
    frame = cd.stamp_frame(1234).astype(np.int16)
    noisy = np.clip(frame + rng.normal(0, 25, frame.shape), 0, 255).astype(np.uint8)
    grey = np.full_like(noisy, 128)
    # the top half of one stamp over the bottom half of another: bits and complements disagree
    torn = cd.stamp_frame(0).copy()
    torn[cd.FRAME_HEIGHT // 2:] = cd.stamp_frame(2**16 - 1)[cd.FRAME_HEIGHT // 2:]
    numbers, _ = cd.read_stamps(np.stack([noisy, grey, torn]))
    assert numbers.tolist() == [1234, -1, -1]
    with pytest.raises(ValueError):
        cd.stamp_frame(2**16)


def test_videos_are_what_the_check_claims(stamped):
    """make_videos read every stamp back in order; h264 really has B-frames and sparse
    keyframes (random access seeks); the short video is shorter than a clip's span; some
    sample's second view starts before its first."""
    videos, plan = stamped
    assert set(videos) == set(cd.CODECS)
    h264 = videos["h264"]
    assert all(v.b_frames > 0 for v in h264)
    assert all(v.keyframes <= -(-v.record.num_frames // 16) for v in h264 + videos["vp9"])
    assert [v.record.num_frames for v in h264] == list(cd.VIDEO_FRAMES.values())
    assert min(cd.VIDEO_FRAMES.values()) < 31
    assert plan.backward


def test_cpu_loader_passes(stamped):
    videos, plan = stamped
    results = cd.check_all(videos, plan, decoders=[_spec("cpu")])
    assert [(r.codec, r.status) for r in results] == [(c, "pass") for c in cd.CODECS], results
    assert all(r.frames > 500 and r.wrong == 0 for r in results)


@pytest.mark.dali
def test_dali_cpu_passes_on_vp9_and_mjpeg(stamped):
    videos, plan = stamped
    results = {r.codec: r for r in cd.check_all(videos, plan, decoders=[_spec("dali-cpu")])}
    assert results["h264"].status == "n/a"
    for codec in ("vp9", "mjpeg"):
        assert results[codec].status == "pass", cd.format_result(results[codec])
        assert results[codec].frames > 500


@pytest.mark.cuda
@pytest.mark.dali
def test_dali_mixed_passes_on_every_codec(stamped):
    videos, plan = stamped
    results = cd.check_all(videos, plan, decoders=[_spec("dali-mixed")])
    assert [r.status for r in results] == ["pass"] * len(cd.CODECS), [
        cd.format_result(r) for r in results]


class _NextFrame:
    """A broken decoder: returns frame i + 1 for frame i (the file's last frame stays)."""

    def __init__(self) -> None:
        self.inner = FrameDecoder()

    def decode(self, path, indices):
        from dali_fame.data.video_io import probe_video

        last = probe_video(path).num_frames - 1
        return self.inner.decode(path, np.minimum(np.asarray(indices) + 1, last))


class _Unflipped:
    """A broken decoder path: right frames, but the view's flip undone."""

    def __init__(self) -> None:
        self.inner = FrameDecoder()

    def decode(self, path, indices):
        return np.ascontiguousarray(self.inner.decode(path, indices)[:, :, ::-1])


def _broken(decoder_cls) -> cd.DecoderSpec:
    def build(records, **kwargs):
        return build_cpu_loader(records, crop=None, workers=0, drop_last=False,
                                decoder_factory=decoder_cls, **kwargs)

    return cd.DecoderSpec("broken", f"broken ({decoder_cls.__name__})", build)


def test_wrong_frames_are_caught_and_reported(stamped):
    videos, plan = stamped
    videos = {"mjpeg": videos["mjpeg"]}
    (result,) = cd.check_all(videos, plan, decoders=[_broken(_NextFrame)])
    assert result.failed and result.wrong > 0
    line = cd.format_result(result)
    assert "FAIL" in line and "wanted frame" in line
    wanted, got = (int(s.split()[1]) for s in result.first_wrong.split("wanted ")[1].split(", got "))
    assert got == wanted + 1

    (result,) = cd.check_all(videos, plan, decoders=[_broken(_Unflipped)])
    assert result.failed
    assert "mirrored" in result.first_wrong


def test_a_crashing_decoder_fails_with_the_error(stamped):
    videos, plan = stamped

    def build(records, **kwargs):
        raise RuntimeError("no decoder today")

    (result,) = cd.check_all({"vp9": videos["vp9"]}, plan,
                             decoders=[cd.DecoderSpec("x", "crashing", build)])
    assert result.failed and "RuntimeError: no decoder today" in result.first_wrong


def test_unavailable_decoders_are_listed_with_the_reason(stamped):
    videos, plan = stamped
    spec = cd.DecoderSpec("x", "absent", lambda records, **kw: None,
                          unavailable=lambda: "no such hardware")
    (result,) = cd.check_all(videos, plan, decoders=[spec])
    assert result.status == "unavailable" and not result.failed
    assert "no such hardware" in cd.format_result(result)


def test_command_line(capsys):
    assert cli_main(["check-decode", "--decoders", "cpu", "--codecs", "mjpeg", "--epochs",
                     "1"]) == 0
    out = capsys.readouterr().out
    assert "CPU loader (PyAV)    mjpeg  pass" in out and out.rstrip().splitlines()[-1].startswith("OK")
    assert cli_main(["check-decode", "--decoders", "cpu", "--codecs", "mjpeg", "--epochs", "1",
                     "--require-gpu"]) == 1

"""dali_fame.data.video_io: encode / decode / probe round trips, errors, and DALI's CPU decoder.

Tolerance (absolute error on 0..255 between the frames written and the frames decoded) is
video_io.CODEC_TOLERANCE: mean <= 4.0 and 99th percentile <= 48 for h264 and vp9 (4:2:0 chroma),
mean <= 3.5 and 99th percentile <= 16 for mjpeg (4:4:4).
"""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dali_fame.data import synthetic, video_io

T, SIZE = 12, 64


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """uint8 (T, 64, 64, 3): a synthetic video with distractor and camera shake."""
    return synthetic.render_video(
        class_index=2,
        scene=1,
        video_index=0,
        num_frames=T,
        size=SIZE,
        seed=3,
        distractor=True,
        camera_shake=True,
    ).frames


@pytest.fixture(scope="module")
def encoded(clip, tmp_path_factory) -> dict[str, str]:
    """codec -> path of ``clip`` encoded with it."""
    folder = tmp_path_factory.mktemp("encoded")
    paths = {}
    for codec in video_io.CODECS:
        path = folder / f"clip{video_io.CODEC_SUFFIX[codec]}"
        video_io.write_video(path, clip, fps=25, codec=codec)
        paths[codec] = str(path)
    return paths


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    err = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(err.mean()), float(np.percentile(err, 99))


@pytest.mark.parametrize("codec", video_io.CODECS)
def test_round_trip_within_codec_tolerance(codec, clip, encoded):
    decoded = video_io.read_frames(encoded[codec])
    assert decoded.dtype == np.uint8 and decoded.shape == clip.shape
    mean, p99 = _errors(decoded, clip)
    max_mean, max_p99 = video_io.CODEC_TOLERANCE[codec]
    assert mean <= max_mean and p99 <= max_p99, (codec, mean, p99)
    # Decoding must track the content: a time-shifted comparison is clearly worse.
    assert _errors(decoded[1:], clip[:-1])[0] > 2 * mean


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("codec", video_io.CODECS)
def test_probe_counts_frames_and_reports_constant_rate(codec, decode, encoded):
    info = video_io.probe_video(encoded[codec], decode=decode)
    assert info.num_frames == T
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height) == (SIZE, SIZE)
    assert info.codec == {"h264": "h264", "vp9": "vp9", "mjpeg": "mjpeg"}[codec]
    assert info.duration_s == pytest.approx(T / 25.0, abs=0.002)
    assert info.variable_frame_rate is False


def test_read_frames_picks_unsorted_repeated_indices(encoded):
    path = encoded["h264"]
    every = video_io.read_frames(path)
    wanted = [7, 0, 7, 11, 3, 3]
    picked = video_io.read_frames(path, wanted)
    np.testing.assert_array_equal(picked, every[wanted])
    assert video_io.read_frames(path, []).shape == (0, SIZE, SIZE, 3)


def test_read_frames_rejects_bad_indices(encoded):
    with pytest.raises(video_io.VideoDecodeError, match="only 12 frames"):
        video_io.read_frames(encoded["vp9"], [0, 12])
    with pytest.raises(ValueError, match=">= 0"):
        video_io.read_frames(encoded["vp9"], [-1])


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_fractional_rate_is_not_vfr(codec, clip, tmp_path):
    # WebM stores milliseconds: 30000/1001 fps gives steps of 33 and 34 ms, still constant rate.
    path = tmp_path / f"ntsc{video_io.CODEC_SUFFIX[codec]}"
    video_io.write_video(path, clip, fps=29.97, codec=codec)
    info = video_io.probe_video(path)
    assert info.num_frames == T
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-3)
    assert info.variable_frame_rate is False


def test_probe_detects_variable_frame_rate(clip, tmp_path):
    path = tmp_path / "vfr.mkv"
    stamps = [0, 1, 2, 5, 6, 7, 12, 13, 14, 15, 20, 21]  # in 1/25 s ticks, uneven gaps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuvj444p"
        stream.codec_context.time_base = Fraction(1, 25)
        for frame_rgb, pts in zip(clip, stamps):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24").reformat(
                format="yuvj444p"
            )
            frame.pts = pts
            frame.time_base = Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for decode in (False, True):
        info = video_io.probe_video(path, decode=decode)
        assert info.num_frames == T
        assert info.variable_frame_rate is True
        assert info.duration_s == pytest.approx(22 / 25, abs=0.01)
        assert info.fps == pytest.approx(T / info.duration_s, rel=1e-6)
    assert len(video_io.read_frames(path)) == T


@pytest.mark.parametrize(
    ("kwargs", "frames", "message"),
    [
        ({"codec": "h265", "name": "a.mp4"}, None, "unknown codec 'h265'"),
        ({"codec": "h264", "name": "a.mp4"}, (4, 63, 64, 3), "even"),
        ({"codec": "vp9", "name": "a.webm"}, (4, 64, 33, 3), "even"),
        ({"codec": "h264", "name": "a.avi"}, None, r"\.mp4"),
        ({"codec": "mjpeg", "name": "a.avi", "fps": 0.0}, None, "fps"),
        ({"codec": "mjpeg", "name": "a.avi"}, (4, 64, 64), "uint8"),
    ],
)
def test_write_video_rejects_bad_input_without_writing(tmp_path, kwargs, frames, message):
    kwargs = dict(kwargs)
    path = tmp_path / kwargs.pop("name")
    fps = kwargs.pop("fps", 25.0)
    data = np.zeros(frames or (4, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=message):
        video_io.write_video(path, data, fps=fps, **kwargs)
    assert not path.exists()


def test_mjpeg_accepts_odd_sizes(tmp_path):
    frames = synthetic.render_video(
        class_index=0, scene=0, video_index=0, num_frames=3, size=(33, 47), seed=0
    ).frames
    path = tmp_path / "odd.avi"
    video_io.write_video(path, frames, fps=10, codec="mjpeg")
    decoded = video_io.read_frames(path)
    assert decoded.shape == (3, 33, 47, 3)
    assert _errors(decoded, frames)[0] <= video_io.CODEC_TOLERANCE["mjpeg"][0]


def test_decode_errors_are_value_errors_with_path_and_reason(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    for call in (video_io.read_frames, video_io.probe_video):
        with pytest.raises(video_io.VideoDecodeError) as info:
            call(garbage)
        assert isinstance(info.value, ValueError)
        assert info.value.path == str(garbage) and info.value.reason
        assert str(garbage) in str(info.value)
    with pytest.raises(video_io.VideoDecodeError, match="no such file"):
        video_io.read_frames(tmp_path / "missing.mp4")
    error = pickle.loads(pickle.dumps(video_io.VideoDecodeError("x.mp4", "broken")))
    assert (error.path, error.reason) == ("x.mp4", "broken")


def test_truncated_file_raises_or_returns_fewer_frames(encoded, tmp_path):
    data = Path(encoded["mjpeg"]).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    # Half an AVI decodes only its first frames: asking for the last one must fail loudly.
    with pytest.raises(video_io.VideoDecodeError):
        video_io.read_frames(cut, [T - 1])


# --------------------------------------------------------------------------------------- DALI
# DALI's CPU video decoder reads VP9 and MJPEG (h264 needs the GPU "mixed" backend). Two ops work
# on CPU in DALI 2.4: fn.decoders.video(encoded_bytes, device="cpu", frames=[...] or
# start_frame/sequence_length/stride) fed by fn.external_source, and
# fn.experimental.readers.video(device="cpu", filenames=[...], sequence_length=N, stride=S).


def _dali_decode_bytes(paths: list[str], frames: list[list[int]]) -> list[np.ndarray]:
    """Decode each file's bytes with fn.decoders.video on CPU, picking per-sample frames."""
    from nvidia.dali import fn, pipeline_def, types

    encoded = [np.fromfile(p, dtype=np.uint8) for p in paths]
    indices = [np.asarray(f, np.int32) for f in frames]

    @pipeline_def(batch_size=len(paths), num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        data = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8)
        wanted = fn.external_source(source=lambda: indices, batch=True, dtype=types.INT32)
        return fn.decoders.video(data, device="cpu", frames=wanted)

    pipeline = pipe()
    pipeline.build()
    (out,) = pipeline.run()
    return [np.array(out[i]) for i in range(len(paths))]


@pytest.mark.dali
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_decoder_matches_pyav_exactly(codec, clip, encoded, tmp_path):
    # Two different videos in one batch, per-sample unsorted and repeated frame indices.
    other = synthetic.render_video(
        class_index=5, scene=3, video_index=1, num_frames=T, size=SIZE, seed=3
    ).frames
    other_path = tmp_path / f"other{video_io.CODEC_SUFFIX[codec]}"
    video_io.write_video(other_path, other, fps=25, codec=codec)
    wanted = [[9, 0, 4, 4, 11], [1, 10, 2, 2, 5]]
    paths = [encoded[codec], str(other_path)]
    outputs = _dali_decode_bytes(paths, wanted)
    max_mean, max_p99 = video_io.CODEC_TOLERANCE[codec]
    for path, source, idx, out in zip(paths, [clip, other], wanted, outputs):
        assert out.shape == (len(idx), SIZE, SIZE, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, video_io.read_frames(path, idx))
        mean, p99 = _errors(out, source[idx])
        assert mean <= max_mean and p99 <= max_p99


@pytest.mark.dali
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_file_reader_matches_pyav_exactly(codec, encoded):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return fn.experimental.readers.video(
            device="cpu", filenames=[encoded[codec]], sequence_length=5, stride=2, name="reader"
        )

    pipeline = pipe()
    pipeline.build()
    (out,) = pipeline.run()
    np.testing.assert_array_equal(
        np.array(out[0]), video_io.read_frames(encoded[codec], [0, 2, 4, 6, 8])
    )

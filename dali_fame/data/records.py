"""Plain records shared by the data path: what the readers list and what the index validates.

``DatasetEntry`` is one line of a dataset's annotation (a video file that *should* exist);
``DatasetSpec`` is a whole split as the readers return it. ``VideoRecord`` is a video that the
index probed and found usable: the loaders only ever see these.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoRecord:
    """One validated video (or a segment of one) that the loaders decode.

    Attributes:
        path: absolute path of the video file.
        label: class index in ``0 .. num_classes - 1``.
        video_id: the dataset's name for the video (file stem, Kinetics youtube id + times, ...).
        num_frames: frames in the file, counted by the index (decoded, not the container's claim).
        fps: average frame rate of the file.
        width, height: frame size in pixels.
        codec: FFmpeg decoder name ("h264", "vp9", "mjpeg", "mpeg4", ...).
        start_frame: first frame of the segment (Diving48); 0 for whole videos.
        end_frame: one past the segment's last frame, or ``None`` for "to the end of the file".
            The index clamps it to ``num_frames``.

    The sampler works on the segment: pass ``segment_frames`` as its ``num_frames`` and add
    ``start_frame`` to the indices it returns before decoding. For whole videos (every format but
    Diving48 segments) ``segment_frames == num_frames`` and ``start_frame == 0``.
    """

    path: str
    label: int
    video_id: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    start_frame: int = 0
    end_frame: int | None = None

    @property
    def segment_frames(self) -> int:
        """Frames available to the sampler: ``min(end_frame, num_frames) - start_frame`` (>= 0)."""
        end = self.num_frames if self.end_frame is None else min(self.end_frame, self.num_frames)
        return max(end - self.start_frame, 0)


@dataclass(frozen=True)
class DatasetEntry:
    """One video listed by a dataset's annotation files (not yet checked to exist or decode).

    Attributes:
        path: absolute path where the video is expected.
        label: class index in ``0 .. len(class_names) - 1``.
        video_id: the dataset's name for the video.
        split: "train", "val" or "test" (the split it was read for).
        start_frame, end_frame: segment bounds, end exclusive; ``end_frame=None`` is the whole file.
    """

    path: str
    label: int
    video_id: str
    split: str
    start_frame: int = 0
    end_frame: int | None = None


@dataclass
class DatasetSpec:
    """One split of a dataset as the readers return it.

    Attributes:
        entries: the listed videos, in annotation order (the order fixes each video's index, which
            seeds the sampler, so it must not depend on the file system's listing order).
        class_names: ``class_names[label]`` is the class's name; the same list for every split.
        format: reader name ("ucf101", "hmdb51", ...).
        root: the dataset root that was read.
        split: the split that was read.
        ignored: ``(path, reason)`` for files that a folder walk saw but did not list (e.g. a
            ``.txt`` inside a class folder), so that nothing is dropped silently.
    """

    entries: list[DatasetEntry]
    class_names: list[str]
    format: str
    root: str
    split: str
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

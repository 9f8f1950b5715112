"""Dataset readers: official annotation formats -> one common ``DatasetSpec``.

Formats (the names used on the command line):

- ``ucf101``: ``classInd.txt`` ("1 ApplyEyeMakeup"), ``trainlist0N.txt`` ("Class/v_x.avi 1",
  1-based label) and ``testlist0N.txt`` ("Class/v_x.avi", label from the folder via classInd).
  Annotation files in ``annotation_dir`` or ``ROOT``, ``ROOT/ucfTrainTestlist``; videos under
  ``ROOT`` (or ``ROOT/videos``, ``ROOT/UCF-101``: whichever holds the listed files).
  ``split="val"`` reads the test list (UCF101 has no validation split).
- ``hmdb51``: ``<class>_test_splitN.txt`` ("video.avi 1": 1 = train, 2 = test, 0 = unused);
  videos at ``ROOT/<class>/<video>``; class indices follow the sorted class names.
- ``kinetics400``: the official CSV (``label,youtube_id,time_start,time_end,split``) named
  ``train.csv`` / ``validate.csv`` (or ``val.csv``) / ``test.csv``; files named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere below the split folder (``<split>/<label>/``
  or flat). Without a CSV: class-folder trees ``ROOT/<split>/<class>/<video>``.
- ``diving48``: ``Diving48_V2_train.json`` / ``Diving48_V2_test.json`` (vid_name, label,
  start_frame, end_frame), optional ``Diving48_vocab.json`` for class names; videos
  ``ROOT/rgb/<vid_name>.mp4`` (or ``ROOT/videos``, ``ROOT``).
- ``ssv2``: ``labels.json`` (template -> id), ``train.json`` / ``validation.json`` entries with
  ``id`` and ``template`` (the ``[]`` around placeholders stripped, as the official code does);
  videos ``ROOT/<id>.webm`` (or ``ROOT/20bn-something-something-v2``, ``ROOT/videos``).
  ``split="test"`` reads validation.json (the official test.json has no labels).
- ``folder``: ``ROOT/<class>/<video>``, or ``ROOT/<split>/<class>/<video>`` when split folders
  exist; without split folders every split is the whole tree.
- ``csv``: ``path,label[,split]`` with an optional header; labels are all integers or all class
  names (sorted to indices). ``ROOT`` is the CSV file or a folder holding ``annotations.csv`` (or
  exactly one ``*.csv``); relative paths resolve against the CSV's folder or ``ROOT/videos``.

Malformed annotations raise ``ValueError("FILE:LINE: what is wrong")`` (JSON formats name the
entry index instead of a line). Listed videos are not checked for existence here: the index
reports missing ones by name.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator

from dali_fame.data.records import DatasetEntry, DatasetSpec

FORMATS: tuple[str, ...] = ("ucf101", "hmdb51", "kinetics400", "diving48", "ssv2", "folder", "csv")

#: extensions that the folder walks treat as videos (lower case, with the dot)
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4",
        ".avi",
        ".webm",
        ".mkv",
        ".mov",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
        ".ts",
    }
)

_SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
#: folder names that hold a split, per canonical split name
_SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "validate", "validation", "valid"),
    "test": ("test", "testing"),
}


def read_dataset(
    root: str | os.PathLike,
    *,
    format: str,
    split: str = "train",
    split_id: int = 1,
    annotation_dir: str | os.PathLike | None = None,
) -> DatasetSpec:
    """Read one split of a dataset's official annotations into a ``DatasetSpec``.

    Args:
        root: dataset root folder (for ``csv``: the CSV file or the folder holding it).
        format: one of ``FORMATS``.
        split: "train", "val" or "test" ("validation", "validate", "training", "testing" accepted).
        split_id: which official split (UCF101: 1-3, HMDB51: 1-3); ignored by other formats.
        annotation_dir: where the annotation files are, when not in the usual places under root.

    Returns:
        DatasetSpec with absolute paths, 0-based labels and class names shared by all splits.

    Raises:
        ValueError: unknown format/split, annotation files not found, or a malformed line
            (message ``"FILE:LINE: ..."``).
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: expected one of {', '.join(FORMATS)}")
    split_name = canonical_split(split)
    if isinstance(split_id, bool) or not isinstance(split_id, int) or split_id < 1:
        raise ValueError(f"split_id={split_id!r}: expected an integer >= 1")
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.exists(root_s):
        raise ValueError(f"dataset root {root_s} does not exist")
    ann = None if annotation_dir is None else os.path.abspath(os.fspath(annotation_dir))
    if ann is not None and not os.path.isdir(ann):
        raise ValueError(f"annotation_dir {ann} is not a folder")
    reader = {
        "ucf101": _read_ucf101,
        "hmdb51": _read_hmdb51,
        "kinetics400": _read_kinetics400,
        "diving48": _read_diving48,
        "ssv2": _read_ssv2,
        "folder": _read_folder,
        "csv": _read_csv,
    }[format]
    spec = reader(root_s, split_name, split_id, ann)
    spec.format = format
    return spec


def canonical_split(split: str) -> str:
    """Map a split name onto "train", "val" or "test" (ValueError for anything else)."""
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"split={split!r}: expected train, val or test")
    return _SPLIT_ALIASES[key]


# ----------------------------------------------------------------------------- helpers


def _malformed(path: str, line: int | str, message: str) -> ValueError:
    return ValueError(f"{path}:{line}: {message}")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines; BOM and CRLF tolerated."""
    with open(path, encoding="utf-8-sig", errors="strict") as f:
        for number, text in enumerate(f, start=1):
            text = text.strip()
            if text:
                yield number, text


def _search_dirs(root: str, annotation_dir: str | None, subdirs: Iterable[str]) -> list[str]:
    if annotation_dir is not None:
        return [annotation_dir]
    return [root] + [os.path.join(root, s) for s in subdirs]


def _find_file(names: Iterable[str], dirs: list[str], what: str) -> str:
    names = list(names)
    for d in dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                return p
    raise ValueError(
        f"{what} not found: looked for {', '.join(names)} in {', '.join(dirs)} "
        "(pass annotation_dir=... / --annotation-dir)"
    )


def _choose_base(candidates: list[str], rel_paths: list[str]) -> str:
    """The candidate folder under which most of (a spread sample of) the listed files exist.

    Real datasets ship in a few layouts (UCF-101/ inside the root or not, ...): rather than
    guess from names, look where the files are. With no hits anywhere the first candidate wins
    and the index reports every file as missing.
    """
    if not rel_paths:
        return candidates[0]
    step = max(1, len(rel_paths) // 64)
    sample = rel_paths[::step][:64]
    best, best_hits = candidates[0], 0
    seen: set[str] = set()
    for c in candidates:
        if c in seen or not os.path.isdir(c):
            continue
        seen.add(c)
        hits = sum(os.path.exists(os.path.join(c, r)) for r in sample)
        if hits > best_hits:
            best, best_hits = c, hits
    return best


def _join(base: str, rel: str) -> str:
    """Join an annotation path (always '/'-separated) onto base; absolute paths stay as they are."""
    rel = rel.replace("\\", "/")
    if os.path.isabs(rel):
        return os.path.normpath(rel)
    return os.path.normpath(os.path.join(base, *rel.split("/")))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.replace("\\", "/")))[0]


def _split_dir(root: str, split: str) -> str | None:
    for name in _SPLIT_DIRS[split]:
        p = os.path.join(root, name)
        if os.path.isdir(p):
            return p
    return None


def _has_split_dirs(root: str) -> bool:
    return any(_split_dir(root, s) is not None for s in _SPLIT_DIRS)


def _visible_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _walk_videos(top: str, ignored: list[tuple[str, str]]) -> list[str]:
    """Video files below ``top`` in sorted order (hidden files and folders skipped); other
    files are appended to ``ignored`` with a reason."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = os.path.join(dirpath, name)
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(p)
            else:
                ignored.append((p, "not a video file extension"))
    return found


def _load_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise _malformed(path, e.lineno, f"invalid JSON: {e.msg}") from None


# ----------------------------------------------------------------------------- UCF101


def _read_ucf101(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    dirs = _search_dirs(root, ann, ("ucfTrainTestlist", "annotations", "splits"))
    class_file = _find_file(["classInd.txt"], dirs, "UCF101 classInd.txt")
    ann_dir = os.path.dirname(class_file)
    by_index: dict[int, str] = {}
    for number, text in _lines(class_file):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise _malformed(class_file, number, f"expected '<index> <ClassName>', got {text!r}")
        idx = int(parts[0])
        if idx in by_index:
            raise _malformed(class_file, number, f"class index {idx} listed twice")
        by_index[idx] = parts[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise ValueError(f"{class_file}: class indices must be 1..N without gaps")
    class_names = [by_index[i] for i in range(1, len(by_index) + 1)]
    exact = {n: i for i, n in enumerate(class_names)}
    folded = {n.lower(): i for i, n in enumerate(class_names)}

    list_name = f"{'trainlist' if split == 'train' else 'testlist'}{split_id:02d}.txt"
    list_file = _find_file([list_name], [ann_dir] + dirs, f"UCF101 {list_name}")
    rows: list[tuple[str, int]] = []
    for number, text in _lines(list_file):
        parts = text.split()
        if len(parts) not in (1, 2):
            raise _malformed(list_file, number, f"expected 'Class/video.avi [label]', got {text!r}")
        rel = parts[0].replace("\\", "/")
        folder = rel.split("/")[0] if "/" in rel else None
        from_folder = None
        if folder is not None:
            from_folder = exact.get(folder, folded.get(folder.lower()))
        if len(parts) == 2:
            if not parts[1].lstrip("-").isdigit():
                raise _malformed(list_file, number, f"label {parts[1]!r} is not an integer")
            label = int(parts[1]) - 1
            if not 0 <= label < len(class_names):
                raise _malformed(
                    list_file, number, f"label {parts[1]} outside 1..{len(class_names)} of classInd"
                )
            if from_folder is not None and from_folder != label:
                raise _malformed(
                    list_file,
                    number,
                    f"label {parts[1]} ({class_names[label]}) disagrees with folder {folder!r}",
                )
        else:
            if from_folder is None:
                raise _malformed(
                    list_file, number, f"no label and folder {folder!r} is not a class of classInd"
                )
            label = from_folder
        rows.append((rel, label))
    base = _choose_base(
        [root, os.path.join(root, "videos"), os.path.join(root, "UCF-101")], [r for r, _ in rows]
    )
    entries = [DatasetEntry(_join(base, r), lab, _stem(r), split) for r, lab in rows]
    return DatasetSpec(entries, class_names, "ucf101", root, split)


# ----------------------------------------------------------------------------- HMDB51

_HMDB_SPLIT_RE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")


def _read_hmdb51(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    dirs = _search_dirs(root, ann, ("testTrainMulti_7030_splits", "splits", "annotations"))
    files: dict[str, str] = {}
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            m = _HMDB_SPLIT_RE.match(name)
            if m and int(m["n"]) == split_id:
                files.setdefault(m["cls"], os.path.join(d, name))
        if files:
            break
    if not files:
        raise ValueError(
            f"HMDB51 split files *_test_split{split_id}.txt not found in {', '.join(dirs)} "
            "(pass annotation_dir=... / --annotation-dir)"
        )
    class_names = sorted(files)
    wanted = 1 if split == "train" else 2
    rows: list[tuple[str, int]] = []
    for label, cls in enumerate(class_names):
        path = files[cls]
        for number, text in _lines(path):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _malformed(path, number, f"expected '<video> <0|1|2>', got {text!r}")
            if int(parts[1]) == wanted:
                rows.append((f"{cls}/{parts[0]}", label))
    base = _choose_base(
        [
            root,
            os.path.join(root, "videos"),
            os.path.join(root, "hmdb51_org"),
            os.path.join(root, "hmdb51"),
        ],
        [r for r, _ in rows],
    )
    entries = [DatasetEntry(_join(base, r), lab, _stem(r), split) for r, lab in rows]
    return DatasetSpec(entries, class_names, "hmdb51", root, split)


# ----------------------------------------------------------------------------- Kinetics-400

_KINETICS_CSV: dict[str, tuple[str, ...]] = {
    "train": ("train.csv", "kinetics_400_train.csv", "kinetics400_train.csv"),
    "val": (
        "validate.csv",
        "val.csv",
        "validation.csv",
        "kinetics_400_val.csv",
        "kinetics400_val.csv",
    ),
    "test": ("test.csv", "kinetics_400_test.csv", "kinetics400_test.csv"),
}


def _read_kinetics400(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    dirs = _search_dirs(root, ann, ("annotations", "kinetics400", "kinetics-400"))
    try:
        csv_file = _find_file(_KINETICS_CSV[split], dirs, f"Kinetics-400 {split} CSV")
    except ValueError:
        if ann is not None:
            raise
        return _read_class_folders(root, split, "kinetics400")
    rows = _read_kinetics_csv(csv_file)
    # The class list must not depend on the split read: take it from train.csv when present.
    class_source = rows
    if split != "train":
        try:
            train_csv = _find_file(_KINETICS_CSV["train"], [os.path.dirname(csv_file)] + dirs, "")
            class_source = _read_kinetics_csv(train_csv)
        except ValueError:
            pass
    class_names = sorted({r[1] for r in class_source})
    index = {n: i for i, n in enumerate(class_names)}
    top = _split_dir(root, split) or root
    by_stem: dict[str, str] = {}
    for p in _walk_videos(top, []):
        by_stem.setdefault(_stem(p), p)
    entries = []
    for number, label, stem in rows:
        if label not in index:
            raise _malformed(csv_file, number, f"label {label!r} is not a class of the train CSV")
        path = by_stem.get(stem) or os.path.join(top, label, stem + ".mp4")
        entries.append(DatasetEntry(path, index[label], stem, split))
    return DatasetSpec(entries, class_names, "kinetics400", root, split)


def _read_kinetics_csv(path: str) -> list[tuple[int, str, str]]:
    """(line number, label, file stem) per row of an official Kinetics CSV."""
    out = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty CSV")
        cols = {h.strip().lower(): i for i, h in enumerate(header)}
        missing = [c for c in ("label", "youtube_id", "time_start", "time_end") if c not in cols]
        if missing:
            raise _malformed(path, 1, f"header lacks column(s) {', '.join(missing)}")
        for row in reader:
            number = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise _malformed(path, number, f"expected {len(header)} fields, got {len(row)}")
            label = row[cols["label"]].strip()
            ytid = row[cols["youtube_id"]].strip()
            try:
                start = int(float(row[cols["time_start"]]))
                end = int(float(row[cols["time_end"]]))
            except ValueError:
                raise _malformed(path, number, "time_start/time_end are not numbers") from None
            if not label or not ytid:
                raise _malformed(path, number, "empty label or youtube_id")
            out.append((number, label, f"{ytid}_{start:06d}_{end:06d}"))
    return out


# ----------------------------------------------------------------------------- class folders


def _read_class_folders(root: str, split: str, fmt: str) -> DatasetSpec:
    if _has_split_dirs(root):
        top = _split_dir(root, split)
        if top is None:
            raise ValueError(f"{root}: has split folders but none for split {split!r}")
        # Class indices from the train folder so that every split agrees on them.
        class_top = _split_dir(root, "train") or top
    else:
        top = class_top = root
    class_names = _visible_dirs(class_top)
    if not class_names:
        raise ValueError(f"{class_top}: no class folders found")
    index = {n: i for i, n in enumerate(class_names)}
    ignored: list[tuple[str, str]] = []
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            ignored.append((entry.path, "not inside a class folder"))
    entries = []
    for cls in _visible_dirs(top):
        if cls not in index:
            raise ValueError(f"{os.path.join(top, cls)}: class folder not present in {class_top}")
        for p in _walk_videos(os.path.join(top, cls), ignored):
            entries.append(DatasetEntry(p, index[cls], _stem(p), split))
    return DatasetSpec(entries, class_names, fmt, root, split, ignored)


def _read_folder(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    if not os.path.isdir(root):
        raise ValueError(f"{root}: the folder format needs a folder of class folders")
    return _read_class_folders(root, split, "folder")


# ----------------------------------------------------------------------------- Diving48


def _read_diving48(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    dirs = _search_dirs(root, ann, ("annotations", "labels", "Diving48"))
    name = "train" if split == "train" else "test"
    json_file = _find_file(
        [f"Diving48_V2_{name}.json", f"Diving48_{name}.json"], dirs, f"Diving48 {name} JSON"
    )
    data = _load_json(json_file)
    if not isinstance(data, list):
        raise ValueError(f"{json_file}: expected a JSON list of videos")  # noqa: TRY004
    rows: list[tuple[str, int, int, int | None]] = []
    for i, item in enumerate(data):
        where = f"entry {i}"
        if not isinstance(item, dict) or "vid_name" not in item or "label" not in item:
            raise _malformed(json_file, where, "expected an object with vid_name and label")
        label, start, end = item["label"], item.get("start_frame", 0), item.get("end_frame")
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise _malformed(json_file, where, f"label {label!r} is not an integer >= 0")
        if not isinstance(start, int) or start < 0:
            raise _malformed(json_file, where, f"start_frame {start!r} is not an integer >= 0")
        if end is not None and (not isinstance(end, int) or end <= start):
            raise _malformed(json_file, where, f"end_frame {end!r} is not an integer > start_frame")
        rows.append((str(item["vid_name"]), label, start, end))
    vocab_path = os.path.join(os.path.dirname(json_file), "Diving48_vocab.json")
    if os.path.isfile(vocab_path):
        vocab = _load_json(vocab_path)
        if not isinstance(vocab, list):
            raise ValueError(f"{vocab_path}: expected a JSON list of class descriptions")
        class_names = ["_".join(map(str, v)) if isinstance(v, list) else str(v) for v in vocab]
    else:
        class_names = [str(i) for i in range(max([48] + [r[1] + 1 for r in rows]))]
    for i, (_, label, _, _) in enumerate(rows):
        if label >= len(class_names):
            raise _malformed(
                json_file, f"entry {i}", f"label {label} >= {len(class_names)} classes"
            )
    base = _choose_base(
        [os.path.join(root, "rgb"), os.path.join(root, "videos"), root],
        [f"{r[0]}.mp4" for r in rows],
    )
    entries = [
        DatasetEntry(_join(base, f"{vid}.mp4"), lab, vid, split, start, end)
        for vid, lab, start, end in rows
    ]
    return DatasetSpec(entries, class_names, "diving48", root, split)


# ----------------------------------------------------------------------------- SSv2


def _read_ssv2(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    dirs = _search_dirs(root, ann, ("annotations", "labels", "something-something-v2-annotations"))
    labels_file = _find_file(
        ["labels.json", "something-something-v2-labels.json"], dirs, "SSv2 labels.json"
    )
    labels = _load_json(labels_file)
    if not isinstance(labels, dict):
        raise ValueError(f"{labels_file}: expected a JSON object template -> id")  # noqa: TRY004
    by_id: dict[int, str] = {}
    for template, cid in labels.items():
        try:
            by_id[int(cid)] = template
        except (TypeError, ValueError):
            raise _malformed(
                labels_file, f"key {template!r}", f"class id {cid!r} is not an integer"
            )
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"{labels_file}: class ids must be 0..N-1 without gaps")
    class_names = [by_id[i] for i in range(len(by_id))]
    index = {t: i for i, t in enumerate(class_names)}
    name = "train" if split == "train" else "validation"
    ann_dir = os.path.dirname(labels_file)
    json_file = _find_file(
        [f"{name}.json", f"something-something-v2-{name}.json"],
        [ann_dir] + dirs,
        f"SSv2 {name}.json",
    )
    data = _load_json(json_file)
    if not isinstance(data, list):
        raise ValueError(f"{json_file}: expected a JSON list of videos")  # noqa: TRY004
    rows: list[tuple[str, int]] = []
    for i, item in enumerate(data):
        where = f"entry {i}"
        if not isinstance(item, dict) or "id" not in item or "template" not in item:
            raise _malformed(json_file, where, "expected an object with id and template")
        template = str(item["template"]).replace("[", "").replace("]", "")
        if template not in index:
            raise _malformed(json_file, where, f"template {template!r} not in {labels_file}")
        rows.append((str(item["id"]), index[template]))
    base = _choose_base(
        [root, os.path.join(root, "20bn-something-something-v2"), os.path.join(root, "videos")],
        [f"{vid}.webm" for vid, _ in rows],
    )
    entries = [DatasetEntry(_join(base, f"{vid}.webm"), lab, vid, split) for vid, lab in rows]
    return DatasetSpec(entries, class_names, "ssv2", root, split)


# ----------------------------------------------------------------------------- CSV


def _read_csv(root: str, split: str, split_id: int, ann: str | None) -> DatasetSpec:
    if os.path.isfile(root):
        csv_file, data_root = root, os.path.dirname(root)
    else:
        data_root = root
        search = ann or root
        candidates = sorted(n for n in os.listdir(search) if n.lower().endswith(".csv"))
        if "annotations.csv" in candidates:
            csv_file = os.path.join(search, "annotations.csv")
        elif len(candidates) == 1:
            csv_file = os.path.join(search, candidates[0])
        else:
            raise ValueError(
                f"{search}: expected annotations.csv or exactly one *.csv, found "
                f"{candidates or 'none'}"
            )
    rows: list[tuple[int, str, str, str | None, str | None]] = []
    with open(csv_file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        cols = {"path": 0, "label": 1, "split": 2}
        has_split, id_col, first = None, None, True
        for row in reader:
            number = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if first:
                first = False
                lowered = [c.strip().lower() for c in row]
                if "path" in lowered and "label" in lowered:
                    cols = {name: i for i, name in enumerate(lowered)}
                    has_split = "split" in cols
                    id_col = cols.get("video_id")
                    continue
            if has_split is None:
                has_split = len(row) >= 3
            need = max(cols["path"], cols["label"], cols["split"] if has_split else 0) + 1
            if len(row) < need:
                raise _malformed(
                    csv_file, number, f"expected at least {need} fields, got {len(row)}"
                )
            path, label = row[cols["path"]].strip(), row[cols["label"]].strip()
            if not path or not label:
                raise _malformed(csv_file, number, "empty path or label")
            row_split = None
            if has_split:
                value = row[cols["split"]].strip().lower()
                if value not in _SPLIT_ALIASES:
                    raise _malformed(csv_file, number, f"split {value!r} is not train/val/test")
                row_split = _SPLIT_ALIASES[value]
            vid = row[id_col].strip() if id_col is not None and id_col < len(row) else None
            rows.append((number, path, label, row_split, vid))
    if all(_is_int(r[2]) for r in rows):
        values = [int(r[2]) for r in rows]
        for (number, *_), v in zip(rows, values):
            if v < 0:
                raise _malformed(csv_file, number, f"label {v} is negative")
        class_names = [str(i) for i in range(max(values, default=-1) + 1)]
        labels = values
    else:
        # Indices from the sorted names of all rows (every split), so that splits agree.
        class_names = sorted({r[2] for r in rows})
        index = {n: i for i, n in enumerate(class_names)}
        labels = [index[r[2]] for r in rows]
    kept = [(r, lab) for r, lab in zip(rows, labels) if r[3] is None or r[3] == split]
    base = _choose_base(
        [os.path.dirname(csv_file), data_root, os.path.join(data_root, "videos")],
        [r[1] for r, _ in kept],
    )
    entries = [
        DatasetEntry(_join(base, path), lab, vid or _stem(path), split)
        for (_, path, _, _, vid), lab in kept
    ]
    return DatasetSpec(entries, class_names, "csv", data_root, split)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True

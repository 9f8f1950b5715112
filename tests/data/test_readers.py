"""Dataset readers on tiny fake trees in every official format (empty placeholder videos)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dali_fame.data.readers import FORMATS, canonical_split, read_dataset


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- UCF101


def make_ucf(root: Path) -> None:
    ann = root / "ucfTrainTestlist"
    write(ann / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    write(
        ann / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n\n"
        "YoYo/v_YoYo_g08_c01.avi 3\n",
    )
    write(
        ann / "testlist01.txt",
        "YoYo/v_YoYo_g01_c01.avi\nhandstandpushups/v_HandStandPushups_g01_c01.avi\n",
    )
    for line in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "YoYo/v_YoYo_g08_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    ):
        touch(root / "UCF-101" / line)


def test_ucf101_train_and_test(tmp_path):
    make_ucf(tmp_path)
    spec = read_dataset(tmp_path, format="ucf101", split="train")
    assert spec.class_names == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [e.label for e in spec.entries] == [0, 1, 2]
    assert spec.entries[1].video_id == "v_HandStandPushups_g08_c01"
    for e in spec.entries:  # the videos live in UCF-101/: found by looking, not by name
        assert os.path.isabs(e.path) and os.path.isfile(e.path) and e.split == "train"
        assert e.start_frame == 0 and e.end_frame is None
    test = read_dataset(tmp_path, format="ucf101", split="test")
    # testlist has no labels: from the folder via classInd (case-insensitive fallback)
    assert [e.label for e in test.entries] == [2, 1]
    assert [e.split for e in test.entries] == ["test", "test"]
    val = read_dataset(tmp_path, format="ucf101", split="validation")
    assert [e.path for e in val.entries] == [e.path for e in test.entries]
    assert val.split == "val"


def test_ucf101_malformed_lines(tmp_path):
    make_ucf(tmp_path)
    ann = tmp_path / "ucfTrainTestlist"
    write(ann / "trainlist02.txt", "YoYo/a.avi 3\nYoYo/b.avi three\n")
    with pytest.raises(ValueError, match=r"trainlist02\.txt:2: label 'three'"):
        read_dataset(tmp_path, format="ucf101", split_id=2)
    write(ann / "trainlist02.txt", "YoYo/a.avi 3\n\nYoYo/b.avi 1\n")
    with pytest.raises(ValueError, match=r"trainlist02\.txt:3: .*disagrees with folder"):
        read_dataset(tmp_path, format="ucf101", split_id=2)
    write(ann / "trainlist02.txt", "YoYo/a.avi 4\n")
    with pytest.raises(ValueError, match=r"trainlist02\.txt:1: label 4 outside 1..3"):
        read_dataset(tmp_path, format="ucf101", split_id=2)
    write(ann / "testlist02.txt", "Nope/a.avi\n")
    with pytest.raises(ValueError, match=r"testlist02\.txt:1: no label and folder 'Nope'"):
        read_dataset(tmp_path, format="ucf101", split="test", split_id=2)
    with pytest.raises(ValueError, match="trainlist03.txt not found"):
        read_dataset(
            tmp_path / "UCF-101",
            format="ucf101",
            split_id=3,
            annotation_dir=tmp_path / "ucfTrainTestlist",
        )
    write(ann / "classInd.txt", "1 A\nB 2\n")
    with pytest.raises(ValueError, match=r"classInd\.txt:2"):
        read_dataset(tmp_path, format="ucf101")


# ----------------------------------------------------------------------------- HMDB51


def make_hmdb(root: Path) -> None:
    splits = root / "testTrainMulti_7030_splits"
    write(splits / "brush_hair_test_split1.txt", "bh_a.avi 1 \nbh_b.avi 2 \nbh_c.avi 0 \n")
    write(splits / "shoot_ball_test_split1.txt", "sb_a.avi 2\nsb_b.avi 1\n")
    write(splits / "brush_hair_test_split2.txt", "bh_a.avi 2\n")
    for c, v in [
        ("brush_hair", "bh_a"),
        ("brush_hair", "bh_b"),
        ("shoot_ball", "sb_a"),
        ("shoot_ball", "sb_b"),
    ]:
        touch(root / c / f"{v}.avi")


def test_hmdb51_splits(tmp_path):
    make_hmdb(tmp_path)
    train = read_dataset(tmp_path, format="hmdb51", split="train")
    assert train.class_names == ["brush_hair", "shoot_ball"]
    assert [(e.video_id, e.label) for e in train.entries] == [("bh_a", 0), ("sb_b", 1)]
    assert all(os.path.isfile(e.path) for e in train.entries)
    test = read_dataset(tmp_path, format="hmdb51", split="test")
    assert [(e.video_id, e.label) for e in test.entries] == [("bh_b", 0), ("sb_a", 1)]
    s2 = read_dataset(tmp_path, format="hmdb51", split="test", split_id=2)
    assert [e.video_id for e in s2.entries] == ["bh_a"]  # "0" (unused) never listed


def test_hmdb51_malformed(tmp_path):
    make_hmdb(tmp_path)
    write(
        tmp_path / "testTrainMulti_7030_splits" / "shoot_ball_test_split1.txt",
        "sb_a.avi 2\nsb_b.avi 3\n",
    )
    with pytest.raises(ValueError, match=r"shoot_ball_test_split1\.txt:2: expected"):
        read_dataset(tmp_path, format="hmdb51")
    with pytest.raises(ValueError, match=r"_test_split3\.txt not found"):
        read_dataset(tmp_path, format="hmdb51", split_id=3)


# ----------------------------------------------------------------------------- Kinetics-400

K400_HEADER = "label,youtube_id,time_start,time_end,split\n"


def test_kinetics400_csv(tmp_path):
    write(
        tmp_path / "train.csv",
        K400_HEADER
        + "abseiling,aaa,10,20,train\n"
        + '"passing American football (in game)",bbb,0,10,train\n'
        + "abseiling,ccc,5,15,train\n",
    )
    write(tmp_path / "validate.csv", K400_HEADER + "abseiling,ddd,30,40,val\n")
    touch(tmp_path / "train" / "abseiling" / "aaa_000010_000020.mp4")
    touch(tmp_path / "train" / "passing American football (in game)" / "bbb_000000_000010.mp4")
    touch(tmp_path / "val" / "ddd_000030_000040.mp4")  # flat layout
    spec = read_dataset(tmp_path, format="kinetics400", split="train")
    assert spec.class_names == ["abseiling", "passing American football (in game)"]
    assert [(e.video_id, e.label) for e in spec.entries] == [
        ("aaa_000010_000020", 0),
        ("bbb_000000_000010", 1),
        ("ccc_000005_000015", 0),
    ]
    assert os.path.isfile(spec.entries[0].path) and os.path.isfile(spec.entries[1].path)
    assert not os.path.exists(spec.entries[2].path)  # listed but absent: the index reports it
    val = read_dataset(tmp_path, format="kinetics400", split="val")
    assert val.class_names == spec.class_names  # classes from train.csv
    assert os.path.isfile(val.entries[0].path) and val.entries[0].label == 0


def test_kinetics400_malformed(tmp_path):
    write(
        tmp_path / "train.csv",
        K400_HEADER + "abseiling,aaa,10,20,train\nabseiling,bbb,x,20,train\n",
    )
    with pytest.raises(ValueError, match=r"train\.csv:3: time_start"):
        read_dataset(tmp_path, format="kinetics400")
    write(tmp_path / "train.csv", K400_HEADER + "abseiling,aaa\n")
    with pytest.raises(ValueError, match=r"train\.csv:2: expected 5 fields"):
        read_dataset(tmp_path, format="kinetics400")
    write(tmp_path / "train.csv", "youtube_id,time_start,time_end,split\n")
    with pytest.raises(ValueError, match=r"train\.csv:1: header lacks column\(s\) label"):
        read_dataset(tmp_path, format="kinetics400")
    write(tmp_path / "train.csv", K400_HEADER + "abseiling,aaa,10,20,train\n")
    write(tmp_path / "validate.csv", K400_HEADER + "zumba,ddd,30,40,val\n")
    with pytest.raises(ValueError, match=r"validate\.csv:2: label 'zumba'"):
        read_dataset(tmp_path, format="kinetics400", split="val")


def test_kinetics400_class_folders(tmp_path):
    for split, cls, name in [
        ("train", "b_cls", "x.mp4"),
        ("train", "a_cls", "y.mp4"),
        ("train", "a_cls", "z.webm"),
        ("val", "b_cls", "w.mp4"),
    ]:
        touch(tmp_path / split / cls / name)
    spec = read_dataset(tmp_path, format="kinetics400")
    assert spec.class_names == ["a_cls", "b_cls"]
    assert [(e.video_id, e.label) for e in spec.entries] == [("y", 0), ("z", 0), ("x", 1)]
    val = read_dataset(tmp_path, format="kinetics400", split="val")
    assert [(e.video_id, e.label) for e in val.entries] == [("w", 1)]


# ----------------------------------------------------------------------------- Diving48


def test_diving48(tmp_path):
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"]]
    write(tmp_path / "Diving48_vocab.json", json.dumps(vocab))
    write(
        tmp_path / "Diving48_V2_train.json",
        json.dumps(
            [
                {"vid_name": "aa_00000", "label": 1, "start_frame": 0, "end_frame": 59},
                {"vid_name": "bb_00003", "label": 0, "start_frame": 4, "end_frame": 40},
            ],
            indent=1,
        ),
    )
    write(
        tmp_path / "Diving48_V2_test.json",
        json.dumps([{"vid_name": "cc_00001", "label": 0, "start_frame": 0, "end_frame": 9}]),
    )
    for v in ("aa_00000", "bb_00003", "cc_00001"):
        touch(tmp_path / "rgb" / f"{v}.mp4")
    spec = read_dataset(tmp_path, format="diving48")
    assert spec.class_names == ["Back_15som_05Twis_FREE", "Forward_25som_NoTwis_PIKE"]
    e = spec.entries
    assert [(x.video_id, x.label, x.start_frame, x.end_frame) for x in e] == [
        ("aa_00000", 1, 0, 59),
        ("bb_00003", 0, 4, 40),
    ]
    assert all(os.path.isfile(x.path) for x in e)
    test = read_dataset(tmp_path, format="diving48", split="test")
    assert [x.video_id for x in test.entries] == ["cc_00001"]


def test_diving48_malformed(tmp_path):
    write(
        tmp_path / "Diving48_V2_train.json",
        json.dumps(
            [
                {"vid_name": "aa", "label": 1, "start_frame": 0, "end_frame": 59},
                {"vid_name": "bb", "label": 0, "start_frame": 40, "end_frame": 40},
            ]
        ),
    )
    with pytest.raises(ValueError, match=r"Diving48_V2_train\.json:entry 1: end_frame 40"):
        read_dataset(tmp_path, format="diving48")
    write(tmp_path / "Diving48_V2_train.json", '[{"vid_name": "aa", "label": 1},\n{"vid_name": }]')
    with pytest.raises(ValueError, match=r"Diving48_V2_train\.json:2: invalid JSON"):
        read_dataset(tmp_path, format="diving48")
    write(tmp_path / "Diving48_V2_train.json", json.dumps([{"vid_name": "aa"}]))
    with pytest.raises(ValueError, match=r"entry 0: expected an object with vid_name and label"):
        read_dataset(tmp_path, format="diving48")


# ----------------------------------------------------------------------------- SSv2


def make_ssv2(root: Path) -> None:
    labels = {
        "Approaching something with your camera": "1",
        "Holding something next to something": "0",
    }
    write(root / "labels" / "labels.json", json.dumps(labels))
    write(
        root / "labels" / "train.json",
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "holding potato next to bottle",
                    "template": "Holding [something] next to [something]",
                    "placeholders": ["a", "b"],
                },
                {
                    "id": "42326",
                    "label": "approaching cup",
                    "template": "Approaching [something] with your camera",
                    "placeholders": ["cup"],
                },
            ]
        ),
    )
    write(
        root / "labels" / "validation.json",
        json.dumps([{"id": "74225", "template": "Approaching [something] with your camera"}]),
    )
    for v in ("78687", "42326", "74225"):
        touch(root / "20bn-something-something-v2" / f"{v}.webm")


def test_ssv2(tmp_path):
    make_ssv2(tmp_path)
    spec = read_dataset(tmp_path, format="ssv2")
    assert spec.class_names == [
        "Holding something next to something",
        "Approaching something with your camera",
    ]
    assert [(e.video_id, e.label) for e in spec.entries] == [("78687", 0), ("42326", 1)]
    assert all(os.path.isfile(e.path) and e.path.endswith(".webm") for e in spec.entries)
    for split in ("val", "test"):  # test.json has no labels: validation.json is the eval split
        ev = read_dataset(tmp_path, format="ssv2", split=split)
        assert [(e.video_id, e.label) for e in ev.entries] == [("74225", 1)]


def test_ssv2_unknown_template(tmp_path):
    make_ssv2(tmp_path)
    write(
        tmp_path / "labels" / "validation.json",
        json.dumps(
            [
                {"id": "1", "template": "Approaching [something] with your camera"},
                {"id": "2", "template": "Juggling [something]"},
            ]
        ),
    )
    with pytest.raises(
        ValueError, match=r"validation\.json:entry 1: template 'Juggling something'"
    ):
        read_dataset(tmp_path, format="ssv2", split="val")


# ----------------------------------------------------------------------------- folder / csv


def test_folder_without_and_with_split_dirs(tmp_path):
    flat = tmp_path / "flat"
    touch(flat / "dog" / "d1.mp4")
    touch(flat / "cat" / "c2.MKV")
    touch(flat / "cat" / "sub" / "c1.webm")
    touch(flat / "cat" / "notes.txt")
    touch(flat / "cat" / ".DS_Store")
    touch(flat / "stray.mp4")
    touch(flat / ".dali_fame_index" / "probe_cache.json")
    spec = read_dataset(flat, format="folder", split="test")
    assert spec.class_names == ["cat", "dog"]
    assert [(e.video_id, e.label, e.split) for e in spec.entries] == [
        ("c2", 0, "test"),
        ("c1", 0, "test"),
        ("d1", 1, "test"),
    ]
    ignored = {os.path.basename(p): why for p, why in spec.ignored}
    assert ignored == {
        "notes.txt": "not a video file extension",
        "stray.mp4": "not inside a class folder",
    }

    split = tmp_path / "split"
    touch(split / "train" / "a" / "1.mp4")
    touch(split / "train" / "b" / "2.mp4")
    touch(split / "val" / "b" / "3.mp4")
    val = read_dataset(split, format="folder", split="val")
    assert val.class_names == ["a", "b"]  # from the train folder
    assert [(e.video_id, e.label) for e in val.entries] == [("3", 1)]
    with pytest.raises(ValueError, match="none for split 'test'"):
        read_dataset(split, format="folder", split="test")


def test_csv_header_names_and_split(tmp_path):
    touch(tmp_path / "videos" / "x" / "a.mp4")
    touch(tmp_path / "videos" / "y" / "b.mp4")
    touch(tmp_path / "videos" / "y" / "c.mp4")
    write(
        tmp_path / "annotations.csv",
        "path,label,split,scene\nx/a.mp4,xcls,train,0\ny/b.mp4,ycls,test,1\n"
        "y/c.mp4,ycls,training,2\n",
    )
    spec = read_dataset(tmp_path, format="csv", split="train")
    assert spec.class_names == ["xcls", "ycls"]
    assert [(e.video_id, e.label) for e in spec.entries] == [("a", 0), ("c", 1)]
    assert all(os.path.isfile(e.path) for e in spec.entries)  # resolved under videos/
    test = read_dataset(tmp_path / "annotations.csv", format="csv", split="test")
    assert [(e.video_id, e.label) for e in test.entries] == [("b", 1)]


def test_csv_no_header_int_labels(tmp_path):
    touch(tmp_path / "a.mp4")
    write(tmp_path / "list.csv", f"a.mp4,2\n{tmp_path / 'abs.mp4'},0\n")
    spec = read_dataset(tmp_path, format="csv", split="val")
    assert spec.class_names == ["0", "1", "2"]
    assert [(os.path.basename(e.path), e.label, e.split) for e in spec.entries] == [
        ("a.mp4", 2, "val"),
        ("abs.mp4", 0, "val"),
    ]


def test_csv_malformed(tmp_path):
    write(tmp_path / "annotations.csv", "path,label\na.mp4,1\nb.mp4\n")
    with pytest.raises(ValueError, match=r"annotations\.csv:3: expected at least 2 fields"):
        read_dataset(tmp_path, format="csv")
    write(tmp_path / "annotations.csv", "a.mp4,1,train\nb.mp4,1,holdout\n")
    with pytest.raises(ValueError, match=r"annotations\.csv:2: split 'holdout'"):
        read_dataset(tmp_path, format="csv")
    write(tmp_path / "other.csv", "a.mp4,1\n")
    os.remove(tmp_path / "annotations.csv")
    write(tmp_path / "third.csv", "a.mp4,1\n")
    with pytest.raises(ValueError, match="exactly one"):
        read_dataset(tmp_path, format="csv")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format='avi'"):
        read_dataset(tmp_path, format="avi")
    with pytest.raises(ValueError, match="split='dev'"):
        read_dataset(tmp_path, format="folder", split="dev")
    with pytest.raises(ValueError, match="does not exist"):
        read_dataset(tmp_path / "nope", format="folder")
    with pytest.raises(ValueError, match="split_id=0"):
        read_dataset(tmp_path, format="ucf101", split_id=0)
    assert canonical_split("Validate") == "val"
    assert set(FORMATS) == {"ucf101", "hmdb51", "kinetics400", "diving48", "ssv2", "folder", "csv"}

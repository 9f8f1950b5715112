"""Classification metrics, the 10-clip reduction, normalisation and the cross-process gather."""

from __future__ import annotations

import math

import pytest
import torch

from dali_fame.augment import ClipAugment
from dali_fame.eval.inference import gather_indexed, multiclip_pass, normalize_clips, reduce_clips
from dali_fame.eval.metrics import (
    classification_results,
    confusion_matrix,
    per_class_accuracy,
    save_confusion_figure,
    topk_accuracy,
)


def test_topk_per_class_and_confusion_by_hand():
    # 4 videos, 3 classes. Rankings: v0 [0,1,2] label 0 (top-1 hit); v1 [2,1,0] label 1
    # (top-2); v2 [1,2,0] label 0 (rank 3); v3 [2,0,1] label 2 (top-1 hit).
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.1, 0.5, 0.4], [0.3, 0.1, 0.6]])
    labels = torch.tensor([0, 1, 0, 2])
    assert topk_accuracy(scores, labels, ks=(1, 2, 3, 5)) == {1: 50.0, 2: 75.0, 3: 100.0, 5: 100.0}
    cm = confusion_matrix(scores.argmax(1), labels, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    assert per_class_accuracy(cm).tolist() == [50.0, 0.0, 100.0]
    metrics, cm2 = classification_results(scores, labels, class_names=["a", "b", "c"])
    assert metrics["top1"] == 50.0 and metrics["top5"] == 100.0 and torch.equal(cm, cm2)
    assert metrics["per_class"] == {"a": 50.0, "b": 0.0, "c": 100.0}
    assert metrics["mean_class_acc"] == pytest.approx(50.0) and metrics["num_videos"] == 4


def test_class_without_test_videos_is_nan_and_left_out_of_the_mean():
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 2]), num_classes=3)
    acc = per_class_accuracy(cm)
    assert acc[0] == 100.0 and math.isnan(acc[1]) and acc[2] == 0.0
    metrics, _ = classification_results(torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), torch.tensor([0, 2]),
                                        class_names=["a", "b", "c"])
    assert metrics["per_class"]["b"] is None and metrics["mean_class_acc"] == 50.0


def test_confusion_figure_is_a_png(tmp_path):
    cm = torch.tensor([[3, 1], [0, 4]])
    path = save_confusion_figure(cm, tmp_path / "cm.png", class_names=["walk", "run"], title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_normalize_clips_is_clip_augment_without_random_ops():
    clips = torch.randint(0, 256, (2, 3, 8, 6, 3), dtype=torch.uint8)
    plain = ClipAugment(crop=8, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    out = normalize_clips(clips)
    assert out.shape == (2, 3, 3, 8, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, plain(clips, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="uint8"):
        normalize_clips(clips.float())


def test_reduce_clips():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # one video, two clips
    torch.testing.assert_close(reduce_clips(logits, reduce="softmax"), torch.tensor([[0.625, 0.375]]))
    feats = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])
    torch.testing.assert_close(reduce_clips(feats, reduce="l2"), torch.tensor([[0.3, 0.9]]))
    with pytest.raises(ValueError, match="reduce"):
        reduce_clips(feats, reduce="max")


def test_multiclip_pass_averages_each_videos_clips():
    # 3 videos x 2 clips, each clip a constant grey level; the "model" returns the clip mean, so
    # each video's output is the mean of its two normalised grey levels.
    levels = torch.tensor([[0, 255], [51, 51], [102, 204]], dtype=torch.uint8)
    views = levels[:, :, None, None, None, None].expand(3, 2, 2, 4, 4, 3).contiguous()
    loader = [{"views": views[:2], "labels": torch.tensor([0, 1]), "index": torch.tensor([5, 6])},
              {"views": views[2:], "labels": torch.tensor([1]), "index": torch.tensor([7])}]
    out = multiclip_pass(lambda x: x.mean(dim=(2, 3, 4)), loader, device="cpu", reduce="mean", progress=False)
    expected = normalize_clips(views.flatten(0, 1)).mean(dim=(2, 3, 4)).view(3, 2, 3).mean(dim=1)
    torch.testing.assert_close(out["outputs"], expected)
    assert out["index"].tolist() == [5, 6, 7] and out["labels"].tolist() == [0, 1, 1]


class TwoRankAccelerator:
    """Stands in for rank 0 of a 2-process group whose rank 1 holds ``other``: padding and
    gathering behave as accelerate's do (pad to the longest rank, concatenate rank by rank)."""

    def __init__(self, other: dict[str, torch.Tensor]) -> None:
        self.other = other
        self.other_rows = other["index"].shape[0]

    def pad_across_processes(self, tensor, dim=0, pad_index=0, pad_first=False):
        longest = max(tensor.shape[0], self.other_rows)
        pad = torch.full((longest - tensor.shape[0], *tensor.shape[1:]), pad_index, dtype=tensor.dtype)
        return torch.cat([tensor, pad])

    def gather_for_metrics(self, data):
        out = {}
        for key, mine in data.items():
            theirs = self.other[key]
            fill = -1 if key == "index" else 0
            pad = torch.full((mine.shape[0] - theirs.shape[0], *theirs.shape[1:]), fill, dtype=theirs.dtype)
            out[key] = torch.cat([mine, torch.cat([theirs, pad])])
        return out


def test_gather_indexed_handles_unequal_shards_and_orders_by_video():
    # rank 0 saw videos 4, 0, 2; rank 1 saw videos 3, 1 (one row shorter, so it gets padded)
    mine = {"index": torch.tensor([4, 0, 2]), "labels": torch.tensor([1, 0, 1]),
            "outputs": torch.tensor([[4.0], [0.0], [2.0]])}
    theirs = {"index": torch.tensor([3, 1]), "labels": torch.tensor([0, 2]),
              "outputs": torch.tensor([[3.0], [1.0]])}
    out = gather_indexed(TwoRankAccelerator(theirs), mine)
    assert out["index"].tolist() == [0, 1, 2, 3, 4]
    assert out["outputs"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out["labels"].tolist() == [0, 2, 1, 0, 1]
    # a video delivered by both ranks (wrap-around padding in some samplers) counts once
    theirs = {"index": torch.tensor([3, 4]), "labels": torch.tensor([0, 1]),
              "outputs": torch.tensor([[3.0], [4.0]])}
    out = gather_indexed(TwoRankAccelerator(theirs), mine)
    assert out["index"].tolist() == [0, 2, 3, 4]

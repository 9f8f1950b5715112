"""The classifier of the finetune and linear-probe protocols (spec section 8).

``VideoClassifier`` = backbone -> [L2 normalisation] -> dropout -> linear. Finetune trains every
layer with dropout before the FC (0.7 UCF101, 0.5 HMDB51). The linear probe freezes the backbone
(no gradients, BatchNorm kept in eval mode whatever ``.train()`` says) and L2-normalises its
features; only ``fc`` learns, so :data:`CLASSIFIER_KEYS` are the only keys a pretrained
checkpoint may lack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the keys of the new classifier (what a pretraining checkpoint legitimately lacks)
CLASSIFIER_KEYS: tuple[str, ...] = ("fc.weight", "fc.bias")


class VideoClassifier(nn.Module):
    """backbone (B, 3, T, H, W) -> logits float (B, num_classes).

    Args:
        backbone: module with an integer ``feature_dim`` mapping float (B, 3, T, H, W) to
            (B, feature_dim).
        num_classes: outputs of the linear layer.
        dropout: probability of the dropout before the linear layer (0 disables it).
        frozen: linear probe: the backbone gets no gradients and stays in eval mode.
        normalize_features: L2-normalise the features before the linear layer (linear probe).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        dropout: float = 0.0,
        frozen: bool = False,
        normalize_features: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"VideoClassifier: num_classes must be >= 1; got {num_classes}")
        self.backbone = backbone
        self.frozen = frozen
        self.normalize_features = normalize_features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.feature_dim, num_classes)
        # A small init keeps the first steps of lr 5 (probe) from saturating the softmax.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.frozen:  # BatchNorm statistics are part of the frozen backbone
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x float (B, 3, T, H, W) -> float (B, feature_dim), L2-normalised if configured."""
        if self.frozen:
            with torch.no_grad():
                f = self.backbone(x)
        else:
            f = self.backbone(x)
        return F.normalize(f.float(), dim=1) if self.normalize_features else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float (B, 3, T, H, W) normalised -> logits float (B, num_classes)."""
        return self.fc(self.dropout(self.features(x)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: ``fc`` only when frozen, else everything."""
        return list(self.fc.parameters()) if self.frozen else list(self.parameters())

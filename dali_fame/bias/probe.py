"""The linear probe of the bias benchmark: multinomial logistic regression on frozen features.

One fixed recipe for every encoder, every label (motion class or scene) and every seed, so that
probe numbers differ only because the features do:

* **Standardisation**: each feature dimension is centred by the probe's *training* mean and
  divided by its training standard deviation (a dimension constant in training is left at 0).
  The features arrive L2-normalised, but their geometry differs wildly between encoders (a
  random-init ReLU network puts every video within a few degrees of one direction; a trained
  one spreads them out): without this, one fixed weight decay would be strong for one encoder
  and negligible for another.
* **Objective**: ``mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 N)`` with N the number of training
  videos: exactly scikit-learn's ``LogisticRegression(C=1.0)`` (multinomial, bias not
  penalised) after ``StandardScaler``, the most common probe recipe, chosen as a default
  rather than tuned on this benchmark.
* **Solver**: full-batch L-BFGS (strong-Wolfe line search, history 20) in float64 from zero
  weights, at most :data:`MAX_ITER` iterations, stopping on a gradient max-norm below
  :data:`TOLERANCE_GRAD`. The problem is strictly convex, so the optimum does not depend on the
  start; zero weights, full batches and no sampling make the result deterministic (no seed:
  nothing is random), identical from run to run.

Cost: O(max_iter * N * D * C) multiply-adds, ~0.1 s for 1,000 videos x 512 features x 10 classes
on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: L-BFGS iterations at most (each one or more function evaluations in the line search)
MAX_ITER = 500
#: stop when every gradient entry is below this (float64 objective, mean cross-entropy scale)
TOLERANCE_GRAD = 1e-6
#: scikit-learn's default inverse regularisation strength (see the module docstring)
INVERSE_REGULARISATION = 1.0


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe; every tensor float64 on the CPU.

    Attributes:
        mean: (D,) training mean of each feature dimension.
        scale: (D,) training standard deviation (1 where a dimension is constant).
        weight: (C, D) on the standardised features.
        bias: (C,).
        train_top1: percent of the training videos the probe classifies correctly.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    train_top1: float

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """features float (N, D) -> logits float64 (N, C)."""
        if features.ndim != 2 or features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"LinearProbe.scores: expected features (N, {self.weight.shape[1]}); "
                             f"got {tuple(features.shape)}")
        x = (features.detach().to("cpu", torch.float64) - self.mean) / self.scale
        return x @ self.weight.t() + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """features float (N, D) -> predicted classes int64 (N,) (ties: the lowest class)."""
        return self.scores(features).argmax(dim=1)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
              inverse_regularisation: float = INVERSE_REGULARISATION) -> LinearProbe:
    """Fit the benchmark's probe (recipe in the module docstring).

    Args:
        features: float (N, D), one row per training video (any float dtype, any device).
        labels: int64 (N,) in ``0 .. num_classes - 1``.
        num_classes: C, the probe's outputs (classes absent from ``labels`` get no training
            signal but still exist, so that test labels index the same columns).
        inverse_regularisation: scikit-learn's C (the benchmark's fixed value is the default;
            other values only for the sensitivity check of benchmarks/bench_bias_eval.py).

    Returns:
        :class:`LinearProbe`.

    Raises:
        ValueError: shapes that do not fit, fewer than 2 videos, labels out of range, or
            non-finite features (a diverged encoder), with the numbers.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"fit_probe: features (N, D) and labels (N,) expected; got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    n = int(features.shape[0])
    if n < 2:
        raise ValueError(f"fit_probe: {n} training video(s); a probe needs at least 2")
    if not inverse_regularisation > 0:
        raise ValueError(f"fit_probe: inverse_regularisation must be > 0, got {inverse_regularisation}")
    y = labels.detach().to("cpu", torch.int64)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"fit_probe: labels span {int(y.min())}..{int(y.max())}, outside "
                         f"0..{num_classes - 1} (num_classes={num_classes})")
    x = features.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("fit_probe: the features hold NaN or infinite values (a diverged encoder?)")
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    # A constant dimension carries nothing: scale 1 keeps it at exactly 0 instead of 0/0.
    scale = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / scale

    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * inverse_regularisation * n)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITER, history_size=20,
                                  tolerance_grad=TOLERANCE_GRAD, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    train_top1 = float(((x @ weight.t() + bias).argmax(dim=1) == y).double().mean() * 100)
    return LinearProbe(mean=mean, scale=scale, weight=weight, bias=bias, train_top1=train_top1)

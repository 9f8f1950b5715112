"""Learning-rate and momentum schedules as pure functions of the global step.

The trainer sets ``param_group["lr"] = lr_at(step, ...)`` by hand every step (moco-v3,
nanoGPT) instead of handing a scheduler to ``accelerator.prepare`` (which would step it once
per process). A pure function also makes resume exact: the step number is the whole state.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    schedule: str = "multistep",
    milestones: list[int] | tuple[int, ...] = (120, 180),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    multistep: ``base_lr * gamma ** (number of milestones <= epoch)`` with ``epoch`` the
    fractional epoch (paper appendix A.1: x0.1 at 120 and 180 of 200). cosine: half-cosine from
    ``base_lr`` to 0 over all steps (the released README). A linear warm-up from 0 over
    ``warmup_epochs`` multiplies either.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0; got {steps_per_epoch}")
    epoch = step / steps_per_epoch
    if schedule == "multistep":
        lr = base_lr * gamma ** sum(epoch >= m for m in milestones)
    elif schedule == "cosine":
        total = max(1, epochs * steps_per_epoch)
        lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total) / total))
    else:
        raise ValueError(f"unknown schedule {schedule!r} (expected multistep or cosine)")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        lr *= epoch / warmup_epochs
    return lr


def set_lr(optimizer, optim_cfg, step: int, *, steps_per_epoch: int, epochs: int) -> float:
    """Set every param group's lr to :func:`lr_at` for ``step`` under an ``OptimConfig``; return it."""
    lr = lr_at(step, base_lr=optim_cfg.lr, steps_per_epoch=steps_per_epoch, epochs=epochs,
               schedule=optim_cfg.schedule, milestones=optim_cfg.milestones, gamma=optim_cfg.gamma,
               warmup_epochs=optim_cfg.warmup_epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr

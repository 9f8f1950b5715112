"""Two full pretraining steps on a GPU under ``torch.cuda.set_sync_debug_mode("error")``: FAME
(torch and cuda backends), ClipAugment, the MoCo forward with its queue, backward, the optimiser
step and the folded non-finite flag of dali_fame.engine.loop, with no host synchronisation.

Synthetic uint8 clips are made on the GPU; the per-step random draws stay on the CPU generator
(as in train/pretrain.py). One warm-up step runs first, outside the check: lazy initialisation
(cuDNN autotuning, CuPy's first compile, the caching allocators) may synchronise once.
"""

from __future__ import annotations

import pytest
import torch

from dali_fame.augment import ClipAugment
from dali_fame.engine.loop import step_generator
from dali_fame.fame import FAME
from dali_fame.moco import MoCo
from dali_fame.models import build_backbone


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_two_pretraining_steps_without_host_sync(backend):
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    batch, frames, size = 4, 8, 32
    fame = FAME(backend=backend)
    augment = ClipAugment(crop=size)
    model = MoCo(build_backbone("tiny", width=16), queue_size=32, global_batch_size=batch,
                 generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    clip_gen = torch.Generator(device=device).manual_seed(0)
    views = torch.randint(0, 256, (batch, 2, frames, size, size, 3), dtype=torch.uint8,
                          device=device, generator=clip_gen)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def step(index: int) -> torch.Tensor:
        nonlocal first_bad
        gen = step_generator(0, index, 0)
        out = fame(views[:, 0], views[:, 1], generator=gen)
        x0 = augment(out.view0, generator=gen)
        x1 = augment(out.view1, generator=gen)
        result = model(x0, x1)
        loss = result["loss"]
        first_bad = torch.where(~torch.isfinite(loss.detach()) & (first_bad < 0), index, first_bad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step(0)
    torch.cuda.synchronize()
    ptr = model._ptr
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(1), step(2)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert model._ptr == (ptr + 2 * 2 * batch) % 32 == int(model.queue_ptr)
    assert int(first_bad) == -1 and all(bool(torch.isfinite(v)) for v in losses)

"""FAME on CUDA tensors: the torch reference is device-independent and the CuPy backend matches it.

Skipped without a GPU (marker ``cuda``). The kernels' own tests (tests/kernels/) compare each
intermediate; these compare the whole public API across devices and backends.
"""

from __future__ import annotations

import pytest
import torch
from fame_clips import moving_square_clips

from dali_fame.fame import VARIANTS, fame_mask, fame_merge, fame_merge_normalize

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def clips():
    noisy = moving_square_clips(3, 17, 113, seed=1)[0]
    static = torch.full((2, 4, 7, 9, 3), 50, dtype=torch.uint8)  # all ties
    return [noisy, static]


def _backends():
    from dali_fame.fame.dispatch import _load_cuda_ops

    return ["torch"] + (["cuda"] if not isinstance(_load_cuda_ops(), Exception) else [])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("legacy_hue", [False, True])
def test_gpu_masks_equal_the_cpu_reference(clips, variant, legacy_hue):
    for x in clips:
        cpu = fame_mask(x, variant=variant, legacy_hue=legacy_hue)
        for backend in _backends():
            gpu = fame_mask(x.cuda(), variant=variant, legacy_hue=legacy_hue, backend=backend)
            assert gpu.is_cuda
            assert torch.equal(gpu.cpu(), cpu), backend


def test_gpu_merge_equals_the_cpu_reference(clips):
    x = clips[0]
    mask = fame_mask(x)
    perm = torch.tensor([2, 0, 1])
    cpu = fame_merge(x, mask, perm)
    cpu_norm = fame_merge_normalize(x, mask, perm)
    for backend in _backends():
        assert torch.equal(fame_merge(x.cuda(), mask.cuda(), perm, backend=backend).cpu(), cpu)
        gpu_norm = fame_merge_normalize(x.cuda(), mask.cuda(), perm.cuda(), backend=backend)
        torch.testing.assert_close(gpu_norm.cpu(), cpu_norm)
    # intra-video backgrounds (the clips reversed in time): one merge kernel on "cuda"
    other = x.flip(1).contiguous()
    ident = torch.arange(x.shape[0])
    cpu_i = fame_merge(x, mask, ident, background=other)
    for backend in _backends():
        gpu_i = fame_merge(x.cuda(), mask.cuda(), ident, background=other.cuda(), backend=backend)
        assert torch.equal(gpu_i.cpu(), cpu_i), backend


def test_fused_mask_path_is_seven_launches_without_host_sync(clips):
    from dali_fame.fame import cuda as fcuda
    from dali_fame.fame.dispatch import cuda_ops_status

    ok, reason = cuda_ops_status(torch.cuda.current_device())
    if not ok:
        pytest.skip(reason)
    x = clips[0].cuda()
    fcuda.fame_mask_cuda(x)  # compiles, sizes the grids, builds the taps once
    runner = fcuda.CupyRunner(x.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = fcuda.run_fame_mask(x, runner=runner)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert runner.launches == result.launches == 7 <= fcuda.MAX_LAUNCHES_PER_CALL
    assert torch.equal(result.mask.cpu(), fame_mask(clips[0], backend="torch"))

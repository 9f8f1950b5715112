"""The host emulation itself (kernels/cuda_host_emu.cuh): the semantics the kernel tests rely on."""

from __future__ import annotations

import pytest
import torch


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


@pytest.mark.parametrize("grid,block,n", [(1, 7, 7), (5, 256, 1200), (3, 1024, 2500)])
def test_syncthreads_orders_shared_memory(emu, grid, block, n):
    x = torch.arange(n, dtype=torch.int32)
    out = torch.full((n,), -5, dtype=torch.int32)
    emu.libs["selftest"].emu_selftest_reverse(grid, block, _p(x), _p(out), n)
    expected = torch.empty_like(x)
    for start in range(0, grid * block, block):
        for t in range(block):
            i, j = start + t, start + block - 1 - t
            if i < n:
                expected[i] = x[j] if j < n else -1
    assert torch.equal(out, expected)


def test_3d_indices_follow_cuda(emu):
    grid, block = (3, 2, 2), (4, 3, 2)
    nb, nt = 12, 24
    out = torch.full((nb * nt,), -1, dtype=torch.int32)
    emu.libs["selftest"].emu_selftest_ids(*grid, *block, _p(out))
    expected = torch.tensor([b * 1000 + t for b in range(nb) for t in range(nt)], dtype=torch.int32)
    assert torch.equal(out, expected)  # every (block, thread) ran exactly once, CUDA's numbering


def test_atomics_are_exact_under_contention(emu):
    grid, block, iters = 4, 256, 200
    counter = torch.zeros(1, dtype=torch.int32)
    block_sums = torch.zeros(grid, dtype=torch.int32)
    emu.libs["selftest"].emu_selftest_atomics(grid, block, _p(counter), _p(block_sums), iters)
    assert counter.item() == grid * block * iters
    # the shared counter is re-initialised by each block, as on a GPU
    assert block_sums.tolist() == [block * iters] * grid

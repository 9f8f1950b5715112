"""MoCo: momentum update, queue wrap-around, the loss of a toy batch against an independent numpy
computation, the same-old-queue rule of the symmetric loss (and the legacy defect), key-encoder
gradients, construction checks, and shuffle BN with a simulated 2-process group."""

from __future__ import annotations

import ast
import copy
import inspect
import os
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from torch import nn

import dali_fame.moco as moco_mod
from dali_fame.moco import MoCo, shuffle_indices, unshuffle_indices
from dali_fame.models import build_backbone

CLIP = (3, 1, 2, 2)  # (C, T, H, W) of the toy clips: 12 numbers each


class LinearBackbone(nn.Module):
    """Flatten the clip and apply one linear layer: (B, 3, T, H, W) -> (B, feature_dim)."""

    def __init__(self, in_features: int = 12, feature_dim: int = 4, bn: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, feature_dim)
        # BatchNorm makes a key depend on the other rows of its batch (what shuffle BN is about).
        self.bn = nn.BatchNorm1d(feature_dim) if bn else nn.Identity()
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x.flatten(1)))


def make_moco(*, queue_size=8, batch=2, dim=3, seed=0, bn=False, **kw) -> MoCo:
    torch.manual_seed(seed)
    return MoCo(
        LinearBackbone(bn=bn),
        dim=dim,
        queue_size=queue_size,
        global_batch_size=batch,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def views(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *CLIP, generator=g), torch.randn(batch, *CLIP, generator=g)


# ---------------------------------------------------------------- construction


def test_construction_checks_queue_multiple_of_global_batch():
    with pytest.raises(ValueError, match=r"queue_size \(10\).*global batch size \(4\)"):
        MoCo(LinearBackbone(), queue_size=10, global_batch_size=4)
    MoCo(LinearBackbone(), queue_size=12, global_batch_size=4)  # 12 % 4 == 0, 12 % 8 != 0: fine


def test_initial_queue_is_normalised_seeded_and_in_state_dict():
    a, b = make_moco(seed=3), make_moco(seed=3)
    assert a.queue.shape == (3, 8)
    torch.testing.assert_close(a.queue.norm(dim=0), torch.ones(8))
    torch.testing.assert_close(a.queue, b.queue)
    assert not torch.allclose(a.queue, make_moco(seed=4).queue)
    state = a.state_dict()
    assert "queue" in state and "queue_ptr" in state
    a(*views(2, 0))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.queue, a.queue)
    assert int(b.queue_ptr) == 4


def test_key_encoder_starts_identical_and_gets_no_grads():
    moco = make_moco()
    for p_q, p_k in zip(moco.encoder_q.parameters(), moco.encoder_k.parameters()):
        torch.testing.assert_close(p_q, p_k)
        assert not p_k.requires_grad
    out = moco(*views(2, 1))
    assert not out["k0"].requires_grad and not out["k1"].requires_grad
    out["loss"].backward()
    assert all(p.grad is None for p in moco.encoder_k.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moco.encoder_q.parameters())
    assert moco.backbone is moco.encoder_q.backbone


# ---------------------------------------------------------------- momentum update


def test_foreach_momentum_update_equals_the_per_parameter_loop():
    moco = make_moco(bn=True)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    ref = [p.clone() for p in moco.encoder_k.parameters()]
    for p_q, p_k in zip(moco.encoder_q.parameters(), ref):
        p_k.mul_(0.99).add_(p_q.detach(), alpha=1.0 - 0.99)
    moco.momentum_update(0.99)
    for p_k, r in zip(moco.encoder_k.parameters(), ref):
        assert torch.equal(p_k, r)


def test_host_pointer_follows_the_buffer_and_a_loaded_state_dict():
    a, b = make_moco(seed=1), make_moco(seed=1)
    a(*views(2, 0))
    assert a._ptr == int(a.queue_ptr) == 4
    b.load_state_dict(a.state_dict())
    assert b._ptr == 4
    # the wrapped-module prefix path (DDP / Accelerate checkpoints) takes the same hook
    wrapper = nn.Module()
    wrapper.module = make_moco(seed=1)
    wrapper.load_state_dict({f"module.{k}": v for k, v in a.state_dict().items()})
    assert wrapper.module._ptr == 4
    for _ in range(2):  # 2 more steps of 4 keys on a queue of 8: wraps to 4 again
        a(*views(2, 1))
        b(*views(2, 1))
    assert a._ptr == b._ptr == int(b.queue_ptr) == 4
    assert torch.equal(a.queue, b.queue)


def test_queue_is_excluded_from_ddp_buffer_broadcast():
    moco = make_moco(bn=True)
    assert set(moco._ddp_params_and_buffers_to_ignore) == {"queue", "queue_ptr"}
    names = {n for n, _ in moco.named_buffers()}
    assert "encoder_q.backbone.bn.running_mean" in names
    assert not getattr(moco.encoder_q.backbone.bn.running_mean, "_ddp_ignored", False)


def test_momentum_update_math():
    moco = make_moco()
    q_params = [p.detach().clone() for p in moco.encoder_q.parameters()]
    with torch.no_grad():
        for i, p in enumerate(moco.encoder_k.parameters()):
            p.copy_(torch.full_like(p, float(i + 1)))
    # Hand computation on one entry: k = 0.9 * 1 + 0.1 * q for the first tensor.
    first_q = q_params[0].flatten()[0].item()
    moco.momentum_update(0.9)
    assert moco.encoder_k.backbone.fc.weight.flatten()[0].item() == pytest.approx(
        0.9 * 1.0 + 0.1 * first_q
    )
    for i, (p_k, p_q) in enumerate(zip(moco.encoder_k.parameters(), q_params)):
        torch.testing.assert_close(p_k, 0.9 * float(i + 1) + 0.1 * p_q)
    # The attribute is the default; the argument overrides it; m = 0 copies the query encoder.
    moco.momentum = 1.0
    before = [p.clone() for p in moco.encoder_k.parameters()]
    moco.momentum_update()
    for p_k, b in zip(moco.encoder_k.parameters(), before):
        torch.testing.assert_close(p_k, b)
    moco(*views(2, 2), momentum=0.0)
    for p_k, p_q in zip(moco.encoder_k.parameters(), moco.encoder_q.parameters()):
        torch.testing.assert_close(p_k, p_q)


# ---------------------------------------------------------------- the loss, by hand


def np_encoder(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Linear backbone, Linear-ReLU-Linear head, L2 normalisation; float64."""
    w, b, w1, b1, w2, b2 = params
    f = x.reshape(len(x), -1) @ w.T + b
    h = np.maximum(f @ w1.T + b1, 0.0) @ w2.T + b2
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def np_info_nce(q, k, queue, t):
    logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ queue], axis=1) / t
    mx = logits.max(1, keepdims=True)
    lse = (mx + np.log(np.exp(logits - mx).sum(1, keepdims=True)))[:, 0]
    return (lse - logits[:, 0]).mean(), logits


def test_loss_of_a_toy_batch_matches_hand_computation():
    rng = np.random.default_rng(7)
    m, t, batch = 0.75, 0.1, 2
    moco = make_moco(queue_size=8, batch=batch, momentum=m, temperature=t)
    shapes = [p.shape for p in moco.encoder_q.parameters()]
    q_np = [rng.normal(size=s) for s in shapes]
    k_np = [rng.normal(size=s) for s in shapes]
    queue_np = rng.normal(size=(3, 8))
    queue_np /= np.linalg.norm(queue_np, axis=0, keepdims=True)
    with torch.no_grad():
        for p, v in zip(moco.encoder_q.parameters(), q_np):
            p.copy_(torch.from_numpy(v))
        for p, v in zip(moco.encoder_k.parameters(), k_np):
            p.copy_(torch.from_numpy(v))
        moco.queue.copy_(torch.from_numpy(queue_np))
    x0 = rng.normal(size=(batch, *CLIP))
    x1 = rng.normal(size=(batch, *CLIP))

    out = moco(torch.from_numpy(x0).float(), torch.from_numpy(x1).float())

    k_new = [m * k + (1 - m) * q for k, q in zip(k_np, q_np)]  # update BEFORE the keys
    q0, q1 = np_encoder(q_np, x0), np_encoder(q_np, x1)
    k0, k1 = np_encoder(k_new, x0), np_encoder(k_new, x1)
    loss0, logits0 = np_info_nce(q0, k1, queue_np, t)
    loss1, logits1 = np_info_nce(q1, k0, queue_np, t)  # the same old queue
    expected = (loss0 + loss1) / 2
    acc = 100 * np.mean(np.concatenate([logits0.argmax(1) == 0, logits1.argmax(1) == 0]))

    assert out["loss"].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(out["loss_terms"].numpy(), [loss0, loss1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logits0"].numpy(), logits0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["logits1"].numpy(), logits1, rtol=1e-4, atol=1e-4)
    assert out["acc1"].item() == pytest.approx(acc)
    for p, v in zip(moco.encoder_k.parameters(), k_new):
        np.testing.assert_allclose(p.detach().numpy(), v, rtol=1e-5, atol=1e-6)
    # k1 then k0 enqueued at columns 0..3; the rest of the old queue untouched.
    new_queue = queue_np.copy()
    new_queue[:, 0:2] = k1.T
    new_queue[:, 2:4] = k0.T
    np.testing.assert_allclose(moco.queue.numpy(), new_queue, rtol=1e-5, atol=1e-6)
    assert int(moco.queue_ptr) == 4


# ---------------------------------------------------------------- the queue


@pytest.mark.parametrize("queue_size,batch", [(8, 2), (8, 4), (9, 3)])
def test_queue_wraps_around(queue_size, batch):
    moco = make_moco(queue_size=queue_size, batch=batch)
    expected = moco.queue.clone()
    ptr = 0
    for step in range(4):
        out = moco(*views(batch, 10 + step))
        for keys in (out["k1"], out["k0"]):  # the documented enqueue order
            for row in keys:
                expected[:, ptr] = row
                ptr = (ptr + 1) % queue_size
        assert int(moco.queue_ptr) == ptr == (2 * batch * (step + 1)) % queue_size
        torch.testing.assert_close(moco.queue, expected)
    torch.testing.assert_close(moco.queue.norm(dim=0), torch.ones(queue_size))


def test_both_terms_use_the_same_old_queue():
    moco = make_moco(queue_size=8, batch=2)
    x0, x1 = views(2, 5)
    old = moco.queue.clone()
    out = moco(x0, x1)
    with torch.no_grad():
        q1 = moco.encoder_q(x1)
    torch.testing.assert_close(out["logits0"][:, 1:], out["q0"].detach() @ old / 0.1)
    # Without the defect, q1's own-view key k1 (cosine 1 here: equal encoders) is not among
    # its negatives: they are exactly the old queue.
    torch.testing.assert_close(out["logits1"][:, 1:], q1 @ old / 0.1)


def test_legacy_enqueue_reproduces_the_released_defect():
    moco = make_moco(queue_size=8, batch=2, legacy_enqueue=True)
    x0, x1 = views(2, 5)
    old = moco.queue.clone()
    out = moco(x0, x1)
    q1, k1 = out["q1"].detach(), out["k1"]
    torch.testing.assert_close(out["logits0"][:, 1:], out["q0"].detach() @ old / 0.1)
    # Term 2 sees k1 at the columns it was written to (queue columns 0, 1 -> logits 1, 2) ...
    torch.testing.assert_close(out["logits1"][:, 1:3], q1 @ k1.T / 0.1)
    torch.testing.assert_close(out["logits1"][:, 3:], q1 @ old[:, 2:] / 0.1)
    # ... and each query's own-view key is a near-duplicate: cosine ~ 1 (encoders are equal).
    assert torch.diagonal(out["logits1"][:, 1:3]).min() > 9.9
    assert int(moco.queue_ptr) == 4


def test_tiny_backbone_step_under_bf16_autocast():
    torch.manual_seed(0)
    moco = MoCo(build_backbone("tiny", width=16), queue_size=64, global_batch_size=4)
    v0, v1 = torch.randn(2, 4, 3, 8, 32, 32).unbind(0)
    old = moco.queue.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moco(v0, v1)
    # float32 precision, not bf16's ~3 significant digits (logits reach 1 / 0.1 = 10).
    torch.testing.assert_close(out["logits0"][:, 1:], out["q0"].detach() @ old / 0.1)
    out["loss"].backward()
    # Queries, keys, logits and the queue stay float32 even when the backbone runs in bf16.
    assert out["loss"].dtype == out["q0"].dtype == out["k1"].dtype == torch.float32
    assert moco.queue.dtype == torch.float32
    assert out["logits0"].shape == (4, 65) and out["logits0"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    conv = moco.backbone.features[0].weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0


# ---------------------------------------------------------------- shuffle BN


def test_shuffle_index_math_two_ranks():
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    assert shuffle_indices(perm, rank=0, world_size=2).tolist() == [4, 0, 5]
    assert shuffle_indices(perm, rank=1, world_size=2).tolist() == [2, 1, 3]
    # Gathered outputs are in shuffled order: row j holds input perm[j]. Unshuffling must return
    # each rank's own inputs 0..2 / 3..5 in order.
    outputs = perm.clone()
    assert outputs[unshuffle_indices(perm, rank=0, world_size=2)].tolist() == [0, 1, 2]
    assert outputs[unshuffle_indices(perm, rank=1, world_size=2)].tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="divisible"):
        shuffle_indices(torch.arange(5), rank=0, world_size=2)


@pytest.mark.parametrize("world_size,batch", [(2, 3), (4, 2), (3, 5)])
def test_shuffle_then_unshuffle_is_identity(world_size, batch):
    g = torch.Generator().manual_seed(world_size)
    x_all = torch.randn(world_size * batch, 5, generator=g)
    perm = torch.randperm(world_size * batch, generator=g)
    encoded = torch.cat(
        [2 * x_all[shuffle_indices(perm, rank=r, world_size=world_size)] for r in range(world_size)]
    )
    for r in range(world_size):
        own = encoded[unshuffle_indices(perm, rank=r, world_size=world_size)]
        torch.testing.assert_close(own, 2 * x_all[r * batch : (r + 1) * batch])


class FakeGroup:
    """Collectives for ranks simulated as threads: gather concatenates in rank order, broadcast
    returns rank 0's tensor (what accelerator.gather / accelerate.utils.broadcast do)."""

    def __init__(self, world_size: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.perms: list[torch.Tensor] = []

    def _exchange(self, rank: int, t: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = t.clone()
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got

    def gather(self, rank: int):
        return lambda t: torch.cat(self._exchange(rank, t))

    def broadcast(self, rank: int):
        def fn(t: torch.Tensor) -> torch.Tensor:
            out = self._exchange(rank, t)[0]
            if rank == 0:
                self.perms.append(out)
            return out

        return fn


def test_shuffle_bn_with_two_simulated_ranks():
    world, batch = 2, 3
    base = make_moco(queue_size=24, batch=world * batch, bn=True)
    replicas = [copy.deepcopy(base) for _ in range(world)]
    group = FakeGroup(world)
    for r, model in enumerate(replicas):
        model.set_distributed(
            rank=r, world_size=world, gather=group.gather(r), broadcast=group.broadcast(r)
        )
    x0, x1 = views(world * batch, 11)
    outs: list[dict | None] = [None] * world
    errors: list[BaseException] = []

    def run(r: int) -> None:
        try:
            sl = slice(r * batch, (r + 1) * batch)
            outs[r] = replicas[r](x0[sl], x1[sl])
        except Exception as e:  # noqa: BLE001  (re-raised in the main thread below)
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]

    # Every rank holds the same queue: the global keys of both terms, k1 first.
    torch.testing.assert_close(replicas[0].queue, replicas[1].queue)
    assert int(replicas[0].queue_ptr) == int(replicas[1].queue_ptr) == 12
    k1_all = torch.cat([o["k1"] for o in outs])
    k0_all = torch.cat([o["k0"] for o in outs])
    torch.testing.assert_close(replicas[0].queue[:, :6], k1_all.T)
    torch.testing.assert_close(replicas[0].queue[:, 6:12], k0_all.T)

    # Reference keys computed in one process: view1's keys were encoded first (perms[0]).
    ref = copy.deepcopy(base)
    ref.momentum_update()
    for perm, x, got in [(group.perms[0], x1, k1_all), (group.perms[1], x0, k0_all)]:
        with torch.no_grad():
            shuffled = torch.cat(
                [ref.encoder_k(x[perm.view(world, batch)[r]]) for r in range(world)]
            )
        expected = shuffled[torch.argsort(perm)]
        torch.testing.assert_close(got, expected)
        # Not vacuous: per-rank BN without the shuffle gives different keys.
        with torch.no_grad():
            local = torch.cat([ref.encoder_k(x[r * batch : (r + 1) * batch]) for r in range(world)])
        assert not torch.allclose(got, local, atol=1e-3)


def test_set_distributed_needs_collectives():
    moco = make_moco()
    with pytest.raises(ValueError, match="gather"):
        moco.set_distributed(rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        moco.set_distributed(rank=2, world_size=2, gather=lambda t: t, broadcast=lambda t: t)


def test_module_makes_no_cuda_or_distributed_calls():
    tree = ast.parse(inspect.getsource(moco_mod))
    attrs = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert "cuda" not in attrs and "distributed" not in attrs


DDP_SCRIPT = """
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from dali_fame.moco import MoCo
from dali_fame.models import build_backbone

acc = Accelerator(cpu=True)
set_seed(0)
world = acc.num_processes
model = MoCo(build_backbone("tiny", width=16), queue_size=32, global_batch_size=2 * world)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model, opt = acc.prepare(model, opt)
acc.unwrap_model(model).set_distributed(
    rank=acc.process_index, world_size=world, gather=acc.gather, broadcast=broadcast
)
torch.manual_seed(100 + acc.process_index)  # different clips and RNG streams per rank
for step in range(3):
    v0, v1 = torch.randn(2, 2, 3, 8, 32, 32).unbind(0)
    out = model(v0, v1)
    acc.backward(out["loss"])
    opt.step()
    opt.zero_grad()
m = acc.unwrap_model(model)
tensors = [m.queue, m.encoder_k.backbone.features[0].weight, m.encoder_q.backbone.features[0].weight]
same = [bool(torch.equal(*acc.gather(t[None].contiguous()).unbind(0))) for t in tensors]
# DDP's per-forward broadcast leaves the queue out and keeps the BatchNorm statistics.
synced = set(getattr(model, "named_module_buffers", {}))
ignored = not ({"queue", "queue_ptr"} & synced) and any("running_mean" in n for n in synced)
if acc.is_main_process:
    print("RESULT", world, int(m.queue_ptr), *same, ignored)
"""


@pytest.mark.slow
def test_two_process_accelerate_run_keeps_ranks_identical(tmp_path):
    """A real 2-process CPU (gloo) run through accelerate: gather/broadcast injected, DDP-wrapped."""
    script = tmp_path / "ddp_moco.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), str(script),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    # 3 steps x 2 enqueues x global batch 4 = 24 keys written: ptr 24 on a queue of 32.
    assert line.split()[1:] == ["2", "24", "True", "True", "True", "True"]

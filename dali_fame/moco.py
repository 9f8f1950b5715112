"""MoCo v2 builder: query/key encoders, key queue, shuffle BN, symmetric contrastive loss.

fame-spec.md section 7 is the protocol; architecture.md item 9 the rules this module keeps:
no ``.cuda()`` and no ``torch.distributed`` calls inside. Everything that crosses processes goes
through callables the trainer injects with :meth:`MoCo.set_distributed` (``accelerator.gather`` and
``accelerate.utils.broadcast``); in one process they default to the identity, so the same code runs
on CPU, one GPU and many.

One step, ``MoCo.forward(view0, view1)`` with each view float (B, 3, T, H, W), B = local batch:

1. momentum update of the key encoder: ``theta_k <- m * theta_k + (1 - m) * theta_q``;
2. q0 = f_q(view0), q1 = f_q(view1) (with grad); k1 = f_k(view1), k0 = f_k(view0) (no grad,
   shuffle BN across processes); all L2-normalised, (B, dim) float32;
3. loss = (CE(q0, k1) + CE(q1, k0)) / 2, both terms against the SAME old queue. The terms are
   averaged, not summed: the loss keeps the scale of one InfoNCE term (ln(1 + K) at chance,
   comparable with one-sided MoCo logs), and a sum would double the gradient, i.e. the effective
   SGD learning rate and weight-decay balance of the spec's settings. Logits and the loss are
   computed in float32 with autocast disabled (dot products with up to 65536 keys / 0.1);
4. enqueue the gathered k1 (global batch), then the gathered k0: the pointer advances by
   2 x global batch per step.

Queue-length rule: ``queue_size % global_batch_size == 0`` (checked at construction, the MoCo v2
rule the spec states). Each enqueue writes one global batch, so every write starts at a multiple
of the global batch and no write is split by the wrap-around; ``queue_size`` need not be a
multiple of 2 x global batch. (The enqueue uses modular indices anyway, so a short last batch
would still be written correctly.)

``legacy_enqueue=True`` reproduces the released FAME code's order: term 1, enqueue k1, term 2,
enqueue k0, so the second term's negatives contain k1, a near-duplicate of q1's own view. It is
off by default and only there to reproduce old numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Collective = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def shuffle_indices(perm: torch.Tensor, *, rank: int, world_size: int) -> torch.Tensor:
    """Rows of the gathered batch this rank encodes after the shuffle.

    perm: int64 (N,), a permutation of the N = world_size * B gathered rows, identical on every
    rank (rank 0's, broadcast). Rank r takes ``perm[r*B:(r+1)*B]``. Returns int64 (B,).
    """
    n = perm.numel()
    if n % world_size != 0:
        raise ValueError(
            f"shuffle BN: gathered batch {n} is not divisible by world size {world_size}"
        )
    return perm.view(world_size, n // world_size)[rank]


def unshuffle_indices(perm: torch.Tensor, *, rank: int, world_size: int) -> torch.Tensor:
    """Rows of the gathered, still shuffled, outputs that are this rank's own samples, in order.

    After the shuffle, gathered output row j belongs to input row ``perm[j]``; the inverse
    permutation ``argsort(perm)`` maps each input row back to its output row. Rank r's own inputs
    are rows r*B..(r+1)*B-1. Returns int64 (B,).
    """
    inv = torch.argsort(perm)
    n = perm.numel()
    if n % world_size != 0:
        raise ValueError(
            f"shuffle BN: gathered batch {n} is not divisible by world size {world_size}"
        )
    return inv.view(world_size, n // world_size)[rank]


class _Encoder(nn.Module):
    """backbone -> projection head -> L2 normalisation. x (B,3,T,H,W) -> float32 (B, dim)."""

    def __init__(self, backbone: nn.Module, *, dim: int, mlp: bool) -> None:
        super().__init__()
        feat = backbone.feature_dim
        self.backbone = backbone
        if mlp:
            self.head = nn.Sequential(
                nn.Linear(feat, feat), nn.ReLU(inplace=True), nn.Linear(feat, dim)
            )
        else:
            self.head = nn.Linear(feat, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: under autocast the head may run in bf16/fp16, and the dot products
        # against a 65536-key queue divided by T = 0.1 need the precision.
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)


class MoCo(nn.Module):
    """MoCo v2 with a symmetric loss.

    Args:
        backbone: an ``nn.Module`` with an integer ``feature_dim`` mapping (B, 3, T, H, W) to
            (B, feature_dim), or a zero-argument callable returning one. The key encoder is a
            deep copy, so both encoders start identical.
        dim: width of the projection (and of the queued keys), 128.
        queue_size: K, the number of queued negatives (65536 for Kinetics-400, 2048 for UCF101).
        momentum: m of the key encoder update; the trainer may overwrite ``self.momentum`` per step
            or pass ``momentum=`` to :meth:`forward`.
        temperature: tau, 0.1.
        global_batch_size: the batch summed over all processes (the spec's "total batch").
        mlp: 2-layer MLP head (feat -> feat -> ReLU -> dim); False: one linear layer (MoCo v1).
        shuffle_bn: shuffle the key batch across processes before the key encoder (MoCo's
            shuffle BN). A no-op in one process: BN statistics do not depend on row order.
        gather: all-gather concatenating along dim 0 (``accelerator.gather``); identity if None.
        legacy_enqueue: reproduce the released code's enqueue-between-terms defect (see module doc).
        generator: optional ``torch.Generator`` for the random initial queue.

    Buffers (in ``state_dict``, so checkpoints carry them): ``queue`` float32 (dim, K) with
    L2-normalised columns, ``queue_ptr`` int64 (1,) the next column to write. The pointer the
    step reads is :attr:`_ptr`, a plain Python int beside the buffer (reading a CUDA buffer with
    ``.item()`` would make the host wait for the GPU every step); every enqueue also writes it into
    ``queue_ptr`` (``fill_`` with a host scalar: a launch, no synchronisation), so the state_dict
    always holds it, and loading a state_dict sets :attr:`_ptr` back from the buffer.

    DDP: ``queue`` and ``queue_ptr`` are excluded from DDP's buffer broadcast
    (``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``): every rank writes
    the same gathered keys at the same pointer, so the replicas' queues stay equal without
    re-sending the (dim, K) queue from rank 0 before each forward (32 MB at K = 65536); the
    BatchNorm buffers are still broadcast from rank 0, as MoCo's own DDP setup does.
    Submodules: ``encoder_q`` (trained), ``encoder_k`` (``requires_grad=False``), each with
    ``.backbone`` and ``.head``; :attr:`backbone` is the query backbone for evaluation.
    """

    def __init__(
        self,
        backbone: nn.Module | Callable[[], nn.Module],
        *,
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.1,
        global_batch_size: int,
        mlp: bool = True,
        shuffle_bn: bool = True,
        gather: Collective | None = None,
        legacy_enqueue: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if global_batch_size <= 0 or queue_size <= 0:
            raise ValueError(
                f"MoCo: queue_size ({queue_size}) and global_batch_size ({global_batch_size}) "
                "must be positive"
            )
        if queue_size % global_batch_size != 0:
            raise ValueError(
                f"MoCo: queue_size ({queue_size}) must be a multiple of the global batch size "
                f"({global_batch_size}) (settings moco.queue_size and train.batch_size)"
            )
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MoCo: momentum must be in [0, 1], got {momentum}")
        if temperature <= 0.0:
            raise ValueError(f"MoCo: temperature must be > 0, got {temperature}")
        if not isinstance(backbone, nn.Module):
            backbone = backbone()
        if not isinstance(getattr(backbone, "feature_dim", None), int):
            raise TypeError("MoCo: the backbone must have an integer attribute feature_dim")

        self.dim = dim
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.global_batch_size = global_batch_size
        self.shuffle_bn = shuffle_bn
        self.legacy_enqueue = legacy_enqueue

        self.encoder_q = _Encoder(backbone, dim=dim, mlp=mlp)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)

        queue = torch.randn(dim, queue_size, generator=generator)
        self.register_buffer("queue", F.normalize(queue, dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._ptr = 0
        # Names relative to this module, which is what Accelerate hands to DDP. The initial
        # queue is drawn from the caller's seeded generator, identical on every rank.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, ["queue", "queue_ptr"]
        )

        # Process-group view, injected by the trainer; one process by default.
        self.rank = 0
        self.world_size = 1
        self._gather: Collective = gather if gather is not None else _identity
        self._broadcast: Collective = _identity

    @property
    def backbone(self) -> nn.Module:
        """The query encoder's backbone (what downstream evaluations load)."""
        return self.encoder_q.backbone

    def set_distributed(
        self,
        *,
        rank: int,
        world_size: int,
        gather: Collective | None = None,
        broadcast: Collective | None = None,
    ) -> None:
        """Tell the module its place in the process group and how to communicate.

        gather(t): all-gather concatenating along dim 0, e.g. ``accelerator.gather``.
        broadcast(t): returns rank 0's ``t`` on every rank, e.g. ``accelerate.utils.broadcast``
        (called with one positional argument, so its default source rank 0 applies).
        Call on the unwrapped module (``accelerator.unwrap_model(model)``).
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"MoCo.set_distributed: bad rank {rank} for world_size {world_size}")
        if world_size > 1 and (gather is None or (self.shuffle_bn and broadcast is None)):
            raise ValueError(
                "MoCo.set_distributed: world_size > 1 needs gather (and broadcast for shuffle_bn)"
            )
        self.rank = rank
        self.world_size = world_size
        self._gather = gather if gather is not None else _identity
        self._broadcast = broadcast if broadcast is not None else _identity

    @torch.no_grad()
    def momentum_update(self, momentum: float | None = None) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter (buffers untouched,
        as in MoCo: the key encoder keeps its own BatchNorm running statistics)."""
        m = self.momentum if momentum is None else momentum
        # Two multi-tensor launches for the whole encoder instead of two per parameter; the same
        # per-element arithmetic as ``p_k.mul_(m).add_(p_q, alpha=1 - m)``.
        k_params = list(self.encoder_k.parameters())
        q_params = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - m)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Once per load (a resume), not per step: the host pointer follows the loaded buffer.
        self._ptr = int(self.queue_ptr[0])

    @torch.no_grad()
    def _encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) -> local keys float32 (B, dim), with shuffle BN across processes."""
        if not (self.shuffle_bn and self.world_size > 1):
            return self.encoder_k(x)
        x_all = self._gather(x.contiguous())
        # Every rank draws (keeps RNG streams in step); rank 0's permutation wins.
        perm = self._broadcast(torch.randperm(x_all.shape[0], device=x.device))
        k = self.encoder_k(x_all[shuffle_indices(perm, rank=self.rank, world_size=self.world_size)])
        k_all = self._gather(k.contiguous())
        return k_all[unshuffle_indices(perm, rank=self.rank, world_size=self.world_size)]

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write local keys (B, dim) of every process (gathered: (global B, dim)) at queue_ptr."""
        keys = self._gather(keys.contiguous())
        n = keys.shape[0]
        if n > self.queue_size:
            raise ValueError(f"MoCo: {n} gathered keys do not fit a queue of {self.queue_size}")
        ptr = self._ptr
        keys = keys.t().to(self.queue.dtype)
        end = ptr + n
        # Python slices from the host pointer: no index tensor, no device read.
        if end <= self.queue_size:
            self.queue[:, ptr:end] = keys
        else:  # a wrap-around (only a short last batch can split; see the module doc)
            first = self.queue_size - ptr
            self.queue[:, ptr:] = keys[:, :first]
            self.queue[:, : end - self.queue_size] = keys[:, first:]
        self._ptr = end % self.queue_size
        self.queue_ptr.fill_(self._ptr)

    def _contrast(
        self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE. q, k float32 (B, dim); queue (dim, K) -> (loss scalar, logits (B, 1+K)).

        Column 0 of the logits is the positive; the labels are all zero."""
        # Autocast would run the matmul in bf16/fp16: keep the contrastive logits in float32.
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = q.float(), k.float()
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ queue.detach().float()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, labels), logits

    def forward(
        self, view0: torch.Tensor, view1: torch.Tensor, *, momentum: float | None = None
    ) -> dict[str, torch.Tensor]:
        """One MoCo step on two views of the same B local videos.

        Args:
            view0, view1: float (B, 3, T, H, W), normalised clips; row i of both is video i.
            momentum: overrides ``self.momentum`` for this step's key-encoder update.
        Returns a dict of tensors:
            loss: float32 scalar, (CE(q0,k1) + CE(q1,k0)) / 2 (differentiable);
            loss_terms: float32 (2,), the two CE terms (detached);
            acc1: float32 scalar, top-1 accuracy of the contrastive task in percent (positive =
                column 0 ranked first), averaged over both terms (detached);
            logits0, logits1: float32 (B, 1+K) of each term, already divided by the temperature
                (label 0 is the positive; detached);
            q0, q1: float32 (B, dim) queries (with grad); k0, k1: float32 (B, dim) local keys.
        """
        if view0.shape != view1.shape:
            raise ValueError(
                f"MoCo: views differ in shape {tuple(view0.shape)} vs {tuple(view1.shape)}"
            )
        self.momentum_update(momentum)

        q0 = self.encoder_q(view0)
        q1 = self.encoder_q(view1)
        k1 = self._encode_keys(view1)
        k0 = self._encode_keys(view0)

        if self.legacy_enqueue:
            loss0, logits0 = self._contrast(q0, k1, self.queue.clone())
            self._enqueue(k1)
            loss1, logits1 = self._contrast(q1, k0, self.queue.clone())
            self._enqueue(k0)
        else:
            # The clone keeps autograd's saved queue intact when the in-place enqueue follows.
            queue = self.queue.clone()
            loss0, logits0 = self._contrast(q0, k1, queue)
            loss1, logits1 = self._contrast(q1, k0, queue)
            self._enqueue(k1)
            self._enqueue(k0)

        with torch.no_grad():
            acc1 = (
                torch.stack(
                    [(lg.argmax(dim=1) == 0).float().mean() for lg in (logits0, logits1)]
                ).mean()
                * 100.0
            )
        return {
            "loss": (loss0 + loss1) / 2,
            "loss_terms": torch.stack([loss0, loss1]).detach(),
            "acc1": acc1,
            "logits0": logits0.detach(),
            "logits1": logits1.detach(),
            "q0": q0,
            "q1": q1,
            "k0": k0,
            "k1": k1,
        }

"""The one training loop: pretraining, finetuning and the linear probe run their steps here.

The shape of timm's ``train_one_epoch`` and nanoGPT's loop. A script builds the model, the data
and the optimiser and a *step function* (one batch -> loss and metrics: the forward pass and
whatever comes before it); :func:`train` runs the epochs: the learning rate of every step
(:mod:`dali_fame.engine.schedule`), backward / clip / optimiser step, the throughput timer, the
progress bar (main process), TensorBoard / ``metrics.jsonl`` / ``summary.csv`` and the
checkpoints (:mod:`dali_fame.engine.checkpoint`), an optional end-of-epoch hook (finetune's test
pass); it returns why it stopped and the last epoch's averaged metrics.

Every decision that ends or pauses the loop is **agreed across ranks**, so no rank is ever left
waiting in a collective that another rank will not join:

* before each forward pass, one tiny collective (:func:`agree`: an int64 vector per rank,
  gathered over a gloo group on host tensors, so it never waits for the GPU; the identity in
  one process) combines this rank's pre-emption flag (SIGTERM /
  SIGUSR1, :mod:`dali_fame.engine.preemption`), whether its loader failed (a
  :class:`~dali_fame.data.ledger.NoHealthyVideoError`, or fewer batches than ``len(loader)``),
  its step and its ``len(loader)``. A signal to any one process makes every rank save the same
  checkpoint and return ``"preempted"`` (exit 0); a loader failure on any rank makes every rank
  stop with the same message (``"data_error"``, exit non-zero); ranks that disagree on the step
  or the epoch length stop at once rather than deadlock later;
* the non-finite-loss check does not read the GPU every step: each step folds
  ``isfinite(loss)`` into a device scalar (the first bad step, -1 while none), and the flag is
  read, agreed across ranks with one gather, only where every rank is anyway and before anything
  that would make a bad update permanent: at the logging interval, before every checkpoint,
  before the end-of-epoch hook and at the end (``"non_finite"``). Reading it per step would stall
  the host until the GPU drained, every step. The price, deliberate: updates after the bad step
  may have been applied *in memory* (up to ``log_every`` steps) but none is ever saved; the run
  stops, the message names the first bad step, ``LoopResult.state.step`` is that step (the good
  steps done) and the last good checkpoint is what remains;
* the step budget (``train.epochs`` x ``len(loader)``, capped by ``train.max_steps``) is a pure
  function of the config and the agreed step, hence identical on every rank.

The loaders yield exactly ``len(loader)`` full batches per epoch (a failed video is replaced,
see :mod:`dali_fame.data.ledger`), so the loop never pads a batch.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from dali_fame.config import OptimConfig, TrainConfig
from dali_fame.data.ledger import NoHealthyVideoError
from dali_fame.engine.checkpoint import (
    TrainerState,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from dali_fame.engine.monitor import MetricsLog, StepTimer, SummaryCSV
from dali_fame.engine.preemption import PreemptionFlag
from dali_fame.engine.schedule import set_lr

logger = logging.getLogger(__name__)

#: why :func:`train` returned; the first two end a run cleanly (exit 0)
STOPS = ("done", "preempted", "non_finite", "data_error")
#: the loader's per-epoch ledger counts written to summary.csv (summed over ranks)
LEDGER_COUNTS = ("visited", "delivered", "replaced")


@dataclasses.dataclass
class StepOutput:
    """What a step function returns for one batch.

    Attributes:
        loss: float scalar tensor (0-dim) with its graph; the engine calls backward on it.
        metrics: floats or detached 0-dim tensors to log and average over the epoch (e.g.
            ``{"acc1": 37.5}``, top-1 in percent), logged as ``train/<name>``. Tensors stay on
            their device and are read only at the logging interval (no per-step host sync).
    """

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LoopResult:
    """How :func:`train` ended; identical on every rank except :attr:`metrics`.

    Attributes:
        state: where training stands (what the last checkpoint holds, unless non-finite).
        stop: one of :data:`STOPS`.
        message: the stop in words, the same text on every rank (e.g. ``"received SIGTERM:
            checkpoint saved at step 12"``).
        metrics: this rank's means over the last (possibly partial) epoch: ``loss`` and each
            step metric; empty if no step ran.
        replaced: ``(path, reason)`` of every video a loader replaced on any rank, each path
            once, in order of first failure (rank 0's first).
    """

    state: TrainerState
    stop: str
    message: str
    metrics: dict[str, float]
    replaced: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        """True when the run ended cleanly (all steps done, or pre-empted and saved)."""
        return self.stop in ("done", "preempted")


def planned_steps(steps_per_epoch: int, train_cfg: TrainConfig) -> int:
    """The run's step budget: ``epochs * steps_per_epoch``, capped by ``max_steps`` if set."""
    total = steps_per_epoch * train_cfg.epochs
    return min(total, train_cfg.max_steps) if train_cfg.max_steps else total


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """All randomness of one step on one rank (FAME permutations, augmentations): a CPU
    generator seeded from (seed, global step, rank), so a resumed run replays the same draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


_HOST_GROUP: dict[str, object] = {}  # {"world": the default group, "group": its gloo twin}


def agreement_group():
    """The process group the per-step agreement runs on: host (CPU) tensors only.

    The default group itself when its backend is gloo (CPU runs); otherwise (NCCL) a gloo group
    over the same ranks, created once per process group, on first use. An NCCL gather of a
    device tensor followed by ``.cpu()`` waits for every kernel queued before it, so every step
    the host would stop running ahead of the GPU; a gloo collective on host tensors only waits
    for the other ranks' hosts. Collective: every rank must make its first call at the same
    point (:func:`train` calls it at its start). None when ``torch.distributed`` is not
    initialised (then :func:`agree` uses the accelerator's gather).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.group.WORLD
    if dist.get_backend() == "gloo":
        return world
    if _HOST_GROUP.get("world") is not world:
        _HOST_GROUP.update(world=world, group=dist.new_group(backend="gloo"))
    return _HOST_GROUP["group"]


def agree(accelerator, **flags: int) -> dict[str, torch.Tensor]:
    """Gather small integers from every rank: one collective, the identity in one process.

    Every rank must call it with the same keyword names in the same order. The exchange runs on
    host tensors (:func:`agreement_group`): it never waits for the GPU. Returns, per name, an
    int64 ``(world_size,)`` CPU tensor: entry r is rank r's value.
    """
    local = torch.tensor([[int(v) for v in flags.values()]], dtype=torch.int64)
    if accelerator.num_processes == 1:  # nothing to exchange: no device copy, no device read
        return {name: local[:, i] for i, name in enumerate(flags)}
    group = agreement_group()
    if group is None:  # a launcher without torch.distributed: its gather (may read the device)
        table = accelerator.gather(local.to(accelerator.device)).view(-1, len(flags)).cpu()
    else:
        import torch.distributed as dist

        rows = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, local, group=group)
        table = torch.cat(rows)
    return {name: table[:, i] for i, name in enumerate(flags)}


def agreed_error(accelerator, message: str | None) -> str | None:
    """Every rank calls this after work that may fail on some ranks only (a loader, a test
    pass): returns the same combined message on every rank if any rank passed one (naming the
    ranks), else None. Costs one collective, and a second only when something failed."""
    failed = agree(accelerator, failed=message is not None)["failed"]
    if not failed.any():
        return None
    if accelerator.num_processes == 1:
        return message
    texts = gather_object([message])
    return "; ".join(f"rank {r}: {t}" for r, t in enumerate(texts) if t is not None)


def restore(accelerator, *, resume: str | None, run_dir: str | Path) -> TrainerState:
    """The trainer state to start from: ``--resume`` (None | "auto" | a checkpoint dir) loaded
    into the prepared objects, or a fresh :class:`TrainerState`.

    Every rank makes the same choice (the main process verifies, the others follow). A resume
    request that names no usable checkpoint raises ``SystemExit`` with the reason.
    """
    try:
        path = resolve_resume(resume, run_dir, accelerator=accelerator)
        if path is None:
            return TrainerState()
        state, _ = load_checkpoint(accelerator, path)
    except ValueError as err:  # CheckpointError: damaged, missing or unloadable, in words
        raise SystemExit(str(err)) from None
    if accelerator.is_main_process:
        logger.info("resumed from %s: epoch %d, step %d", path, state.epoch, state.step)
    return state


def _next_batch(batches: Iterator, *, epoch: int, batch_in_epoch: int, expected: int):
    """(batch, None) or (None, what went wrong): a failing loader must not skip the collective."""
    try:
        return next(batches), None
    except StopIteration:
        return None, (f"the loader ended epoch {epoch} after {batch_in_epoch} of its {expected} "
                      f"batches (every rank must yield len(loader) batches)")
    except NoHealthyVideoError as err:
        return None, f"no healthy video left (epoch {epoch}): {err}"
    except Exception as err:  # any other loader failure: stop every rank, keep the traceback here
        logger.exception("the loader failed in epoch %d at batch %d", epoch, batch_in_epoch)
        return None, f"the loader failed in epoch {epoch} at batch {batch_in_epoch}: {type(err).__name__}: {err}"


class _EpochMeter:
    """Sums of the loss and the step metrics over one epoch (this rank)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, values: dict[str, float | torch.Tensor]) -> None:
        for name, value in values.items():  # device tensors are summed on the device
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {name: float(total) / self.steps for name, total in self.sums.items()} if self.steps else {}


def train(
    *,
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    step_fn: Callable[[dict, int], StepOutput],
    state: TrainerState,
    run_dir: str | Path,
    config: dict,
    train_cfg: TrainConfig,
    optim_cfg: OptimConfig,
    global_batch: int,
    desc: str = "train",
    end_of_epoch: Callable[..., dict] | None = None,
    epoch_columns: tuple[str, ...] = (),
) -> LoopResult:
    """Run training from ``state`` until the step budget is spent or an agreed stop.

    Call on every process, with the model and optimiser already through ``accelerator.prepare``
    and ``state`` from :func:`restore`.

    Args:
        loader: this rank's training loader: ``__len__`` (batches per epoch, equal on every
            rank), ``set_epoch(epoch, start_batch=k)`` (the epoch's batches from the k-th on,
            the earlier ones not decoded), iteration yielding the batches (dicts of tensors,
            e.g. ``views`` uint8 (B, V, T, H, W, 3)), and ``stats`` (this epoch's ledger counts)
            plus ``failures`` (see :mod:`dali_fame.data.ledger`).
        step_fn: ``step_fn(batch, step) -> StepOutput``: the forward pass of one batch
            (autocast included where wanted); ``step`` is the 0-based global step, so every
            random draw can be a function of it (exact resume).
        state: updated in place: ``step`` after each optimiser step, ``epoch`` /
            ``batch_in_epoch`` as epochs run.
        run_dir: ``checkpoints/``, ``metrics.jsonl`` and ``summary.csv`` go here.
        config: the resolved config, stored in every checkpoint.
        train_cfg: epochs, max_steps, log_every, checkpoint_every_steps, keep_checkpoints.
        optim_cfg: the LR schedule (set by hand every step) and ``clip_grad``.
        global_batch: clips per optimiser step over all ranks (for clips/s).
        desc: the progress bar's label.
        end_of_epoch: called on every rank after each completed epoch as
            ``end_of_epoch(state, last=...)`` (``last``: the step budget is spent); returns
            values for ``epoch_columns`` (missing ones are left empty). Skipped when a
            pre-emption is agreed at the epoch's end.
        epoch_columns: extra summary.csv columns, written last.

    Returns:
        :class:`LoopResult`. Checkpoints: every ``checkpoint_every_steps``, at each epoch's end,
        at a pre-emption and when ``max_steps`` ends a run mid-epoch; never after a non-finite
        loss.
    """
    run_dir = Path(run_dir)
    is_main = accelerator.is_main_process
    if accelerator.num_processes > 1:
        agreement_group()  # collective: created here, at the same point on every rank
    steps_per_epoch = len(loader)
    total_steps = planned_steps(steps_per_epoch, train_cfg)
    summary = SummaryCSV(run_dir / "summary.csv") if is_main else None
    metrics_log = MetricsLog(run_dir / "metrics.jsonl") if is_main else None
    timer = StepTimer()
    bar = tqdm(total=total_steps, initial=min(state.step, total_steps), disable=not is_main, desc=desc,
               dynamic_ncols=True)
    saved_at = -1

    first_bad = None  # device int64 scalar: the first step with a non-finite loss on this rank, -1 if none

    def non_finite() -> str | None:
        """Read the folded flag, agreed over ranks (one gather); rolls ``state`` back to the
        first bad step. Every rank calls it at the same points."""
        local = -1 if first_bad is None else int(first_bad)
        steps = agree(accelerator, first_bad=local)["first_bad"]
        if not (steps >= 0).any():
            return None
        bad_step = int(steps[steps >= 0].min())
        ranks = ", ".join(str(r) for r in torch.nonzero(steps == bad_step).flatten().tolist())
        # read at least at every epoch's last step, so the bad step is in the current epoch
        state.batch_in_epoch -= state.step - bad_step
        state.step = bad_step
        return (f"non-finite loss at step {bad_step} (epoch {state.epoch}, rank {ranks}); "
                f"the last good checkpoint is kept")

    def checkpoint() -> None:
        nonlocal saved_at
        if saved_at != state.step:  # an epoch end can coincide with checkpoint_every_steps
            save_checkpoint(accelerator, run_dir, state, config=config, keep=train_cfg.keep_checkpoints)
            saved_at = state.step

    def epoch_row(meter: _EpochMeter, epoch: int, extra: dict) -> None:
        # the ledger counts of every rank (one collective per epoch, all ranks are here)
        stats = getattr(loader, "stats", None) or {}
        counts = agree(accelerator, **{k: stats.get(k, 0) for k in LEDGER_COUNTS})
        if summary is None or not meter.steps:
            return
        row = {"epoch": epoch, "step": state.step, **meter.means(),
               "seconds": round(time.perf_counter() - meter.start, 2),
               **{k: int(v.sum()) for k, v in counts.items()}}
        summary.append({**row, **{c: extra.get(c, "") for c in epoch_columns}})

    stop, message = "done", f"{total_steps} steps"
    meter = _EpochMeter()
    model.train()
    with PreemptionFlag() as preempt:
        while state.step < total_steps and stop == "done":
            loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
            batches = iter(loader)
            meter = _EpochMeter()
            while state.batch_in_epoch < steps_per_epoch and state.step < total_steps:
                batch, data_error = _next_batch(batches, epoch=state.epoch, batch_in_epoch=state.batch_in_epoch,
                                                expected=steps_per_epoch)
                timer.data_ready()
                votes = agree(accelerator, preempt=preempt.signum, data_error=data_error is not None,
                              step=state.step, steps_per_epoch=steps_per_epoch)
                if (votes["step"] != state.step).any() or (votes["steps_per_epoch"] != steps_per_epoch).any():
                    stop = "data_error"
                    message = (f"ranks disagree on the step {votes['step'].tolist()} or the loader length "
                               f"{votes['steps_per_epoch'].tolist()}: every rank must yield len(loader) batches")
                    break
                if votes["preempt"].any():
                    # before a loader failure: a job-wide SIGTERM also kills DataLoader workers,
                    # and the state is still that of the last whole step, so saving is sound
                    # (once the steps since the last read are known to be finite)
                    message = non_finite()
                    if message is not None:
                        stop = "non_finite"
                        break
                    checkpoint()
                    stop, message = "preempted", _preempt_message(votes["preempt"], state.step)
                    break
                if votes["data_error"].any():
                    stop, message = "data_error", agreed_error(accelerator, data_error)
                    break

                lr = set_lr(optimizer, optim_cfg, state.step, steps_per_epoch=steps_per_epoch,
                            epochs=train_cfg.epochs)
                out = step_fn(batch, state.step)
                loss = out.loss.detach()
                bad_now = ~torch.isfinite(loss)
                if first_bad is None:
                    first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
                # device-side: keep the first bad step (no host read here, see the module doc)
                first_bad = torch.where(bad_now & (first_bad < 0), state.step, first_bad)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(out.loss)
                if optim_cfg.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), optim_cfg.clip_grad)
                optimizer.step()
                timer.step_done(global_batch)
                state.step += 1
                state.batch_in_epoch += 1
                values = {"loss": loss, **out.metrics}
                meter.add(values)
                bar.update(1)

                at_log = state.step % train_cfg.log_every == 0 or state.step == total_steps
                at_ckpt = bool(train_cfg.checkpoint_every_steps) and state.step % train_cfg.checkpoint_every_steps == 0
                at_epoch_end = state.batch_in_epoch >= steps_per_epoch
                if at_log or at_ckpt or at_epoch_end:  # the same steps on every rank
                    message = non_finite()
                    if message is not None:
                        stop = "non_finite"
                        break
                if at_log:
                    values = {k: float(v) for k, v in values.items()}  # the interval's one device read
                    speed = timer.snapshot()
                    logged = {f"train/{k}": v for k, v in values.items()}
                    logged.update({"train/lr": lr, "train/clips_per_s": speed["clips_per_s"],
                                   "train/data_wait_frac": speed["data_wait_frac"]})
                    accelerator.log(logged, step=state.step)
                    if metrics_log is not None:
                        metrics_log.append(state.step, {**logged, "epoch": state.epoch})
                    bar.set_postfix(**{k: f"{v:.3g}" for k, v in values.items()}, lr=f"{lr:.3g}",
                                    clips_s=f"{speed['clips_per_s']:.1f}", wait=f"{speed['data_wait_frac']:.0%}")
                if train_cfg.checkpoint_every_steps and state.step % train_cfg.checkpoint_every_steps == 0:
                    checkpoint()
            del batches  # let the loader's workers / prefetch go before the hook or the next epoch

            if stop != "done" or state.batch_in_epoch < steps_per_epoch:
                # stopped mid-epoch (an agreed stop, or max_steps): a partial row for this epoch
                epoch_row(meter, state.epoch, {})
                if stop == "done":
                    checkpoint()  # max_steps: the run's end is a resumable point
                break
            epoch_done = state.epoch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            last = state.step >= total_steps
            extra = {}
            # a signal during the epoch's last step: save now rather than after a long test pass
            # (not after the last epoch: the run is complete, and its final steps follow)
            votes = agree(accelerator, preempt=preempt.signum)
            preempted = bool(votes["preempt"].any()) and not last
            if end_of_epoch is not None and not preempted:
                extra = end_of_epoch(state, last=last) or {}
            epoch_row(meter, epoch_done, extra)
            checkpoint()
            if preempted:
                stop, message = "preempted", _preempt_message(votes["preempt"], state.step)
    bar.close()

    seen, replaced = set(), []
    failures = getattr(loader, "failures", [])  # this rank's FailedVideo records, all epochs
    for path, reason in gather_object([(str(f.path), str(f.reason)) for f in failures]):
        if path not in seen:
            seen.add(path)
            replaced.append((path, reason))
    if stop == "done":
        message = f"{state.step} steps, {state.epoch} epochs"
    return LoopResult(state=state, stop=stop, message=message, metrics=meter.means(), replaced=replaced)


def _preempt_message(signals: torch.Tensor, step: int) -> str:
    """``signals``: int64 (world_size,) each rank's signal number, 0 where none arrived."""
    ranks = torch.nonzero(signals).flatten().tolist()
    names = sorted({signal.Signals(int(signals[r])).name for r in ranks})
    return (f"received {'/'.join(names)}: checkpoint saved at step {step} "
            f"(signalled: rank {', '.join(map(str, ranks))})")


def report_replaced(replaced: list[tuple[str, str]], *, limit: int = 50) -> list[str]:
    """Lines for the end-of-run summary naming the videos a loader replaced."""
    if not replaced:
        return []
    lines = [f"  replaced      : {len(replaced)} unreadable video(s), each replaced by another of its shard:"]
    lines += [f"    {path}: {reason}" for path, reason in replaced[:limit]]
    if len(replaced) > limit:
        lines.append(f"    ... and {len(replaced) - limit} more (each is named in the log above)")
    return lines

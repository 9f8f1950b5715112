"""dali_fame.engine.loop.train in one process, with a toy model and a scripted loader: each way
a run can end (done, max_steps + resume, pre-emption, loader failure, short loader, non-finite
loss) and what it leaves behind (metrics.jsonl, summary.csv, checkpoints)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from dali_fame.config import OptimConfig, TrainConfig
from dali_fame.data.ledger import FailedVideo, NoHealthyVideoError
from dali_fame.engine.checkpoint import TrainerState, list_checkpoints
from dali_fame.engine.loop import StepOutput, restore, train

BATCHES = 3  # per epoch


class ScriptedLoader:
    """``BATCHES`` batches of ``x`` float32 (2, 4) per epoch; ``fail`` maps (epoch, batch) to
    an exception raised instead of that batch; ``short`` ends every epoch after that many."""

    def __init__(self, *, fail: dict | None = None, short: int | None = None) -> None:
        self.fail, self.short = fail or {}, short
        self.calls: list[tuple[int, int]] = []
        self.epoch = self.start = 0
        self.stats = {"visited": 0, "delivered": 0, "replaced": 0}
        self.failures = [FailedVideo(index=5, path="/data/bad.mp4", reason="moov atom not found", epoch=0)]

    def __len__(self) -> int:
        return BATCHES

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.calls.append((epoch, start_batch))
        self.epoch, self.start = epoch, start_batch

    def __iter__(self):
        self.stats = {"visited": 0, "delivered": 0, "replaced": 0}
        for b in range(self.start, self.short if self.short is not None else BATCHES):
            if (self.epoch, b) in self.fail:
                raise self.fail[(self.epoch, b)]
            self.stats = {k: v + (2 if k == "visited" else 1) for k, v in self.stats.items()}
            gen = torch.Generator().manual_seed(self.epoch * 100 + b)
            yield {"x": torch.randn(2, 4, generator=gen)}


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _run(accelerator, run_dir, loader, *, epochs=2, max_steps=None, resume=None, step_fn=None, hook=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = restore(accelerator, resume=resume, run_dir=run_dir) if resume else TrainerState()

    def step(batch, step):
        return StepOutput(loss=model(batch["x"]).pow(2).mean(), metrics={"acc1": float(step)})

    return train(accelerator=accelerator, model=model, optimizer=optimizer, loader=loader,
                 step_fn=(lambda b, s: step_fn(model, b, s)) if step_fn else step, state=state,
                 run_dir=run_dir, config={"name": "toy"},
                 train_cfg=TrainConfig(epochs=epochs, max_steps=max_steps, log_every=1, keep_checkpoints=5),
                 optim_cfg=OptimConfig(lr=0.1, schedule="cosine"), global_batch=2,
                 end_of_epoch=hook, epoch_columns=("test_top1",) if hook else ())


def _steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ckpt_steps(run_dir) -> list[int]:
    return [int(p.name.split("_")[1]) for p in list_checkpoints(run_dir)]


def test_a_whole_run_logs_every_step_and_one_row_per_epoch(accelerator, tmp_path):
    seen = []

    def hook(state, *, last):
        seen.append((state.epoch, last))
        return {"test_top1": 50.0}

    result = _run(accelerator, tmp_path, ScriptedLoader(), hook=hook)
    assert result.ok and result.stop == "done" and result.message == "6 steps, 2 epochs"
    assert result.state == TrainerState(epoch=2, batch_in_epoch=0, step=6)
    assert result.metrics["acc1"] == pytest.approx((3 + 4 + 5) / 3)  # the last epoch's mean
    assert result.replaced == [("/data/bad.mp4", "moov atom not found")]
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert seen == [(1, False), (2, True)]
    with open(tmp_path / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "step", "loss", "acc1", "seconds", "visited", "delivered", "replaced",
                             "test_top1"]
    assert [(r["epoch"], r["step"], r["visited"], r["delivered"]) for r in rows] == [("0", "3", "6", "3"),
                                                                                     ("1", "6", "6", "3")]
    assert _ckpt_steps(tmp_path) == [3, 6]


def test_max_steps_mid_epoch_saves_and_resume_starts_at_the_next_batch(accelerator, tmp_path):
    first = _run(accelerator, tmp_path, ScriptedLoader(), max_steps=4)
    assert first.stop == "done" and first.state == TrainerState(epoch=1, batch_in_epoch=1, step=4)
    assert _ckpt_steps(tmp_path) == [3, 4]
    from accelerate import Accelerator

    loader = ScriptedLoader()
    second = _run(Accelerator(cpu=True), tmp_path, loader, resume="auto")  # a new process's objects
    assert loader.calls == [(1, 1)]  # the done batch is not loaded again
    assert second.state.step == 6 and _steps(tmp_path) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("loader", [
    ScriptedLoader(),
    # a job-wide SIGTERM also kills DataLoader workers: the signal wins over the loader's error
    ScriptedLoader(fail={(0, 2): RuntimeError("DataLoader worker (pid 1234) is killed by signal: Terminated")}),
], ids=["clean", "loader-killed-too"])
def test_a_signal_stops_at_the_next_step_with_a_checkpoint(accelerator, tmp_path, loader):
    def step_fn(model, batch, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return StepOutput(loss=model(batch["x"]).pow(2).mean())

    result = _run(accelerator, tmp_path, loader, step_fn=step_fn)
    assert result.ok and result.stop == "preempted"
    assert result.message == "received SIGUSR1: checkpoint saved at step 2 (signalled: rank 0)"
    assert result.state == TrainerState(epoch=0, batch_in_epoch=2, step=2)
    assert _ckpt_steps(tmp_path) == [2]


@pytest.mark.parametrize("loader, expected", [
    (ScriptedLoader(fail={(1, 1): NoHealthyVideoError("6 of its 6 videos failed")}),
     "no healthy video left (epoch 1): 6 of its 6 videos failed"),
    (ScriptedLoader(short=2), "the loader ended epoch 0 after 2 of its 3 batches"),
    (ScriptedLoader(fail={(0, 0): OSError("disk gone")}), "the loader failed in epoch 0 at batch 0: OSError: disk gone"),
])
def test_a_loader_failure_stops_with_its_reason(accelerator, tmp_path, loader, expected):
    result = _run(accelerator, tmp_path, loader)
    assert not result.ok and result.stop == "data_error"
    assert result.message.startswith(expected), result.message


def test_a_non_finite_loss_stops_before_its_update(accelerator, tmp_path):
    def step_fn(model, batch, step):
        loss = model(batch["x"]).pow(2).mean()
        return StepOutput(loss=loss * math.nan if step == 4 else loss)

    result = _run(accelerator, tmp_path, ScriptedLoader(), step_fn=step_fn)
    assert result.stop == "non_finite" and not result.ok
    assert result.message.startswith("non-finite loss at step 4 (epoch 1, rank 0)")
    assert result.state.step == 4 and _ckpt_steps(tmp_path) == [3]


class _HostOnlyAccelerator:
    """Two processes on the CPU whose device gather must not be used by :func:`agree`."""

    num_processes = 2
    device = torch.device("cpu")

    def gather(self, tensor):
        raise AssertionError("agree() used the accelerator's device gather")


def _agree_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from dali_fame.engine import loop

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = {}
        for backend in ("gloo", "nccl"):
            if backend == "nccl":  # a GPU job's default backend: agree() builds a gloo twin
                dist.get_backend = lambda group=None: "nccl"
            rows = []
            for step in range(3):  # per-step votes, as the loop casts them
                votes = loop.agree(_HostOnlyAccelerator(), preempt=15 if (rank, step) == (1, 2) else 0,
                                   data_error=False, step=step)
                rows.append({k: v.tolist() for k, v in votes.items()})
            group = loop.agreement_group()
            result[backend] = {"rows": rows, "own_group": group is not dist.group.WORLD}
        (Path(out_dir) / f"{rank}.json").write_text(json.dumps(result))
        # Both ranks done with every group before either tears it down: a gloo pair whose peer
        # has already gone aborts ("terminate called without an active exception"), seen under load.
        dist.barrier(group=loop.agreement_group())
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_agree_in_two_processes_runs_on_host_tensors_and_agrees(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_agree_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # the same decisions on every rank
    for backend, own_group in (("gloo", False), ("nccl", True)):
        rows = results[0][backend]["rows"]
        assert rows[2] == {"preempt": [0, 15], "data_error": [0, 0], "step": [2, 2]}
        assert rows[0]["preempt"] == [0, 0] and rows[1]["step"] == [1, 1]
        assert results[0][backend]["own_group"] is own_group  # gloo: the default group itself

"""Training jobs: one per (setting, mixer, seed, grid point), run in a pool of worker processes.

Jobs are independent, so they run in ``workers`` processes with ``threads_per_worker`` torch
threads each (on a small CPU box two 1-thread workers do much more than one 2-thread process on
these tiny models), the longest first so that the pool ends together.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from ..models import ModelConfig
from ..registry import get_mixer
from ..tasks import build_task
from ..train import TrainConfig, Trainer, TrainingError
from .settings import TaskPlan
from .suite import Suite

# rough relative cost of a training step per registered mixer (the quadratic Hyper mixers are
# dearer; a variant name costs what its registered mixer does); only the order jobs start in
# depends on it
STEP_COST = {"softmax": 1.0, "relu": 1.3, "hypermlp": 1.8, "hyperglu": 2.4}
UNKNOWN_STEP_COST = 2.0
CURVE_POINTS = 400  # the loss curve kept per run is thinned to about this many points


@dataclass(frozen=True)
class Job:
    """Everything one training run needs (picklable: it travels to a worker process)."""

    id: int
    label: str  # the task entry's label
    task: str
    data: Dict[str, Any]
    setting: int  # index of the data setting within the task entry
    mixer: str  # the suite's mixer name
    seed: int
    model: Dict[str, Any]  # the matched ModelConfig as a dict
    train: Dict[str, Any]  # the TrainConfig as a dict, grid point and seed filled in
    cache_dir: str
    seq_len: int
    threads: int
    cost: float  # estimated work, to start the longest first


@dataclass(frozen=True)
class JobResult:
    """What one training run gave: its final metrics and a thinned training-loss curve."""

    id: int
    label: str
    setting: int
    mixer: str
    seed: int
    lr: float
    weight_decay: float
    final: Dict[str, float]  # the last evaluation's metrics; empty when the run diverged
    evals: List[dict]
    steps: int
    stopped_early: bool
    train_loss: List[Any] = field(default_factory=list)  # [step, loss] pairs
    wall_s: float = 0.0
    error: Optional[str] = None  # why training failed (a diverged grid point is a result)

    def to_dict(self) -> dict:
        """As written to results.json (``error`` only when there is one)."""
        d = {"id": self.id, "label": self.label, "setting": self.setting, "mixer": self.mixer, "seed": self.seed,
             "lr": self.lr, "weight_decay": self.weight_decay, "final": self.final, "evals": self.evals,
             "steps": self.steps, "stopped_early": self.stopped_early, "train_loss": self.train_loss}
        if self.error is not None:
            d["error"] = self.error
        d["wall_s"] = self.wall_s
        return d


def expand_jobs(suite: Suite, plans: List[TaskPlan]) -> List[Job]:
    """One job per setting x mixer x seed x learning rate x weight decay, in that order."""
    jobs = []
    for plan in plans:
        entry = plan.entry
        for s in plan.settings:
            for mixer, seed, lr, wd in itertools.product(suite.mixers, suite.seeds, entry.grid.lr, entry.grid.weight_decay):
                train = {**entry.train, "lr": lr, "weight_decay": wd, "seed": seed,
                         "progress": False, "save_checkpoints": False, "device": suite.device}
                step_cost = STEP_COST.get(get_mixer(suite.resolve(mixer).mixer).base, UNKNOWN_STEP_COST)
                jobs.append(Job(
                    id=len(jobs), label=entry.label, task=entry.task, data=s.data, setting=s.index, mixer=mixer,
                    seed=seed, model=s.models[mixer].to_dict(), train=train, cache_dir=suite.cache_dir,
                    seq_len=s.seq_len, threads=suite.threads_per_worker,
                    cost=s.steps * train["batch_size"] * s.seq_len * step_cost,
                ))
    return jobs


def run_job(job: Job) -> JobResult:
    """Train one model (in whichever process runs it)."""
    if job.threads:
        torch.set_num_threads(job.threads)
    start = time.perf_counter()
    task, _ = build_task(job.task, job.data, job.cache_dir)
    trainer = Trainer(ModelConfig.from_dict(job.model), task, TrainConfig.from_dict(job.train))
    ids = dict(id=job.id, label=job.label, setting=job.setting, mixer=job.mixer, seed=job.seed,
               lr=job.train["lr"], weight_decay=job.train["weight_decay"])
    try:
        res = trainer.fit()
    except TrainingError as e:  # a diverged grid point is a result (the grid keeps the best), not a crash
        return JobResult(**ids, final={}, evals=trainer.evals, steps=trainer.step, stopped_early=False,
                         train_loss=[], error=str(e), wall_s=time.perf_counter() - start)
    curve = res["train_loss"]
    stride = max(1, len(curve) // CURVE_POINTS)
    return JobResult(
        **ids,
        final={k: v for k, v in res["final"].items() if k != "type"},
        evals=res["evals"],
        steps=res["step"],
        stopped_early=res["stopped_early"],
        train_loss=curve[::stride],
        wall_s=time.perf_counter() - start,
    )


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_jobs(jobs: List[Job], workers: int, threads_per_worker: int, on_result: Callable[[JobResult], None]) -> None:
    """Run every job, the longest first, calling ``on_result`` as each finishes."""
    order = sorted(jobs, key=lambda j: -j.cost)
    if workers <= 1:
        for job in order:
            on_result(run_job(job))
        return
    ctx = mp.get_context("spawn")  # fork after torch has started threads can hang
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(threads_per_worker,))
    try:
        for result in pool.imap_unordered(run_job, order, chunksize=1):
            on_result(result)
        pool.close()  # orderly shutdown: workers exit on their own
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()

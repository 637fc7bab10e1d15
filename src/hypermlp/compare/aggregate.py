"""Job results -> scores.

* **Selection** reads the validation split only: per (task, setting, mixer, seed) the grid point
  with the best ``SELECT_METRIC`` of its task kind is kept (``best_run`` refuses any metric that
  is not a ``val_*`` one, so test labels never choose).
* **Reporting**: the kept runs' ``REPORT_METRICS`` (the test split for the token tasks; the LM
  has no test split and reports its validation split, scored in full), the settings of a task
  averaged per seed, then over seeds as an ``Estimate`` (mean, 95% t-interval, per-seed values).
* **Compute** of the kept runs (wall time, training tokens, tokens/s, estimated FLOPs) per task
  and mixer, and the wall time of the whole grid search.
* **MAD mean**: per seed the mean over the suite's MAD tasks, then over seeds; its label names
  the tasks it covers (``mad_mean_label``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

from .jobs import JobResult
from .settings import TaskPlan
from .stats import Estimate, estimate
from .suite import Suite

# the metric that picks the best grid point, per task kind: validation split only
SELECT_METRIC = {"mad": "val_acc", "mqar": "val_acc", "lm": "val_loss"}
# what each kind of task reports, from the kept grid point: the test split for the token tasks;
# the LM has only a validation split (scored in full, bits per byte of the bytes scored)
REPORT_METRICS = {"mad": ("test_acc", "test_macro_acc"), "mqar": ("test_acc", "test_macro_acc"),
                  "lm": ("val_loss", "val_bpb")}
MAD_MEAN_METRICS = REPORT_METRICS["mad"]
# what training cost, from the kept runs' final records (hypermlp.train: Trainer.cost)
COMPUTE_METRICS = ("train_wall_s", "train_tokens", "train_tokens_per_s", "train_flops")


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "bpb"))


class RunKey(NamedTuple):
    """One (task, setting, mixer, seed): the runs of its grid points compete."""

    label: str
    setting: int
    mixer: str
    seed: int


@dataclass(frozen=True)
class Aggregate:
    best: Dict[RunKey, JobResult]  # the kept grid point of every (task, setting, mixer, seed)
    table: Dict[Tuple[str, str], Dict[str, Estimate]]  # (task label, mixer) -> metric -> over seeds
    compute: Dict[Tuple[str, str], Dict[str, Estimate]]  # (task label, mixer) -> compute metric -> over seeds
    grid_wall_s: Dict[Tuple[str, str], float]  # (task label, mixer) -> wall time of every grid run
    mad_tasks: Tuple[str, ...]  # the MAD task labels the MAD mean covers, in suite order
    mad_mean: Dict[str, Dict[str, Estimate]]  # mixer -> MAD metric -> over seeds (any MAD task)

    @property
    def overall(self) -> Dict[str, Dict[str, Estimate]]:
        """The MAD mean where it is a mean (two or more MAD tasks), else empty."""
        return self.mad_mean if len(self.mad_tasks) > 1 else {}


def mad_mean_label(tasks) -> str:
    """``MAD mean (5 tasks: a, b, c, d, e)``: what a MAD mean covers, said where it is shown."""
    tasks = list(tasks)
    return f"MAD mean ({len(tasks)} task{'s' if len(tasks) != 1 else ''}: {', '.join(tasks)})"


def best_run(runs: List[JobResult], metric: str) -> JobResult:
    """The run with the best validation ``metric``; a run without it (diverged) never wins over
    one with it; ties go to the first run (the grid's order)."""
    if not metric.startswith("val_"):
        raise ValueError(f"grid points are selected on a validation metric (val_*), not {metric!r}")

    def badness(r: JobResult) -> float:
        v = r.final.get(metric)
        if v is None or math.isnan(v):
            return math.inf
        return v if lower_is_better(metric) else -v

    return min(runs, key=badness)


def aggregate(suite: Suite, plans: List[TaskPlan], results: List[JobResult]) -> Aggregate:
    best: Dict[RunKey, JobResult] = {}
    grid_wall: Dict[Tuple[str, str], float] = {}
    for plan in plans:
        label, select = plan.entry.label, SELECT_METRIC[plan.entry.kind]
        groups: Dict[RunKey, List[JobResult]] = {}
        for r in results:
            if r.label == label:
                groups.setdefault(RunKey(r.label, r.setting, r.mixer, r.seed), []).append(r)
                grid_wall[(label, r.mixer)] = grid_wall.get((label, r.mixer), 0.0) + r.wall_s
        for key, runs in groups.items():
            best[key] = best_run(runs, select)

    table: Dict[Tuple[str, str], Dict[str, Estimate]] = {}
    compute: Dict[Tuple[str, str], Dict[str, Estimate]] = {}
    per_seed: Dict[Tuple[str, str, str], Dict[int, float]] = {}  # (label, mixer, metric) -> seed -> task score
    for plan in plans:
        label, n_settings, kind = plan.entry.label, len(plan.settings), plan.entry.kind
        for mixer in suite.mixers:
            kept = {seed: [best.get(RunKey(label, i, mixer, seed)) for i in range(n_settings)] for seed in suite.seeds}
            kept = {seed: runs for seed, runs in kept.items() if all(r is not None for r in runs)}  # every setting done
            for metric in (*REPORT_METRICS[kind], SELECT_METRIC[kind]):
                scores = {seed: _mean_or_nan([r.final.get(metric) for r in runs]) for seed, runs in kept.items()}
                per_seed[(label, mixer, metric)] = scores
                table.setdefault((label, mixer), {})[metric] = estimate(list(scores.values()), list(scores))
            compute[(label, mixer)] = {m: estimate([_cost(runs, m) for runs in kept.values()], list(kept))
                                       for m in COMPUTE_METRICS}

    mad_tasks = tuple(p.entry.label for p in plans if p.entry.kind == "mad")
    mad_mean: Dict[str, Dict[str, Estimate]] = {}
    if mad_tasks:
        for mixer in suite.mixers:
            for metric in MAD_MEAN_METRICS:
                cols = [per_seed[(label, mixer, metric)] for label in mad_tasks]
                seeds = [s for s in suite.seeds if all(s in c and not math.isnan(c[s]) for c in cols)]
                mad_mean.setdefault(mixer, {})[metric] = estimate(
                    [statistics.fmean(c[s] for c in cols) for s in seeds], seeds)
    return Aggregate(best=best, table=table, compute=compute, grid_wall_s=grid_wall, mad_tasks=mad_tasks,
                     mad_mean=mad_mean)


def _mean_or_nan(xs: List[Optional[float]]) -> float:
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in xs):
        return math.nan  # a setting without the metric: the seed does not score
    return statistics.fmean(xs)


def _cost(runs: List[JobResult], metric: str) -> Optional[float]:
    """One seed's cost over a task's settings: summed, tokens/s as total tokens over total step
    time. Wall time falls back on the job's own clock when the record has none."""
    def get(r: JobResult, key: str) -> Optional[float]:
        v = r.final.get(key)
        if v is None and key == "train_wall_s":
            return r.wall_s or None
        return v

    if metric == "train_tokens_per_s":
        tokens = [get(r, "train_tokens") for r in runs]
        step_s = [get(r, "train_step_s") for r in runs]
        if any(v is None for v in tokens + step_s) or sum(step_s) <= 0:
            return None
        return sum(tokens) / sum(step_s)
    vals = [get(r, metric) for r in runs]
    return None if any(v is None for v in vals) else float(sum(vals))

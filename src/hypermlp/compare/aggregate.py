"""Job results -> scores: the best grid point per (setting, mixer, seed), the settings of a task
averaged per seed, then mean ± std over seeds; and the mean over the MAD tasks."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Tuple

from .jobs import JobResult
from .settings import TaskPlan
from .suite import Suite

# what each kind of task reports; the first picks the best grid point
METRICS = {"mad": ["acc", "macro_acc"], "mqar": ["acc", "macro_acc"], "lm": ["val_loss", "val_bpb"]}
LOWER_IS_BETTER = {"val_loss", "val_bpb", "test_loss"}
MAD_OVERALL_METRICS = ("acc", "macro_acc")

MeanStd = Tuple[float, float]


class RunKey(NamedTuple):
    """One (task, setting, mixer, seed): the runs of its grid points compete."""

    label: str
    setting: int
    mixer: str
    seed: int


@dataclass(frozen=True)
class Aggregate:
    best: Dict[RunKey, JobResult]  # the kept grid point of every (task, setting, mixer, seed)
    table: Dict[Tuple[str, str], Dict[str, MeanStd]]  # (task label, mixer) -> metric -> over seeds
    overall: Dict[str, Dict[str, MeanStd]]  # mixer -> MAD metric -> over seeds (2+ MAD tasks only)


def mean_std(xs: List[float]) -> MeanStd:
    """Mean and sample std of the numbers that are not NaN (NaN, NaN when there are none)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def best_run(runs: List[JobResult], metric: str) -> JobResult:
    """The run with the best ``metric``; a run without it (diverged) never wins over one with it."""
    def badness(r: JobResult) -> float:
        v = r.final.get(metric)
        if v is None or math.isnan(v):
            return math.inf
        return v if metric in LOWER_IS_BETTER else -v

    return min(runs, key=badness)


def aggregate(suite: Suite, plans: List[TaskPlan], results: List[JobResult]) -> Aggregate:
    best: Dict[RunKey, JobResult] = {}
    for plan in plans:
        label, primary = plan.entry.label, METRICS[plan.entry.kind][0]
        groups: Dict[RunKey, List[JobResult]] = {}
        for r in results:
            if r.label == label:
                groups.setdefault(RunKey(r.label, r.setting, r.mixer, r.seed), []).append(r)
        for key, runs in groups.items():
            best[key] = best_run(runs, primary)

    table: Dict[Tuple[str, str], Dict[str, MeanStd]] = {}
    per_seed: Dict[Tuple[str, str, str], List[float]] = {}  # (label, mixer, metric) -> task score per seed
    for plan in plans:
        label, n_settings = plan.entry.label, len(plan.settings)
        for mixer in suite.mixers:
            for metric in METRICS[plan.entry.kind]:
                scores = []
                for seed in suite.seeds:
                    keys = [RunKey(label, i, mixer, seed) for i in range(n_settings)]
                    vals = [best[k].final.get(metric, float("nan")) for k in keys if k in best]
                    if len(vals) == n_settings:  # a seed scores only with every setting done
                        scores.append(statistics.fmean(vals))
                per_seed[(label, mixer, metric)] = scores
                table.setdefault((label, mixer), {})[metric] = mean_std(scores)

    # MAD overall: the mean over the MAD tasks per seed, then over seeds
    mad_labels = [p.entry.label for p in plans if p.entry.kind == "mad"]
    overall: Dict[str, Dict[str, MeanStd]] = {}
    if len(mad_labels) > 1:
        for mixer in suite.mixers:
            for metric in MAD_OVERALL_METRICS:
                cols = [per_seed[(label, mixer, metric)] for label in mad_labels]
                n = min(len(c) for c in cols)
                overall.setdefault(mixer, {})[metric] = mean_std([statistics.fmean(c[i] for c in cols) for i in range(n)])
    return Aggregate(best=best, table=table, overall=overall)

"""Aggregation: the best grid point, per-seed task scores over settings, mean ± std over seeds,
the MAD mean; and the summary table."""

import math

import pytest

from hypermlp.compare import JobResult, RunKey, Setting, TaskPlan, aggregate, load_suite
from hypermlp.compare.aggregate import best_run, mean_std
from hypermlp.compare.report import fmt_score, summary_table

TASKS = [{"task": "mad:in_context_recall", "train": {"epochs": 1}}, {"task": "mad:selective_copying", "train": {"epochs": 1}},
         {"task": "lm", "train": {"steps": 1}}]


def result(label, setting, mixer, seed, lr=1e-3, **final):
    return JobResult(id=0, label=label, setting=setting, mixer=mixer, seed=seed, lr=lr, weight_decay=0.0, final=final,
                     evals=[], steps=1, stopped_early=False)


def plans_for(suite, n_settings):
    return [TaskPlan(e, tuple(Setting(i, {}, f"s{i}", 8, 8, 1, {}, []) for i in range(n_settings[e.label])))
            for e in suite.tasks]


def test_best_run_prefers_the_better_metric_and_never_a_diverged_run():
    a, b = result("t", 0, "m", 0, acc=0.5), result("t", 0, "m", 0, acc=0.7)
    assert best_run([a, b], "acc") is b
    lo, hi = result("t", 0, "m", 0, val_loss=1.0), result("t", 0, "m", 0, val_loss=2.0)
    assert best_run([hi, lo], "val_loss") is lo
    diverged = result("t", 0, "m", 0)
    assert best_run([diverged, a], "acc") is a and best_run([result("t", 0, "m", 0, acc=float("nan")), a], "acc") is a


def test_mean_std_skips_nan():
    assert mean_std([1.0, 3.0, float("nan")]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_aggregate_scores_settings_per_seed_then_seeds():
    suite = load_suite({"mixers": ["softmax", "hyperglu"], "seeds": [0, 1], "tasks": TASKS})
    plans = plans_for(suite, {"in_context_recall": 2, "selective_copying": 1, "lm": 1})
    results = []
    for mixer, bonus in (("softmax", 0.0), ("hyperglu", 0.1)):
        for seed in (0, 1):
            for setting in (0, 1):  # two grid points each; the better one counts
                results.append(result("in_context_recall", setting, mixer, seed, lr=1e-3, acc=0.1, macro_acc=0.1))
                results.append(result("in_context_recall", setting, mixer, seed, lr=3e-3,
                                      acc=0.4 + 0.2 * setting + 0.1 * seed + bonus, macro_acc=0.3))
            results.append(result("selective_copying", 0, mixer, seed, acc=0.2 + bonus, macro_acc=0.2))
            results.append(result("lm", 0, mixer, seed, val_loss=3.0 - seed, val_bpb=4.0))
    agg = aggregate(suite, plans, results)
    assert len(agg.best) == 2 * 2 * (2 + 1 + 1)
    assert agg.best[RunKey("in_context_recall", 1, "softmax", 0)].lr == 3e-3
    # per seed the mean over the two settings: 0.5 and 0.6; then over the seeds
    m, s = agg.table[("in_context_recall", "softmax")]["acc"]
    assert m == pytest.approx(0.55) and s == pytest.approx(math.sqrt(0.005))
    assert agg.table[("lm", "hyperglu")]["val_loss"] == (pytest.approx(2.5), pytest.approx(math.sqrt(0.5)))
    # MAD mean: per seed the mean over the two MAD tasks
    assert agg.overall["hyperglu"]["acc"][0] == pytest.approx(((0.6 + 0.3) + (0.7 + 0.3)) / 4)
    table = summary_table(suite, plans, agg)
    assert "| in_context_recall | acc % (plain) | 55.0 ± 7.1 | 65.0 ± 7.1 |" in table
    assert "| lm | val loss (nats/token) | 2.5000 ± 0.7071 |" in table and "| **MAD mean** |" in table


def test_a_seed_without_every_setting_is_not_scored():
    suite = load_suite({"mixers": ["softmax"], "seeds": [0, 1], "tasks": TASKS[:1]})
    plans = plans_for(suite, {"in_context_recall": 2})
    results = [result("in_context_recall", i, "softmax", 0, acc=0.5, macro_acc=0.5) for i in (0, 1)]
    results.append(result("in_context_recall", 0, "softmax", 1, acc=0.9, macro_acc=0.9))  # seed 1 lacks setting 1
    agg = aggregate(suite, plans, results)
    assert agg.table[("in_context_recall", "softmax")]["acc"] == (0.5, 0.0)
    assert agg.overall == {}  # one MAD task: no MAD mean
    assert fmt_score((float("nan"), float("nan")), "acc") == "n/a" and fmt_score((0.5, 0.01), "acc") == "50.0 ± 1.0"

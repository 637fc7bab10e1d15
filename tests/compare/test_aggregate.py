"""Aggregation: the best grid point on the validation split only, per-seed task scores over
settings, estimates over seeds, the labelled MAD mean, compute; and the summary tables."""

import math
import random

import pytest

from hypermlp.compare import JobResult, RunKey, Setting, TaskPlan, aggregate, load_suite
from hypermlp.compare.aggregate import SELECT_METRIC, best_run, mad_mean_label
from hypermlp.compare.report import fmt_score, per_seed_table, summary_table
from hypermlp.compare.stats import estimate

TASKS = [{"task": "mad:in_context_recall", "train": {"epochs": 1}}, {"task": "mad:selective_copying", "train": {"epochs": 1}},
         {"task": "lm", "train": {"steps": 1}}]


def result(label, setting, mixer, seed, lr=1e-3, **final):
    return JobResult(id=0, label=label, setting=setting, mixer=mixer, seed=seed, lr=lr, weight_decay=0.0, final=final,
                     evals=[], steps=1, stopped_early=False, wall_s=2.0)


def plans_for(suite, n_settings):
    return [TaskPlan(e, tuple(Setting(i, {}, f"s{i}", 8, 8, 1, {}, []) for i in range(n_settings[e.label])))
            for e in suite.tasks]


def token(acc, macro=None, val=None, **extra):
    """A token task's final metrics; the validation accuracy defaults to the test one."""
    macro = acc if macro is None else macro
    val = acc if val is None else val
    return dict(val_acc=val, val_macro_acc=val, test_acc=acc, test_macro_acc=macro, **extra)


def test_selection_reads_the_validation_split_only():
    assert all(m.startswith("val_") for m in SELECT_METRIC.values())
    # validation prefers a, test prefers b: a is kept
    a = result("t", 0, "m", 0, lr=1e-3, **token(0.5, val=0.9))
    b = result("t", 0, "m", 0, lr=3e-3, **token(0.99, val=0.6))
    assert best_run([a, b], "val_acc") is a and best_run([b, a], "val_acc") is a
    lo, hi = result("t", 0, "m", 0, val_loss=1.0), result("t", 0, "m", 0, val_loss=2.0)
    assert best_run([hi, lo], "val_loss") is lo
    diverged = result("t", 0, "m", 0)
    assert best_run([diverged, a], "val_acc") is a and best_run([result("t", 0, "m", 0, val_acc=float("nan")), a], "val_acc") is a
    with pytest.raises(ValueError, match="validation metric"):
        best_run([a, b], "test_acc")


def test_corrupting_the_test_scores_leaves_the_chosen_grid_points_unchanged():
    """Whatever the test split says, the same grid points are kept (selection never reads it)."""
    suite = load_suite({"mixers": ["softmax", "hyperglu"], "seeds": [0, 1, 2], "tasks": TASKS[:2]})
    plans = plans_for(suite, {"in_context_recall": 2, "selective_copying": 1})
    rng = random.Random(0)
    results = []
    for label, n in (("in_context_recall", 2), ("selective_copying", 1)):
        for mixer in suite.mixers:
            for seed in suite.seeds:
                for setting in range(n):
                    for lr in (1e-4, 1e-3, 3e-3):
                        results.append(result(label, setting, mixer, seed, lr=lr, **token(rng.random(), val=rng.random())))
    chosen = {k: r.lr for k, r in aggregate(suite, plans, results).best.items()}
    for _ in range(5):
        corrupted = [JobResult(**{**r.__dict__, "final": {**r.final, "test_acc": rng.random(),
                                                             "test_macro_acc": rng.random()}}) for r in results]
        assert {k: r.lr for k, r in aggregate(suite, plans, corrupted).best.items()} == chosen


def test_aggregate_scores_settings_per_seed_then_seeds():
    suite = load_suite({"mixers": ["softmax", "hyperglu"], "seeds": [0, 1], "tasks": TASKS})
    plans = plans_for(suite, {"in_context_recall": 2, "selective_copying": 1, "lm": 1})
    results = []
    for mixer, bonus in (("softmax", 0.0), ("hyperglu", 0.1)):
        for seed in (0, 1):
            for setting in (0, 1):  # two grid points each; the better one on validation counts
                results.append(result("in_context_recall", setting, mixer, seed, lr=1e-3, **token(0.95, val=0.1)))
                results.append(result("in_context_recall", setting, mixer, seed, lr=3e-3,
                                      **token(0.4 + 0.2 * setting + 0.1 * seed + bonus, macro=0.3, val=0.5),
                                      train_tokens=100, train_step_s=1.0, train_wall_s=2.0, train_flops=1e6))
            results.append(result("selective_copying", 0, mixer, seed, **token(0.2 + bonus)))
            results.append(result("lm", 0, mixer, seed, val_loss=3.0 - seed, val_bpb=4.0))
    agg = aggregate(suite, plans, results)
    assert len(agg.best) == 2 * 2 * (2 + 1 + 1)
    assert agg.best[RunKey("in_context_recall", 1, "softmax", 0)].lr == 3e-3  # not the test-best 1e-3
    # per seed the mean over the two settings: 0.5 and 0.6; then over the seeds
    e = agg.table[("in_context_recall", "softmax")]["test_acc"]
    assert e.values == (pytest.approx(0.5), pytest.approx(0.6)) and e.seeds == (0, 1)
    assert e.mean == pytest.approx(0.55) and e.std == pytest.approx(math.sqrt(0.005))
    assert agg.table[("in_context_recall", "softmax")]["val_acc"].mean == pytest.approx(0.5)  # the selection metric too
    lm = agg.table[("lm", "hyperglu")]["val_loss"]
    assert (lm.mean, lm.std) == (pytest.approx(2.5), pytest.approx(math.sqrt(0.5)))
    # compute: a task's settings summed per seed; tokens/s = tokens / step time
    c = agg.compute[("in_context_recall", "softmax")]
    assert c["train_tokens"].mean == 200 and c["train_wall_s"].mean == 4.0 and c["train_tokens_per_s"].mean == 100
    assert c["train_flops"].mean == 2e6
    assert agg.grid_wall_s[("in_context_recall", "softmax")] == 2 * 2 * 2 * 2.0  # every grid run
    assert agg.compute[("lm", "softmax")]["train_wall_s"].mean == 2.0  # falls back on the job's clock
    assert agg.compute[("lm", "softmax")]["train_flops"].n == 0  # not recorded: n/a, not 0
    # MAD mean: per seed the mean over the two MAD tasks, labelled with them
    assert agg.mad_tasks == ("in_context_recall", "selective_copying")
    assert agg.overall["hyperglu"]["test_acc"].mean == pytest.approx(((0.6 + 0.3) + (0.7 + 0.3)) / 4)
    table = summary_table(suite, plans, agg)
    label = "MAD mean (2 tasks: in_context_recall, selective_copying)"
    assert label == mad_mean_label(agg.mad_tasks) and f"| mixer | in_context_recall | selective_copying | {label} |" in table
    assert "| softmax | 55.0 ± 63.5 | 20.0 ± 0.0 |" in table  # mean ± 95% CI (t, 1 df)
    assert "| softmax | 2.5000 ± 6.3531 | 4.0000 ± 0.0000 |" in table
    seeds = per_seed_table(suite, plans, agg)
    assert "| in_context_recall | test acc % (plain) | softmax | 2 | 55.0 | [-8.5, 118.5] | 0: 50.0, 1: 60.0 |" in seeds


def test_a_seed_without_every_setting_is_not_scored_and_one_task_is_no_mean():
    suite = load_suite({"mixers": ["softmax"], "seeds": [0, 1], "tasks": TASKS[:1]})
    plans = plans_for(suite, {"in_context_recall": 2})
    results = [result("in_context_recall", i, "softmax", 0, **token(0.5)) for i in (0, 1)]
    results.append(result("in_context_recall", 0, "softmax", 1, **token(0.9)))  # seed 1 lacks setting 1
    agg = aggregate(suite, plans, results)
    e = agg.table[("in_context_recall", "softmax")]["test_acc"]
    assert e.values == (0.5,) and e.seeds == (0,)
    assert agg.overall == {} and agg.mad_mean["softmax"]["test_acc"].values == (0.5,)  # one MAD task: no MAD mean row
    assert fmt_score(estimate([]), "test_acc") == "n/a" and fmt_score(e, "test_acc") == "50.0 (n=1)"
    assert "| softmax | 50.0 (n=1) |" in summary_table(suite, plans, agg)

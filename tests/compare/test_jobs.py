"""Settings and jobs: a full MAD preset's settings, job expansion (count, order, ids, cost) and
the results' JSON form."""

import dataclasses
import pickle

import pytest

from hypermlp.compare import JobResult, Setting, TaskPlan, expand_jobs, load_suite, plan_tasks
from hypermlp.compare.settings import data_settings
from hypermlp.data.mad import MAD_CHANGES
from hypermlp.models import ModelConfig

RECALL = {"task": "mad:in_context_recall", "data": {"seq_len": 16, "num_train": 64, "num_test": 32},
          "train": {"epochs": 1, "batch_size": 32}}


def fake_plan(suite, entry, n_settings):
    """A TaskPlan without building data: every setting gets the same small models."""
    models = {m: ModelConfig(vocab_size=16, d_model=32, n_layers=1, mixer=suite.resolve(m).mixer, max_len=16)
              for m in suite.mixers}
    settings = tuple(Setting(index=i, data={**entry.data, "i": i}, label=f"setting {i}", vocab_size=16, seq_len=16,
                             steps=10 * (i + 1), models=models, budget_rows=[]) for i in range(n_settings))
    return TaskPlan(entry, settings)


def test_job_count_is_settings_x_mixers_x_seeds_x_grid():
    suite = load_suite({
        "mixers": ["softmax", "hyperglu", "conv"], "variants": {"conv": {"mixer": "softmax", "mixer_args": {"conv_size": 4}}},
        "seeds": [0, 1], "tasks": [{**RECALL, "grid": {"lr": [1e-3, 3e-3], "weight_decay": [0.0, 0.1, 0.2]}},
                                   {"task": "lm", "train": {"steps": 4}}],
    })
    plans = [fake_plan(suite, suite.tasks[0], 2), fake_plan(suite, suite.tasks[1], 1)]
    jobs = expand_jobs(suite, plans)
    assert len(jobs) == 2 * 3 * 2 * (2 * 3) + 1 * 3 * 2 * 1
    assert [j.id for j in jobs] == list(range(len(jobs)))
    # setting, then mixer, then seed, then lr, then weight decay
    first = [(j.setting, j.mixer, j.seed, j.train["lr"], j.train["weight_decay"]) for j in jobs[:7]]
    assert first[:3] == [(0, "softmax", 0, 1e-3, 0.0), (0, "softmax", 0, 1e-3, 0.1), (0, "softmax", 0, 1e-3, 0.2)]
    assert first[3] == (0, "softmax", 0, 3e-3, 0.0) and first[6] == (0, "softmax", 1, 1e-3, 0.0)
    j = jobs[0]
    assert j.train["seed"] == 0 and j.train["progress"] is False and j.train["save_checkpoints"] is False
    assert j.train["device"] == "auto" and j.model["mixer"] == "softmax" and j.label == "in_context_recall"
    # a named mixer costs what its registered mixer costs; a longer setting costs more
    by = {(j.setting, j.mixer): j.cost for j in jobs if j.label == "in_context_recall"}
    assert by[(0, "conv")] == by[(0, "softmax")] < by[(0, "hyperglu")] and by[(1, "softmax")] == 2 * by[(0, "softmax")]
    assert pickle.loads(pickle.dumps(j)) == j  # travels to a worker process
    with pytest.raises(dataclasses.FrozenInstanceError):
        j.seed = 5


def test_a_full_mad_preset_has_one_setting_per_change():
    suite = load_suite({"tasks": [{**RECALL, "preset": "full"}]})
    settings = data_settings(suite.tasks[0])
    changes = sum(len(values) for _, values in MAD_CHANGES["in_context_recall"])
    assert len(settings) == 1 + changes
    assert settings[0] == RECALL["data"]  # the baseline keeps the entry's reductions
    assert any(s.get("vocab_size") == 32 for s in settings[1:])  # a change wins over them
    assert data_settings(load_suite({"tasks": [RECALL]}).tasks[0]) == [RECALL["data"]]


def test_plan_tasks_builds_data_and_matches_budgets():
    suite = load_suite({"mixers": ["softmax", "hyperglu"], "model": {"d_model": 32, "n_layers": 1, "mixer_args": {"n_heads": 2}},
                        "tasks": [RECALL]})
    logged = []
    (plan,) = plan_tasks(suite, logged.append)
    (s,) = plan.settings
    assert s.seq_len == 16 and s.vocab_size > 0 and s.steps == 2  # 64 examples / batch 32, one epoch
    counts = [r["params"] for r in s.budget_rows]
    assert max(counts) <= 1.01 * min(counts) and set(s.models) == {"softmax", "hyperglu"}
    assert logged and logged[0].startswith("\n[budget] in_context_recall / ")


def test_plan_tasks_matches_by_the_paper_rule_and_leaves_bounds_alone():
    suite = load_suite({"mixers": ["R-cg-q-12o", "S-pc", "S-c-v", "R-12o!"], "budget": {"rule": "paper"},
                        "model": {"d_model": 32, "n_layers": 1, "mixer_args": {"n_heads": 2}}, "tasks": [RECALL]})
    (plan,) = plan_tasks(suite, lambda msg: None)
    (s,) = plan.settings
    rows = {r["name"]: r for r in s.budget_rows}
    target = rows["S-pc"]["params_before"]
    assert rows["S-pc"]["changed"] == "nothing (reference)" and rows["S-pc"]["params"] == target
    for name in ("R-cg-q-12o", "S-c-v"):
        assert abs(rows[name]["params"] - target) <= 0.01 * target and rows[name]["changed"] != "nothing"
    assert rows["R-12o!"]["changed"] == "unmatched (over-parameterised bound)"
    assert rows["R-12o!"]["params"] == rows["R-12o!"]["params_before"] > target
    assert s.models["S-c-v"].mixer == "S-c-v" and s.models["S-c-v"].mlp_hidden > s.models["S-pc"].mlp_hidden
    # a variant name costs what its registered mixer does
    jobs = {j.mixer: j.cost for j in expand_jobs(suite, [plan])}
    assert jobs["S-c-v"] == jobs["S-pc"] < jobs["R-cg-q-12o"] == jobs["R-12o!"]


@pytest.mark.parametrize("error", [None, "loss is nan"])
def test_job_result_json_keeps_the_key_order(error):
    r = JobResult(id=3, label="lm", setting=0, mixer="softmax", seed=1, lr=1e-3, weight_decay=0.1, final={"val_loss": 2.0},
                  evals=[], steps=5, stopped_early=False, train_loss=[[1, 3.0]], wall_s=0.5, error=error)
    keys = ["id", "label", "setting", "mixer", "seed", "lr", "weight_decay", "final", "evals", "steps", "stopped_early",
            "train_loss"] + (["error"] if error else []) + ["wall_s"]
    assert list(r.to_dict()) == keys

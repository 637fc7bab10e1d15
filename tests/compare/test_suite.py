"""load_suite: defaults, typed records, and a ConfigError naming the field for every bad suite."""

import dataclasses

import pytest

from hypermlp.compare import DEFAULT_SUITE, Grid, NamedMixer, Suite, TaskEntry, load_suite
from hypermlp.config import ConfigError
from hypermlp.registry import mixer_names
from hypermlp.defaults import mad_protocol

RECALL = {"task": "mad:in_context_recall", "data": {"seq_len": 16, "num_train": 64, "num_test": 32},
          "train": {"epochs": 1, "batch_size": 32}}


def suite_with(**over):
    return {"tasks": [dict(RECALL)], **over}


def test_defaults_are_filled_in():
    s = load_suite(suite_with())
    assert isinstance(s, Suite) and isinstance(s.tasks[0], TaskEntry)
    assert s.mixers == tuple(mixer_names())  # every registered mixer, registry order
    assert s.seeds == (0, 1, 2) and s.workers == 1 and s.threads_per_worker >= 1 and s.device == "auto"
    assert s.model == {} and s.budget == {} and s.named_mixers == {} and s.cache_dir
    t = s.tasks[0]
    assert (t.kind, t.label, t.preset) == ("mad", "in_context_recall", "quick")
    assert t.train["epochs"] == 1 and t.train["batch_size"] == 32  # a complete TrainConfig
    assert {"lr", "weight_decay", "grad_clip", "seed"} <= set(t.train)
    # MAD without its own lr / weight decay: the protocol's grid
    assert t.grid == Grid(lr=tuple(mad_protocol("quick")["grid"]["lr"]),
                          weight_decay=tuple(mad_protocol("quick")["grid"]["weight_decay"]))


def test_records_are_frozen():
    s = load_suite(suite_with())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tasks[0].label = "other"


def test_an_entrys_own_lr_replaces_the_grid_and_labels_name_tasks():
    t = {**RECALL, "label": "recall", "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3}}
    lm = {"task": "lm", "train": {"steps": 5}, "grid": {"lr": [1e-3, "2e-3"]}}
    s = load_suite({"tasks": [t, lm]})
    assert s.tasks[0].label == "recall" and s.tasks[0].grid.lr == (3e-3,)
    assert s.tasks[1].grid.lr == (1e-3, 2e-3) and s.tasks[1].grid.weight_decay == (s.tasks[1].train["weight_decay"],)


def test_named_mixers_resolve_to_a_registered_mixer_with_its_arguments():
    s = load_suite(suite_with(mixers=["softmax", "softmax_conv"],
                              variants={"softmax_conv": {"mixer": "softmax", "mixer_args": {"conv_size": 4}}}))
    assert s.resolve("softmax_conv") == NamedMixer("softmax_conv", "softmax", {"conv_size": 4})
    assert s.resolve("softmax") == NamedMixer("softmax", "softmax", {})
    d = s.to_dict()  # as in results.json: the YAML's key
    assert d["variants"] == {"softmax_conv": {"mixer": "softmax", "mixer_args": {"conv_size": 4}}}
    assert list(d) == ["mixers", "seeds", "workers", "threads_per_worker", "model", "budget", "cache_dir", "device",
                       "tasks", "variants"]
    assert list(d["tasks"][0]) == ["task", "kind", "label", "preset", "data", "train", "grid", "model"]


def test_variant_names_are_mixers_and_the_paper_rule_finds_its_reference():
    s = load_suite(suite_with(mixers=["R-cg-q-12o", "G-cg-q-12o", "S-c-q", "S-pc", "R-12!"], budget={"rule": "paper"}))
    assert s.mixers == ("R-cg-q-12o", "G-cg-q-12o", "S-c-q", "S-pc", "R-12!")
    assert s.resolve("G-cg-q-12o") == NamedMixer("G-cg-q-12o", "G-cg-q-12o", {})
    assert s.budget == {"rule": "paper", "reference": "S-c-q"}  # the first softmax mixer
    # a named mixer over a variant name, and one over softmax, can be the reference
    s = load_suite(suite_with(mixers=["R-cg-q-12o", "sm"], variants={"sm": {"mixer": "S-pc", "mixer_args": {"n_heads": 4}}},
                              budget={"rule": "paper", "tol": 0.02}))
    assert s.budget == {"rule": "paper", "reference": "sm", "tol": 0.02}
    assert s.resolve("sm") == NamedMixer("sm", "S-pc", {"n_heads": 4})
    # grow, the default, is kept as given
    assert load_suite(suite_with(budget={"tol": 0.01})).budget == {"tol": 0.01}
    assert load_suite(suite_with(budget={"rule": "grow"})).budget == {"rule": "grow"}


def test_the_built_in_default_suite_loads():
    s = load_suite(dict(DEFAULT_SUITE))
    assert [t.kind for t in s.tasks] == ["mad", "lm"]


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ([], "YAML mapping"),
        (suite_with(mixer=["softmax"]), "unknown compare setting(s) ['mixer']"),
        (suite_with(mixers="softmax"), "mixers must be a list"),
        (suite_with(mixers=["softmax", "mamba"]), "unknown mixer 'mamba'"),
        (suite_with(mixers=["softmax", "softmax"]), "repeat a name"),
        (suite_with(variants={"x": {"mixer": "transformer"}}), "variants: 'x'"),
        (suite_with(variants={"x": {"mixer": "softmax", "conv_size": 4}}), "variants: 'x'"),
        (suite_with(variants=["x"]), "variants must map"),
        (suite_with(seeds=[0, "one"]), "seeds must be a list of integers"),
        (suite_with(workers="two"), "workers must be an integer"),
        (suite_with(threads_per_worker=1.5), "threads_per_worker must be an integer"),
        (suite_with(model={"vocab_size": 10}), "model.vocab_size is set by compare"),
        (suite_with(model=[1]), "model must be a mapping"),
        (suite_with(budget={"tol": 0.01, "target_count": 5}), "unknown budget setting(s) ['target_count']"),
        (suite_with(budget={"target": "mamba"}), "budget target 'mamba'"),
        (suite_with(mixers=["S-pc", "S-c-12o"]), "mixers: variant name 'S-c-12o': letter '1'"),
        (suite_with(mixers=["S-pc", "R-cx"]), "unknown letter 'x'"),
        (suite_with(mixers=["S-pc", "x"], variants={"x": {"mixer": "G-o"}}), "variants: 'x': variant name 'G-o'"),
        (suite_with(budget={"rule": "equal"}), "budget.rule must be one of grow, paper, got 'equal'"),
        (suite_with(mixers=["S-pc", "R-cg-q-12o"], budget={"rule": "paper", "reference": "softmax"}),
         "budget.reference 'softmax' is not one of the mixers"),
        (suite_with(mixers=["S-pc", "R-12!"], budget={"rule": "paper", "reference": "R-12!"}),
         "budget.reference 'R-12!' is an over-parameterised bound"),
        (suite_with(mixers=["S-pc", "big"], variants={"big": {"mixer": "R-12o!"}}, budget={"rule": "paper", "reference": "big"}),
         "budget.reference 'big' is an over-parameterised bound"),
        (suite_with(mixers=["S-pc", "R-12!"], budget={"target": "R-12!"}), "budget target 'R-12!' is an over-parameterised"),
        (suite_with(mixers=["S-pc"], budget={"rule": "paper", "target": None}), "budget.target does not apply to rule paper"),
        (suite_with(mixers=["S-pc"], budget={"rule": "paper", "qk_max_factor": 1.0}), "budget.qk_max_factor does not apply"),
        (suite_with(mixers=["S-pc"], budget={"reference": "S-pc"}), "budget.reference applies to rule paper only"),
        (suite_with(mixers=["R-cg-q", "G-cg-q-12o"], budget={"rule": "paper"}), "budget.rule paper needs a reference"),
        ({"tasks": []}, "non-empty list 'tasks'"),
        ({"tasks": [{"data": {}}]}, "needs a 'task' key"),
        ({"tasks": [{**RECALL, "epochs": 3}]}, "unknown task setting(s) ['epochs']"),
        ({"tasks": [{"task": "mad:nonsense"}]}, "unknown task 'mad:nonsense'"),
        ({"tasks": [RECALL, RECALL]}, "task label 'in_context_recall' is used twice"),
        ({"tasks": [{**RECALL, "grid": {"batch_size": [8]}}]}, "grid keys must be lr and/or weight_decay"),
        ({"tasks": [{**RECALL, "grid": {"lr": ["fast"]}}]}, "grid.lr must be a list of numbers"),
        ({"tasks": [{**RECALL, "train": {"epochs": 1, "batch_szie": 32}}]}, "batch_szie"),
        ({"tasks": [{**RECALL, "data": "big"}]}, "data must be a mapping"),
    ],
)
def test_a_bad_suite_names_the_field(cfg, needle):
    with pytest.raises(ConfigError) as e:
        load_suite(cfg)
    assert needle in str(e.value), str(e.value)

"""LM section: how the models are brought to the softmax model's parameter count."""

import argparse

from hypermlp.bench.lm import lm_configs
from hypermlp.bench.mixers import MIXERS
from hypermlp.budget import count_params, solve_mlp_hidden


def args(match):
    return argparse.Namespace(d_model=64, lm_layers=1, lm_seq_len=32, lm_match=match)


def test_mlp_matching_moves_only_the_swiglu_width():
    cfgs, note = lm_configs(args("mlp"))
    base, _ = lm_configs(args("none"))
    target = count_params(cfgs["softmax"])
    assert list(cfgs) == MIXERS and cfgs["softmax"] == base["softmax"]
    for name, cfg in cfgs.items():
        assert cfg.mixer_args == {}  # the layers of the layer section
        assert abs(count_params(cfg) - target) <= 0.01 * target, name
        if name != "softmax":
            assert cfg.mlp_hidden == solve_mlp_hidden(base[name], target)[0]
    assert "SwiGLU width only" in note and "NOT" not in note


def test_budget_and_no_matching():
    cfgs, note = lm_configs(args("budget"))
    counts = [count_params(c) for c in cfgs.values()]
    assert max(counts) - min(counts) <= 0.01 * min(counts) and "match_budgets" in note
    cfgs, note = lm_configs(args("none"))
    assert note == "not matched (--lm-match none)" and len({c.mlp_hidden for c in cfgs.values()}) == 1

"""Matched parameter budgets (docs/math.md §6): every model within 1% of the others, counts real."""

import pytest

from hypermlp.budget import BudgetError, count_params, match_budgets, qk_rank_step
from hypermlp.models import LanguageModel, ModelConfig

MIXERS = ["softmax", "relu", "hypermlp", "hyperglu"]


def base_cfgs(d=64, vocab=16, max_len=64, heads=2, **extra):
    return {
        m: ModelConfig(vocab_size=vocab, d_model=d, n_layers=2, mixer=m, mixer_args={"n_heads": heads, **extra},
                       max_len=max_len)
        for m in MIXERS
    }


def test_count_params_is_the_built_models_count():
    for cfg in base_cfgs().values():
        assert count_params(cfg) == LanguageModel(cfg).num_params()


def test_default_target_is_largest_and_all_within_one_percent():
    base = base_cfgs()
    before = {n: count_params(c) for n, c in base.items()}
    assert len(set(before.values())) == 4  # the mixers really differ before matching
    matched, rows = match_budgets(base)
    counts = {n: LanguageModel(c).num_params() for n, c in matched.items()}
    target = max(before.values())
    assert max(counts.values()) <= 1.01 * min(counts.values())
    for n, c in counts.items():
        assert abs(c - target) <= 0.01 * target
    # the rows report the real counts and say what was changed
    assert {r["name"]: r["params"] for r in rows} == counts
    largest = max(before, key=before.get)
    assert next(r for r in rows if r["name"] == largest)["changed"] == "nothing"
    assert all(r["changed"] != "nothing" for r in rows if r["name"] != largest)
    # the inputs are left alone
    assert {n: count_params(c) for n, c in base.items()} == before


def test_qk_rank_respects_score_heads_and_rope():
    matched, rows = match_budgets(base_cfgs(heads=2))
    for name, cfg in matched.items():
        qk = cfg.mixer_args["qk_rank"] if "qk_rank" in cfg.mixer_args else None
        if qk is None:
            continue
        heads = 4 if name == "hyperglu" else 2
        assert qk % heads == 0
        if name == "softmax":  # RoPE on by default: even per-head width
            assert (qk // heads) % 2 == 0
        LanguageModel(cfg)  # and it builds
    assert qk_rank_step(base_cfgs()["hyperglu"]) == 4
    assert qk_rank_step(base_cfgs()["softmax"]) == 4
    assert qk_rank_step(base_cfgs()["relu"]) == 2
    hybrid = ModelConfig(vocab_size=16, d_model=64, n_layers=2, mixer=["softmax", "hyperglu"],
                         mixer_args={"n_heads": 3}, max_len=32)
    assert qk_rank_step(hybrid) == 6  # lcm of 2*3 (rope) and 2*3 (glu)


def test_smaller_target_shrinks_the_qk_rank_of_hyper_models():
    base = base_cfgs(d=128, max_len=64)
    target = count_params(base["softmax"])
    matched, rows = match_budgets(base, target=target)
    row = {r["name"]: r for r in rows}
    assert row["softmax"]["changed"] == "nothing"
    assert "qk_rank" in row["hypermlp"]["changed"]
    assert row["hypermlp"]["qk_rank"] < 32  # below the default d/4
    for cfg in matched.values():
        assert abs(count_params(cfg) - target) <= 0.01 * target


def test_mlp_width_is_changed_when_qk_rank_cannot_reach():
    # hyperglu's tables at a long max_len outweigh anything qk_rank can add to softmax
    base = base_cfgs(d=32, max_len=256)
    matched, rows = match_budgets(base)
    row = {r["name"]: r for r in rows}
    assert "mlp_hidden" in row["softmax"]["changed"]
    assert matched["softmax"].mlp_hidden > base["softmax"].mlp_hidden
    counts = [count_params(c) for c in matched.values()]
    assert max(counts) <= 1.01 * min(counts)


def test_impossible_target_is_a_clear_error():
    with pytest.raises(BudgetError, match="cannot bring"):
        match_budgets(base_cfgs(), target=1000)

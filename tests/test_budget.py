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


# ------------------------------------------------------------------ rules: paper, and the ! bounds
from hypermlp.budget import UNMATCHED  # noqa: E402
from hypermlp.config import ConfigError  # noqa: E402
from hypermlp.variants import EXAMPLES, parse_variant  # noqa: E402


def variant_cfgs(names=EXAMPLES, d=64, max_len=64):
    return {n: ModelConfig(vocab_size=16, d_model=d, n_layers=2, mixer=n, mixer_args={"n_heads": 2}, max_len=max_len)
            for n in names}


def layer_configs(cfg):
    return [b.mixer.config for b in LanguageModel(cfg).blocks]


@pytest.mark.parametrize("d, max_len", [(64, 64), (128, 256)])
def test_paper_rule_keeps_the_reference_and_lands_every_matched_variant_within_one_percent(d, max_len):
    base = variant_cfgs(d=d, max_len=max_len)
    before = {n: count_params(c) for n, c in base.items()}
    matched, rows = match_budgets(base, rule="paper")  # default reference: the first softmax model, S-pc
    row = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == list(EXAMPLES)
    target = before["S-pc"]
    assert matched["S-pc"].to_dict() == base["S-pc"].to_dict() and row["S-pc"]["changed"] == "nothing (reference)"
    for name, cfg in matched.items():
        n = LanguageModel(cfg).num_params()
        assert row[name]["params"] == n
        if parse_variant(name).overparameterised:
            continue
        assert abs(n - target) <= 0.01 * target, (name, n, target)
        # the qk_rank never grows past the name's width, and the Rank letter's compression survives
        named = parse_variant(name).layer_args(d)
        for lay in layer_configs(cfg):
            assert lay.qk_rank <= named["qk_rank"] and lay.vo_rank == named["vo_rank"]
            assert (lay.conv_size, lay.qk_gate, lay.rope) == (named["conv_size"], named["qk_gate"], named["rope"])
    # the Tmix variants pay for their tables with QK rank first (Prop. I.2), then the MLP
    assert f"qk_rank {d // 4}->" in row["R-cg-q-12o"]["changed"] and row["R-cg-q-12o"]["qk_rank"] < d // 4
    assert layer_configs(matched["G-cg-q-12o"])[0].qk_rank == row["G-cg-q-12o"]["qk_rank"] < d // 4
    # compressed variants without tables are under budget: their MLP grows, their ranks stay
    assert row["S-c-q"]["changed"].startswith("mlp_hidden") and row["S-c-q"]["qk_rank"] == d // 4
    assert matched["S-c-v"].mlp_hidden > base["S-c-v"].mlp_hidden
    assert row["R-pc"]["changed"] == "nothing"  # same count as the reference already


def test_bounds_are_left_alone_under_both_rules():
    base = variant_cfgs()
    before = {n: count_params(c) for n, c in base.items()}
    for rule in ("paper", "grow"):
        matched, rows = match_budgets(base, rule=rule)
        for name in ("R-12!", "R-12o!"):
            r = next(r for r in rows if r["name"] == name)
            assert matched[name].to_dict() == base[name].to_dict()
            assert r["changed"] == UNMATCHED and r["params"] == r["params_before"] == before[name]
    # a bound does not set the grow rule's target: the largest matched model does
    matched, rows = match_budgets(variant_cfgs(["S-pc", "R-cg-q", "R-12!"]))
    assert before["R-12!"] > before["S-pc"] > before["R-cg-q"]
    assert next(r for r in rows if r["name"] == "S-pc")["changed"] == "nothing"
    assert abs(count_params(matched["R-cg-q"]) - before["S-pc"]) <= 0.01 * before["S-pc"]


def test_grow_rule_is_unchanged_by_the_rules():
    base = base_cfgs()
    assert match_budgets(base)[1] == match_budgets(base, rule="grow", tol=0.01, qk_max_factor=2.0)[1]


def test_paper_rule_takes_a_named_reference():
    base = variant_cfgs(["S-c-q", "S-pc", "R-cg-q-12o"])
    _, rows = match_budgets(base)  # grow: the largest
    matched, rows = match_budgets(base, rule="paper")  # default: the first all-softmax model
    assert rows[0]["changed"] == "nothing (reference)"
    matched, rows = match_budgets(base, rule="paper", reference="S-pc")
    target = count_params(base["S-pc"])
    assert [r["changed"] for r in rows][1] == "nothing (reference)"
    assert all(abs(count_params(c) - target) <= 0.01 * target for c in matched.values())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(rule="equal"), "budget rule must be one of"),
        (dict(rule="paper", reference="S-pcg"), "reference 'S-pcg' is not one of the models"),
        (dict(rule="paper", reference="R-12!"), "reference 'R-12!' is an over-parameterised bound"),
        (dict(rule="paper", target=1000), "takes neither target nor qk_max_factor"),
        (dict(rule="grow", reference="S-pc"), "reference applies to rule 'paper' only"),
    ],
)
def test_bad_rule_arguments_are_clear_errors(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        match_budgets(variant_cfgs(["S-pc", "R-cg-q-12o", "R-12!"]), **kwargs)
    assert needle in str(e.value), str(e.value)


def test_paper_rule_without_a_softmax_model_asks_for_a_reference():
    with pytest.raises(ConfigError, match="needs a reference"):
        match_budgets(variant_cfgs(["R-cg-q", "G-cg-q-12o"]), rule="paper")
    with pytest.raises(BudgetError, match="every model is an over-parameterised bound"):
        match_budgets(variant_cfgs(["R-12!", "R-12o!"]))

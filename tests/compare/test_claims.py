"""The claims check: the verdict rule, which suite mixer stands for which variant, "not run", and
the table and JSON forms."""

import math

import pytest

from hypermlp.compare import JobResult, Setting, TaskPlan, aggregate, load_suite
from hypermlp.compare.claims import (CLAIMS, MARGIN, Claim, check_claims, claims_record, claims_table, stand_ins,
                                     verdict)
from hypermlp.compare.settings import design_name
from hypermlp.compare.stats import Difference
from hypermlp.models import ModelConfig
from hypermlp.variants import EXAMPLES

GAIN = Claim("x", "a gain", "A", ">", "B", "mad")
NO_LOSS = Claim("y", "no loss", "A", "≥", "B", "lm")


@pytest.mark.parametrize("claim, diff, se, expected", [
    (GAIN, 0.10, 0.02, "supported"),  # 0.10 - 0.04 > 0
    (GAIN, 0.03, 0.02, "inconclusive"),  # lo < 0, hi = 0.07 >= δ = 0.02
    (GAIN, 0.0, 0.0, "not supported"),  # a tie (e.g. both at ceiling): any gain is below δ
    (GAIN, -0.10, 0.02, "not supported"),  # the other way round
    (GAIN, 0.10, math.nan, "inconclusive"),  # one seed a side: no SE
    (NO_LOSS, -0.005, 0.002, "supported"),  # at most 0.009 worse: within δ = 0.01
    (NO_LOSS, -0.02, 0.02, "inconclusive"),
    (NO_LOSS, -0.05, 0.01, "not supported"),  # hi = -0.03 < -δ
])
def test_the_verdict_rule(claim, diff, se, expected):
    assert verdict(claim, Difference(diff, se, 4.0)) == expected


def test_every_claim_names_design_study_variants():
    for c in CLAIMS:
        assert c.winner in EXAMPLES and c.other in EXAMPLES and c.relation in (">", "≥") and c.scope in MARGIN
    assert {c.id for c in CLAIMS} >= {"1a", "2", "3", "4", "5a", "5b", "6a", "7a", "7b"}


def test_registered_mixers_stand_for_the_variants_they_are():
    def cfg(mixer, **args):
        return ModelConfig(vocab_size=16, d_model=64, n_layers=1, mixer=mixer, max_len=16, mixer_args={"n_heads": 2, **args})

    assert design_name(cfg("hypermlp")) == "R-cg-q-12o" and design_name(cfg("hyperglu")) == "G-cg-q-12o"
    assert design_name(cfg("softmax", conv_size=4)) == "S-pc" and design_name(cfg("relu")) == "R-cg-q"
    assert design_name(cfg("R-12!")) == "R-12!" and design_name(cfg("softmax", conv_size=3)) is None
    suite = load_suite({"mixers": ["softmax", "sc", "hypermlp", "R-cg-q-12o"],
                        "variants": {"sc": {"mixer": "softmax", "mixer_args": {"conv_size": 4}}},
                        "tasks": [{"task": "lm", "train": {"steps": 1}}]})
    designs = {"softmax": "S-p", "sc": "S-pc", "hypermlp": "R-cg-q-12o", "R-cg-q-12o": "R-cg-q-12o"}
    plans = [TaskPlan(suite.tasks[0], (Setting(0, {}, "baseline", 8, 8, 1, {}, [], designs=designs),))]
    who = stand_ins(suite, plans)
    assert who["S-pc"] == "sc" and who["S-p"] == "softmax"
    assert who["R-cg-q-12o"] == "R-cg-q-12o"  # the mixer named so wins over hypermlp


def test_claims_run_where_the_suite_has_their_variants():
    suite = load_suite({"mixers": ["S-pc", "R-pc"], "seeds": [0, 1, 2], "budget": {"rule": "paper"},
                        "tasks": [{"task": "mad:in_context_recall", "train": {"epochs": 1}},
                                  {"task": "mad:compression", "train": {"epochs": 1}}]})
    designs = {"S-pc": "S-pc", "R-pc": "R-pc"}
    plans = [TaskPlan(e, (Setting(0, {}, "baseline", 8, 8, 1, {}, [], designs=designs),)) for e in suite.tasks]
    results = []
    for label in ("in_context_recall", "compression"):
        for mixer, base in (("S-pc", 0.50), ("R-pc", 0.80)):
            for seed in (0, 1, 2):
                acc = base + 0.01 * seed
                results.append(JobResult(id=0, label=label, setting=0, mixer=mixer, seed=seed, lr=1e-3, weight_decay=0.0,
                                         final={"val_acc": acc, "test_acc": acc, "test_macro_acc": acc},
                                         evals=[], steps=1, stopped_early=False))
    agg = aggregate(suite, plans, results)
    res = {r.claim.id: r for r in check_claims(suite, plans, agg)}
    assert res["1a"].verdict == "supported" and res["1a"].advantage.diff == pytest.approx(0.30)
    assert res["1b"].verdict == "not run" and res["1b"].why == "no lm task in the suite"
    assert res["2"].verdict == "not run" and "R-cg-q-12o and R-cg-q not in the suite" in res["2"].why
    table = claims_table(list(res.values()), agg.mad_tasks)
    assert table.startswith("The MAD mean of this table: MAD mean (2 tasks: in_context_recall, compression).")
    assert ("| 1a | softmax is not needed (S-pc ≈ R-pc) | `R-pc` ≥ `S-pc` | MAD mean (2 tasks), test macro acc % | 81.0 ± 2.5 [80.0, 81.0, 82.0] | 51.0 ± 2.5 [50.0, 51.0, 52.0] | "
            "+30.0 ± 1.6 | **supported** |") in table
    assert "not run (R-g-q-12o not in the suite)" in table
    record = {d["id"]: d for d in claims_record(list(res.values()))}
    assert record["1a"]["winner_score"]["values"] == pytest.approx([0.80, 0.81, 0.82])
    assert record["1a"]["verdict"] == "supported" and record["1a"]["margin"] == MARGIN["mad"]
    assert record["2"] == {"id": "2", "claim": "sequence mixing is the main gain", "paper": "MAD average 66.78 → 81.01",
                           "winner": "R-cg-q-12o", "relation": ">", "other": "R-cg-q", "scope": "mad",
                           "verdict": "not run", "why": "R-cg-q-12o and R-cg-q not in the suite"}

"""Targets are judged only in the setting they are defined for."""

import argparse

from hypermlp.bench.report import format_targets
from hypermlp.bench.targets import check_targets


def args(**over):
    base = dict(d_model=256, batch=2, dtype="fp32", lm_match="mlp")
    return argparse.Namespace(**{**base, **over})


RESULTS = {
    "layer": {"rows": [{"T": 2048, "mixer": "hyperglu", "fwd_bwd_ratio": 1.5},
                       {"T": 4096, "mixer": "hyperglu", "peak_extra_bytes": 100},
                       {"T": 8192, "mixer": "hyperglu", "peak_extra_bytes": 300}]},
    "decode": {"rows": [{"mixer": "hyperglu", "prompt": 1536, "new_tokens": 512, "speedup_vs_recompute": 30.0,
                         "cached_ratio": 1.2}]},
    "lm": {"rows": [{"mixer": "hyperglu", "throughput_ratio": 0.4}]},
}


def test_targets_in_their_setting_are_judged():
    rows = {r["target"].split(" (")[0]: r for r in check_targets(RESULTS, args())}
    assert [r["met"] for r in rows.values()] == [True, False, True, True, False]
    assert rows["HyperGLU peak training memory T=8192 / T=4096 <= 2.5"]["value"] == 3.0
    table = format_targets(list(rows.values()))
    assert "| met |" in table and "| MISSED |" in table


def test_other_settings_are_shown_but_not_judged():
    rows = check_targets(RESULTS, args(d_model=64))
    assert all(r["met"] is None and not r["setting_ok"] for r in rows)
    assert "n/a (other setting than the target's)" in format_targets(rows)
    missing = check_targets({"layer": {"rows": []}}, args())
    assert [r["value"] for r in missing] == [None, None] and "n/a (not measured)" in format_targets(missing)

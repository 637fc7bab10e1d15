"""Statistics over seeds: the t-quantile, 95% intervals, per-seed values, n=1 without '± 0.0',
Welch's difference."""

import math
import statistics

import pytest

from hypermlp.compare.stats import Estimate, difference, estimate, format_estimate, t_quantile


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                                   (40, 2.0211), (60, 2.0003), (120, 1.9799), (1e6, 1.96)])
def test_t_quantile_matches_the_table(df, t):
    assert t_quantile(df) == pytest.approx(t, abs=1e-3)
    assert math.isnan(t_quantile(0))


def test_fractional_df_lies_between_its_neighbours():
    assert t_quantile(2) > t_quantile(2.5) > t_quantile(3)


def test_three_seeds_give_a_t_interval_and_keep_every_value():
    e = estimate([0.5, 0.7, 0.6], seeds=[0, 1, 2])
    assert e.n == 3 and e.mean == pytest.approx(0.6) and e.values == (0.5, 0.7, 0.6) and e.seeds == (0, 1, 2)
    sd = statistics.stdev([0.5, 0.7, 0.6])
    assert e.std == pytest.approx(sd) and e.sem == pytest.approx(sd / math.sqrt(3))
    assert e.ci95 == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-4)  # t with 2 df, not 1.96
    assert e.interval() == (pytest.approx(0.6 - e.ci95), pytest.approx(0.6 + e.ci95))
    d = e.to_dict()
    assert d["values"] == [0.5, 0.7, 0.6] and d["seeds"] == [0, 1, 2] and d["n"] == 3 and d["ci95"] > 0


def test_nan_and_none_drop_out_with_their_seed():
    e = estimate([0.5, float("nan"), None, 0.7], seeds=[3, 4, 5, 6])
    assert e.values == (0.5, 0.7) and e.seeds == (3, 6)
    assert estimate([]).n == 0 and math.isnan(estimate([]).mean)


def test_one_seed_says_n1_and_never_plus_minus_zero():
    e = estimate([0.8], seeds=[0])
    assert e.n == 1 and math.isnan(e.ci95) and math.isnan(e.std)
    text = format_estimate(e, 100.0, 1)
    assert text == "80.0 (n=1)" and "±" not in text
    assert e.to_dict()["ci95"] is None and e.to_dict()["values"] == [0.8]
    assert format_estimate(Estimate(()), 100.0) == "n/a"
    assert format_estimate(estimate([0.5, 0.7, 0.6]), 100.0, 1) == "60.0 ± 24.8"
    assert format_estimate(estimate([0.5, 0.7]), 100.0, 1, n_expected=3).endswith("(n=2)")


def test_welch_difference():
    a, b = estimate([0.9, 0.8, 0.85]), estimate([0.5, 0.6, 0.4, 0.5])
    d = difference(a, b)
    va, vb = statistics.variance(a.values) / 3, statistics.variance(b.values) / 4
    assert d.diff == pytest.approx(a.mean - b.mean) and d.se == pytest.approx(math.sqrt(va + vb))
    assert d.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3))
    assert math.isnan(difference(a, estimate([0.5])).se)  # one seed: no standard error
    same = difference(estimate([1.0, 1.0]), estimate([1.0, 1.0, 1.0]))
    assert same.diff == 0 and same.se == 0

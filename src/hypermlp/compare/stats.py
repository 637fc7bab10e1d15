"""Statistics over seeds: the mean, a 95% interval from the t-distribution, the per-seed values,
and the difference of two mixers (Welch) that the claims check reads.

Seeds are few (3 by default), so intervals use Student's t with ``n - 1`` degrees of freedom, not
the normal 1.96. One seed has no spread: its estimate says ``n=1`` and carries no interval
(never "± 0.0").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

__all__ = ["Estimate", "Difference", "estimate", "difference", "t_quantile"]

# two-sided 95%: the 0.975 quantile of Student's t for 1..30 degrees of freedom
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t_quantile(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a table to 30, linear in
    between for Welch's fractional df, the Cornish-Fisher expansion beyond; within 1e-3)."""
    if not df >= 1:
        return math.nan
    if df <= 30:
        lo = int(df)
        if lo == df or lo == 30:
            return _T975[lo - 1]
        w = df - lo
        return (1 - w) * _T975[lo - 1] + w * _T975[lo]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds. ``values`` in seed order (NaN left out), ``seeds`` beside them."""

    values: Tuple[float, ...]
    seeds: Tuple[int, ...] = field(default=())

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (NaN below two seeds)."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    @property
    def sem(self) -> float:
        """Standard error of the mean (NaN below two seeds)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    @property
    def ci95(self) -> float:
        """Half-width of the 95% t-interval of the mean (NaN below two seeds)."""
        return t_quantile(self.n - 1) * self.sem if self.n > 1 else math.nan

    def interval(self) -> Tuple[float, float]:
        return self.mean - self.ci95, self.mean + self.ci95

    def to_dict(self) -> dict:
        """As written to results.json: NaN as null."""
        return {"n": self.n, "mean": _num(self.mean), "std": _num(self.std), "sem": _num(self.sem),
                "ci95": _num(self.ci95), "values": list(self.values), "seeds": list(self.seeds)}


def estimate(values: Sequence[Optional[float]], seeds: Sequence[int] = ()) -> Estimate:
    """An Estimate of the values that are numbers (None and NaN, e.g. a diverged seed, dropped
    together with their seed)."""
    seeds = list(seeds) or list(range(len(values)))
    kept = [(s, float(v)) for s, v in zip(seeds, values) if v is not None and not math.isnan(v)]
    return Estimate(values=tuple(v for _, v in kept), seeds=tuple(s for s, _ in kept))


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two estimates from different models: Welch's standard error and df."""

    diff: float
    se: float  # NaN when either side has fewer than two seeds
    df: float

    @property
    def ci95(self) -> float:
        return t_quantile(self.df) * self.se if not math.isnan(self.se) else math.nan

    def to_dict(self) -> dict:
        return {"diff": _num(self.diff), "se": _num(self.se), "df": _num(self.df), "ci95": _num(self.ci95)}


def difference(a: Estimate, b: Estimate) -> Difference:
    """``a.mean - b.mean`` with SE ``sqrt(s_a²/n_a + s_b²/n_b)`` (the seeds of two mixers are
    independent runs, so not paired) and the Welch-Satterthwaite degrees of freedom."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(diff, math.nan, math.nan)
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, 0.0, float(a.n + b.n - 2))
    df = (va + vb) ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
    return Difference(diff, se, df)


def _num(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else x


def format_estimate(e: Estimate, scale: float = 1.0, digits: int = 1, n_expected: Optional[int] = None) -> str:
    """``mean ± ci95`` at ``digits`` decimals; one seed: ``mean (n=1)``; none: ``n/a``. When
    fewer seeds than ``n_expected`` scored, the count is said: ``mean ± ci95 (n=2)``."""
    if e.n == 0:
        return "n/a"
    m = f"{scale * e.mean:.{digits}f}"
    if e.n == 1:
        return f"{m} (n=1)"
    text = f"{m} ± {scale * e.ci95:.{digits}f}"
    if n_expected is not None and e.n < n_expected:
        text += f" (n={e.n})"
    return text


__all__ += ["format_estimate"]

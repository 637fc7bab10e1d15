"""The claims check: each claim of the paper's design study, the comparison that tests it, the
numbers over seeds and a verdict at this scale.

A claim compares two design-study variants (``hypermlp.variants``) on one score: the MAD mean
(test macro accuracy, the MAD authors' metric, over the suite's MAD tasks) or the language
model's validation bits per byte. A suite mixer stands for a variant when its model, before
budget matching, *is* that variant (``hypermlp`` is ``R-cg-q-12o``, softmax with the conv is
``S-pc``; ``Setting.designs``). A claim whose variants or task are not in the suite is "not run".

The *advantage* is the claimed winner's score minus the other's, signed so that positive agrees
with the claim (for bits per byte, lower is better). Its standard error ``SE`` is Welch's over
the seeds of the two mixers (independent runs). With ``δ`` the margin of the score (``MARGIN``):

* a gain (``>``): **supported** if ``adv - 2 SE > 0``; else **not supported** if
  ``adv + 2 SE < δ`` (any gain is smaller than the margin); else **inconclusive**;
* no loss (``≥``, ``≈``): **supported** if ``adv - 2 SE > -δ``; else **not supported** if
  ``adv + 2 SE < -δ``; else **inconclusive**;
* fewer than two seeds on a side: **inconclusive** (no standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .aggregate import REPORT_METRICS, Aggregate, mad_mean_label
from .settings import TaskPlan
from .stats import Difference, Estimate, difference
from .suite import Suite

__all__ = ["Claim", "ClaimResult", "CLAIMS", "MARGIN", "RULE", "check_claims", "claims_table", "claims_record"]

MAD_METRIC = "test_macro_acc"  # the MAD authors' accuracy
LM_METRIC = "val_bpb"
MARGIN = {"mad": 0.02, "lm": 0.01}  # δ: 2 accuracy points on the MAD mean, 0.01 bits per byte on the LM
RULE = ("advantage = claimed winner minus the other (positive agrees with the claim), SE = Welch's over "
        "seeds; `>`: supported if adv − 2·SE > 0, not supported if adv + 2·SE < δ, else inconclusive; "
        "`≥`/`≈`: supported if adv − 2·SE > −δ, not supported if adv + 2·SE < −δ, else inconclusive; "
        "under two seeds a side: inconclusive. δ = 2 accuracy points (MAD mean), 0.01 bits/byte (LM).")


@dataclass(frozen=True)
class Claim:
    """``winner`` beats (``>``) or is at least as good as (``≥``) ``other`` on ``scope``."""

    id: str
    text: str
    winner: str  # variant name
    relation: str  # ">" or "≥"
    other: str
    scope: str  # "mad" (the MAD mean) or "lm"
    paper: str = ""  # what the paper reports


CLAIMS: Tuple[Claim, ...] = (
    Claim("1a", "softmax is not needed", "R-pc", "≥", "S-pc", "mad", "S-pc ≈ R-pc"),
    Claim("1b", "softmax is not needed", "R-pc", "≥", "S-pc", "lm", "S-pc ≈ R-pc"),
    Claim("2", "sequence mixing is the main gain", "R-cg-q-12o", ">", "R-cg-q", "mad", "MAD average 66.78 → 81.01"),
    Claim("3", "the lag layout is necessary", "R-12o!", ">", "R-12!", "mad", "collapse without it"),
    Claim("4", "two-sided mixing beats one-sided", "G-cg-q-12o", ">", "G-cg-q-1o", "mad", ""),
    Claim("5a", "QK compression beats VO compression", "S-c-q", ">", "S-c-v", "mad", ""),
    Claim("5b", "QK compression beats VO compression", "R-c-q", ">", "R-c-v", "mad", ""),
    Claim("6a", "the conv is not the source of the gain", "R-g-q-12o", ">", "S-pc", "mad", "no conv, still ahead"),
    Claim("6b", "the conv is not the source of the gain", "R-g-q-12o", ">", "R-pc", "mad", "no conv, still ahead"),
    Claim("7a", "HyperGLU ≥ HyperMLP at matched budget (LM)", "G-cg-q-12o", "≥", "R-cg-q-12o", "lm", ""),
    Claim("7b", "HyperMLP ≥ softmax at matched budget (LM)", "R-cg-q-12o", "≥", "S-pc", "lm", ""),
)


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    verdict: str  # supported | not supported | inconclusive | not run
    why: str = ""  # for "not run": what is missing
    score: str = ""  # what was compared, e.g. "MAD mean (6 tasks: ...), test macro acc %"
    winner_mixer: Optional[str] = None  # the suite mixers standing for the two variants
    other_mixer: Optional[str] = None
    winner: Optional[Estimate] = None
    other: Optional[Estimate] = None
    advantage: Optional[Difference] = None  # signed: positive agrees with the claim


def verdict(claim: Claim, adv: Difference) -> str:
    """The rule of the module docstring."""
    if math.isnan(adv.se) or math.isnan(adv.diff):
        return "inconclusive"
    delta = MARGIN[claim.scope]
    lo, hi = adv.diff - 2 * adv.se, adv.diff + 2 * adv.se
    if claim.relation == ">":
        return "supported" if lo > 0 else "not supported" if hi < delta else "inconclusive"
    return "supported" if lo > -delta else "not supported" if hi < -delta else "inconclusive"


def stand_ins(suite: Suite, plans: List[TaskPlan]) -> Dict[str, str]:
    """Variant name -> the suite mixer standing for it (one named so itself first, else the first
    in suite order whose model is that variant)."""
    designs: Dict[str, Optional[str]] = {}
    for plan in plans:
        for s in plan.settings[:1]:
            for mixer, name in s.designs.items():
                designs.setdefault(mixer, name)
    out: Dict[str, str] = {}
    for mixer in suite.mixers:  # a mixer named like the variant it is
        if designs.get(mixer) == mixer:
            out[mixer] = mixer
    for mixer in suite.mixers:
        name = designs.get(mixer)
        if name is not None and name not in out:
            out[name] = mixer
    return out


def check_claims(suite: Suite, plans: List[TaskPlan], agg: Aggregate) -> List[ClaimResult]:
    who = stand_ins(suite, plans)
    lm = next((p.entry.label for p in plans if p.entry.kind == "lm"), None)
    results = []
    for c in CLAIMS:
        missing = [v for v in (c.winner, c.other) if v not in who]
        if missing:
            results.append(ClaimResult(c, "not run", f"{' and '.join(missing)} not in the suite"))
            continue
        a, b = who[c.winner], who[c.other]
        if c.scope == "mad":
            if not agg.mad_tasks:
                results.append(ClaimResult(c, "not run", "no MAD task in the suite"))
                continue
            n = len(agg.mad_tasks)
            score = f"MAD mean ({n} task{'s' if n != 1 else ''}), test macro acc %"
            ea, eb = agg.mad_mean[a][MAD_METRIC], agg.mad_mean[b][MAD_METRIC]
            adv = difference(ea, eb)
        else:
            if lm is None:
                results.append(ClaimResult(c, "not run", "no lm task in the suite"))
                continue
            assert LM_METRIC in REPORT_METRICS["lm"]
            score = f"{lm}, val bits/byte (lower is better)"
            ea, eb = agg.table[(lm, a)][LM_METRIC], agg.table[(lm, b)][LM_METRIC]
            d = difference(ea, eb)
            adv = Difference(-d.diff, d.se, d.df)
        results.append(ClaimResult(c, verdict(c, adv), score=score, winner_mixer=a, other_mixer=b,
                                   winner=ea, other=eb, advantage=adv))
    return results


# ------------------------------------------------------------------------------------ output
def _cell(e: Optional[Estimate], scope: str) -> str:
    if e is None or e.n == 0:
        return "n/a"
    scale, digits = (100.0, 1) if scope == "mad" else (1.0, 4)
    mean = f"{scale * e.mean:.{digits}f}"
    seeds = ", ".join(f"{scale * v:.{digits}f}" for v in e.values)
    if e.n == 1:
        return f"{mean} (n=1)"
    return f"{mean} ± {scale * e.ci95:.{digits}f} [{seeds}]"


def _advantage(adv: Optional[Difference], scope: str) -> str:
    if adv is None or math.isnan(adv.diff):
        return "n/a"
    scale, digits = (100.0, 1) if scope == "mad" else (1.0, 4)
    if math.isnan(adv.se):
        return f"{scale * adv.diff:+.{digits}f} (no SE)"
    return f"{scale * adv.diff:+.{digits}f} ± {scale * 2 * adv.se:.{digits}f}"


def _name(variant: str, mixer: Optional[str]) -> str:
    return f"`{variant}`" if mixer in (None, variant) else f"`{variant}` (as `{mixer}`)"


def claims_table(results: List[ClaimResult], mad_tasks=()) -> str:
    """The claims section's table: one row per comparison (and the MAD tasks its MAD mean covers)."""
    lines = [f"The MAD mean of this table: {mad_mean_label(mad_tasks)}.", ""] if mad_tasks else []
    lines += ["| # | claim (paper) | comparison | score | winner: mean ± 95% CI [per seed] | other | "
             "advantage ± 2 SE | verdict |", "|---|---|---|---|---:|---:|---:|---|"]
    for r in results:
        c = r.claim
        text = f"{c.text} ({c.paper})" if c.paper else c.text
        comp = f"{_name(c.winner, r.winner_mixer)} {c.relation} {_name(c.other, r.other_mixer)}"
        if r.verdict == "not run":
            lines.append(f"| {c.id} | {text} | {comp} | {'MAD mean' if c.scope == 'mad' else 'lm'} | – | – | – | "
                         f"not run ({r.why}) |")
            continue
        lines.append(f"| {c.id} | {text} | {comp} | {r.score} | {_cell(r.winner, c.scope)} | "
                     f"{_cell(r.other, c.scope)} | {_advantage(r.advantage, c.scope)} | **{r.verdict}** |")
    return "\n".join(lines)


def claims_record(results: List[ClaimResult]) -> List[dict]:
    """The claims as written to results.json."""
    out = []
    for r in results:
        c = r.claim
        d = {"id": c.id, "claim": c.text, "paper": c.paper, "winner": c.winner, "relation": c.relation,
             "other": c.other, "scope": c.scope, "verdict": r.verdict}
        if r.verdict == "not run":
            d["why"] = r.why
        else:
            d.update(score=r.score, metric=MAD_METRIC if c.scope == "mad" else LM_METRIC, margin=MARGIN[c.scope],
                     winner_mixer=r.winner_mixer, other_mixer=r.other_mixer, winner_score=r.winner.to_dict(),
                     other_score=r.other.to_dict(), advantage=r.advantage.to_dict())
        out.append(d)
    return out

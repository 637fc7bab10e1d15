"""Matched parameter budgets for fair comparisons (docs/math.md §6).

A comparison between mixers only means something at (nearly) equal parameter counts. The paper
pays for the HyperMLP/HyperGLU sequence-mixing tables by shrinking the QK rank (its Prop. I.2:
per head ``2·d·(d_qk − d̃_qk) ≥ 4·t·r + 2·t + 2·d·r``), so that is the knob we turn first: for
every model we solve the mixer ``qk_rank`` (in steps that keep it divisible by the number of
score heads, and the per-head width even when RoPE is on) so its count lands on the target; when
no qk_rank in range gets within the tolerance, the SwiGLU ``mlp_hidden`` width moves as well.
Counts always come from building the model on the ``meta`` device (no memory, no init cost), so
they can never drift from the real model.

Two rules (``match_budgets(rule=...)``):

* ``grow`` (the default): the target is the largest model's count (or ``target``); qk_rank is
  searched in ``[step, qk_max_factor · d_model]``, so a small model may grow its QK rank.
* ``paper``: the target is the ``reference`` model's count (default: the first model whose
  layers are all softmax attention), and the reference keeps its configuration. Every other
  model's qk_rank is searched in ``[step, its own qk_rank]``: it shrinks to pay for what the
  model has on top of the reference (Prop. I.2) but never grows past the width the model was
  given, so a Rank letter's compression (``q``: qk_rank d/4, ``v``: vo_rank d/4) survives
  matching; the MLP width, shrunk or grown, takes the rest.

Under both rules a model with an over-parameterised-bound mixer (a ``!`` variant name,
``hypermlp.variants``) is left as it is and reported as unmatched; it does not set the target.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Tuple

import torch

from .config import ConfigError
from .models import LanguageModel, ModelConfig
from .registry import get_mixer

__all__ = ["BudgetError", "RULES", "UNMATCHED", "count_params", "qk_rank_step", "solve_mlp_hidden", "match_budgets",
           "is_overparameterised", "paper_reference", "format_budget_table"]

RULES = ("grow", "paper")
UNMATCHED = "unmatched (over-parameterised bound)"  # the `changed` of a `!` model's row
REFERENCE = "nothing (reference)"  # the `changed` of the paper rule's reference row
DEFAULT_QK_MAX_FACTOR = 2.0


class BudgetError(ConfigError):
    """The models cannot be brought within the tolerance of each other."""


def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count of ``LanguageModel(cfg)`` (tied weights counted once)."""
    with torch.device("meta"):
        return LanguageModel(copy.deepcopy(cfg)).num_params()


def _layer_config(mixer: str, d_model: int, mixer_args: dict):
    """One layer's config with its defaults filled in."""
    return get_mixer(mixer).layer_config(d_model, **mixer_args)


def qk_rank_step(cfg: ModelConfig) -> int:
    """Smallest qk_rank increment valid for every layer: a multiple of the score heads
    (``MixerSpec.score_heads``), doubled where RoPE needs even head widths."""
    step = 1
    for mixer in set(cfg.mixers()):
        lay = _layer_config(mixer, cfg.d_model, cfg.mixer_args)
        need = get_mixer(mixer).score_heads(lay.n_heads) * (2 if lay.rope else 1)
        step = step * need // math.gcd(step, need)
    return step


def is_overparameterised(cfg: ModelConfig) -> bool:
    """Whether a layer of the model is an over-parameterised bound (a ``!`` variant name)."""
    return any(get_mixer(m).overparameterised for m in set(cfg.mixers()))


def paper_reference(names_and_mixers: Dict[str, List[str]]) -> Optional[str]:
    """The paper rule's default reference: the first model (name -> its layers' mixer names)
    whose layers are all softmax attention and not a ``!`` bound; None when there is none."""
    for name, mixers in names_and_mixers.items():
        specs = [get_mixer(m) for m in mixers]
        if specs and all(s.base == "softmax" and not s.overparameterised for s in specs):
            return name
    return None


def _current_qk_rank(cfg: ModelConfig) -> int:
    if "qk_rank" in cfg.mixer_args:
        return int(cfg.mixer_args["qk_rank"])
    ranks = {_layer_config(m, cfg.d_model, cfg.mixer_args).qk_rank for m in cfg.mixers()}
    return max(ranks)  # hybrids with different defaults: report the larger


def _with(cfg: ModelConfig, qk_rank: Optional[int] = None, mlp_hidden: Optional[int] = None) -> ModelConfig:
    new = copy.deepcopy(cfg)
    if qk_rank is not None:
        new.mixer_args = {**new.mixer_args, "qk_rank": int(qk_rank)}
    if mlp_hidden is not None:
        new.mlp_hidden = int(mlp_hidden)
    return new


def _solve_qk(cfg: ModelConfig, target: int, qk_max: int) -> Tuple[int, int]:
    """Best qk_rank (multiple of the step, in [step, qk_max]) for ``target``; params are linear
    in qk_rank, so two counts give the slope and a final count checks the neighbours."""
    step = qk_rank_step(cfg)
    lo, hi = step, max(step, qk_max - qk_max % step)
    n_lo, n_hi = count_params(_with(cfg, qk_rank=lo)), count_params(_with(cfg, qk_rank=hi))
    per_step = (n_hi - n_lo) / max(1, (hi - lo) // step)
    guess = lo if per_step == 0 else lo + step * round((target - n_lo) / per_step)
    guess = min(max(guess, lo), hi)
    best = None
    for qk in (guess - step, guess, guess + step):
        if lo <= qk <= hi:
            n = count_params(_with(cfg, qk_rank=qk))
            if best is None or abs(n - target) < abs(best[1] - target):
                best = (qk, n)
    return best


def solve_mlp_hidden(cfg: ModelConfig, target: int) -> Tuple[int, int]:
    """Best SwiGLU ``mlp_hidden`` (>= 1) for a ``target`` count with everything else fixed (the
    count is linear in it); returns (mlp_hidden, count)."""
    h0 = cfg.mlp_hidden
    n0, n1 = count_params(cfg), count_params(_with(cfg, mlp_hidden=h0 + 1))
    per_unit = n1 - n0
    guess = max(1, h0 + round((target - n0) / per_unit))
    best = None
    for h in (guess - 1, guess, guess + 1):
        if h >= 1:
            n = count_params(_with(cfg, mlp_hidden=h))
            if best is None or abs(n - target) < abs(best[1] - target):
                best = (h, n)
    return best


def _match_grow(cfg: ModelConfig, target: int, tol: float, qk_max: int) -> ModelConfig:
    """The grow rule for one model off budget: qk_rank in [step, qk_max] first, then the MLP."""
    qk, n = _solve_qk(cfg, target, qk_max)
    new = _with(cfg, qk_rank=qk)
    # Aim at half the tolerance so that any two models stay within it of each other.
    if abs(n - target) > 0.5 * tol * target:
        # qk_rank alone cannot get there: move the MLP width, re-tune qk_rank on top,
        # then let the (finer-grained) MLP width absorb what is left
        hidden, _ = solve_mlp_hidden(new, target)
        qk, _ = _solve_qk(_with(new, mlp_hidden=hidden), target, qk_max)
        new = _with(new, qk_rank=qk, mlp_hidden=hidden)
        hidden, n = solve_mlp_hidden(new, target)
        new = _with(new, mlp_hidden=hidden)
    return new


def _match_paper(cfg: ModelConfig, target: int, tol: float) -> ModelConfig:
    """The paper rule for one model off budget: qk_rank in [step, its own qk_rank] (shrink to pay,
    never grow past the width it was given), then the MLP width takes what is left."""
    qk, n = _solve_qk(cfg, target, _current_qk_rank(cfg))
    new = _with(cfg, qk_rank=qk)
    if abs(n - target) > 0.5 * tol * target:
        hidden, _ = solve_mlp_hidden(new, target)
        new = _with(new, mlp_hidden=hidden)
    return new


def match_budgets(
    base_cfgs: Dict[str, ModelConfig],
    target: Optional[int] = None,
    tol: float = 0.01,
    qk_max_factor: Optional[float] = None,
    rule: str = "grow",
    reference: Optional[str] = None,
) -> Tuple[Dict[str, ModelConfig], List[dict]]:
    """Bring every model to (nearly) the same parameter count.

    Args:
        base_cfgs: name -> ModelConfig (not modified).
        target: rule grow: the count to reach; default the largest model's count.
        tol: allowed relative distance of each model from the target, and of any two matched
            models from each other.
        qk_max_factor: rule grow: qk_rank is searched in [step, qk_max_factor * d_model]
            (default 2).
        rule: ``grow`` or ``paper`` (module docstring).
        reference: rule paper: the model whose count is the target and which is left as it is;
            default the first all-softmax model.

    Returns:
        (name -> matched ModelConfig, report rows), both in the order of ``base_cfgs``. A row
        holds name, params, params_before, qk_rank, mlp_hidden, rel_diff (to the target) and
        ``changed``: what was adjusted, "nothing", "nothing (reference)" (rule paper) or
        "unmatched (over-parameterised bound)" for a ``!`` model, whose config is returned as is.

    Raises:
        BudgetError: when a model cannot get within ``tol`` even with mlp_hidden adjusted, or
        the final counts are not within ``tol`` of each other; a ConfigError for arguments that
        do not fit the rule.
    """
    if not base_cfgs:
        raise BudgetError("match_budgets needs at least one model")
    if rule not in RULES:
        raise ConfigError(f"budget rule must be one of {RULES}, got {rule!r}")
    for name, cfg in base_cfgs.items():
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"model {name!r}: {e}") from None
    bounds = {name for name, cfg in base_cfgs.items() if is_overparameterised(cfg)}
    if len(bounds) == len(base_cfgs):
        raise BudgetError(f"every model is an over-parameterised bound (!): {sorted(bounds)}; nothing to match")
    before = {name: count_params(cfg) for name, cfg in base_cfgs.items()}
    if rule == "paper":
        if target is not None or qk_max_factor is not None:
            raise ConfigError("rule 'paper' takes neither target nor qk_max_factor: the reference's count is the "
                              "target and each model's qk_rank only shrinks")
        if reference is None:
            reference = paper_reference({n: c.mixers() for n, c in base_cfgs.items()})
            if reference is None:
                raise ConfigError(f"rule 'paper' needs a reference and no model is all softmax attention "
                                  f"({sorted(base_cfgs)}); name one with reference=")
        if reference not in base_cfgs:
            raise ConfigError(f"reference {reference!r} is not one of the models {sorted(base_cfgs)}")
        if reference in bounds:
            raise ConfigError(f"reference {reference!r} is an over-parameterised bound (!), which is never matched")
        target = before[reference]
    else:
        if reference is not None:
            raise ConfigError("reference applies to rule 'paper' only; rule 'grow' takes a target count")
        target = int(target) if target is not None else max(before[n] for n in base_cfgs if n not in bounds)
    if target <= 0:
        raise BudgetError(f"target must be positive, got {target}")
    qk_max_factor = DEFAULT_QK_MAX_FACTOR if qk_max_factor is None else qk_max_factor

    matched, rows = {}, []
    for name, cfg in base_cfgs.items():
        qk0, h0 = _current_qk_rank(cfg), cfg.mlp_hidden
        changed = []
        if name in bounds or name == reference:
            new = copy.deepcopy(cfg)
            changed.append(UNMATCHED if name in bounds else REFERENCE)
        elif abs(before[name] - target) <= 0.5 * tol * target:
            new = copy.deepcopy(cfg)  # already on budget (e.g. the target model)
        else:
            if rule == "paper":
                new = _match_paper(cfg, target, tol)
            else:
                new = _match_grow(cfg, target, tol, int(qk_max_factor * cfg.d_model))
            qk = _current_qk_rank(new)
            if qk != qk0:
                changed.append(f"qk_rank {qk0}->{qk}")
            if new.mlp_hidden != h0:
                changed.append(f"mlp_hidden {h0}->{new.mlp_hidden}")
        n = count_params(new)  # the final word comes from the built model
        if name not in bounds and abs(n - target) > tol * target:
            raise BudgetError(
                f"cannot bring {name!r} ({before[name]:,} params) within {tol:.1%} of {target:,}: "
                f"best reachable is {n:,} (qk_rank={_current_qk_rank(new)}, mlp_hidden={new.mlp_hidden})"
            )
        matched[name] = new
        rows.append(dict(
            name=name,
            params=n,
            params_before=before[name],
            qk_rank=_current_qk_rank(new),
            mlp_hidden=new.mlp_hidden,
            rel_diff=(n - target) / target,
            changed=", ".join(changed) if changed else "nothing",
        ))

    counts = [r["params"] for r in rows if r["name"] not in bounds]
    spread = (max(counts) - min(counts)) / min(counts)
    if spread > tol:
        raise BudgetError(f"matched counts {counts} differ by {spread:.2%} > {tol:.1%}")
    return matched, rows


def format_budget_table(rows: List[dict]) -> str:
    """A markdown table of ``match_budgets`` report rows."""
    lines = [
        "| model | params | before | qk_rank | mlp_hidden | vs target | changed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['params_before']:,} | {r['qk_rank']} | {r['mlp_hidden']} "
            f"| {r['rel_diff']:+.2%} | {r['changed']} |"
        )
    return "\n".join(lines)

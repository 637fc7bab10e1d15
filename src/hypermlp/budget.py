"""Matched parameter budgets for fair comparisons (docs/math.md §6).

A comparison between mixers only means something at (nearly) equal parameter counts. The paper
pays for the HyperMLP/HyperGLU sequence-mixing tables by shrinking the QK rank, so that is the
knob we turn first: for every model we solve the mixer ``qk_rank`` (in steps that keep it
divisible by the number of score heads, and the per-head width even when RoPE is on) so its
count lands on the target. When no qk_rank in range gets within the tolerance, the SwiGLU
``mlp_hidden`` width is adjusted as well. Counts always come from building the model on the
``meta`` device (no memory, no init cost), so they can never drift from the real model.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Tuple

import torch

from .config import ConfigError
from .models import LanguageModel, ModelConfig
from .registry import get_mixer

__all__ = ["BudgetError", "count_params", "qk_rank_step", "solve_mlp_hidden", "match_budgets", "format_budget_table"]


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


def match_budgets(
    base_cfgs: Dict[str, ModelConfig],
    target: Optional[int] = None,
    tol: float = 0.01,
    qk_max_factor: float = 2.0,
) -> Tuple[Dict[str, ModelConfig], List[dict]]:
    """Bring every model to (nearly) the same parameter count.

    Args:
        base_cfgs: name -> ModelConfig (not modified).
        target: the count to reach; default the largest model's count.
        tol: allowed relative distance of each model from the target, and of any two models
            from each other.
        qk_max_factor: qk_rank is searched in [step, qk_max_factor * d_model].

    Returns:
        (name -> matched ModelConfig, report rows). A row holds name, params, params_before,
        qk_rank, mlp_hidden, rel_diff (to the target) and ``changed`` (what was adjusted).

    Raises:
        BudgetError: when a model cannot get within ``tol`` even with mlp_hidden adjusted, or
        the final counts are not within ``tol`` of each other.
    """
    if not base_cfgs:
        raise BudgetError("match_budgets needs at least one model")
    for name, cfg in base_cfgs.items():
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"model {name!r}: {e}") from None
    before = {name: count_params(cfg) for name, cfg in base_cfgs.items()}
    target = int(target) if target is not None else max(before.values())
    if target <= 0:
        raise BudgetError(f"target must be positive, got {target}")

    matched, rows = {}, []
    for name, cfg in base_cfgs.items():
        qk0, h0 = _current_qk_rank(cfg), cfg.mlp_hidden
        changed = []
        if abs(before[name] - target) <= 0.5 * tol * target:
            new, n = copy.deepcopy(cfg), before[name]  # already on budget (e.g. the target model)
        else:
            qk_max = int(qk_max_factor * cfg.d_model)
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
            if qk != qk0:
                changed.append(f"qk_rank {qk0}->{qk}")
            if new.mlp_hidden != h0:
                changed.append(f"mlp_hidden {h0}->{new.mlp_hidden}")
        n = count_params(new)  # the final word comes from the built model
        if abs(n - target) > tol * target:
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

    counts = [r["params"] for r in rows]
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

"""Task entries -> the data settings they are trained on, each with its models at matched
parameter budgets.

A task entry has one data setting, or for a full MAD preset one per change from the baseline.
The vocabulary and the length change the parameter count, so budgets are matched per setting
(``hypermlp.budget.match_budgets``, docs/math.md §6). Every setting's data are built here, once,
so that bad data settings surface before any training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..budget import count_params, format_budget_table, match_budgets
from ..config import ConfigError
from ..data.common import IGNORE_INDEX
from ..data.mad import mad_setting_label, mad_settings
from ..models import ModelConfig
from ..registry import get_mixer
from ..tasks import build_task
from ..variants import variant_name
from .suite import Suite, TaskEntry


@dataclass(frozen=True)
class Setting:
    """One data setting of a task entry and the models matched for it."""

    index: int  # position within its task entry
    data: Dict[str, Any]  # the data arguments of build_task
    label: str  # how it differs from the task's baseline, e.g. "vocab_size=32"
    vocab_size: int
    seq_len: int
    steps: int  # training steps of one run, 0 when unknown (a hint for scheduling)
    models: Dict[str, ModelConfig]  # suite mixer name -> its matched model
    budget_rows: List[dict]  # match_budgets' report rows
    # accuracy of the best constant guess (the commonest target: plain; any one class: macro),
    # from the validation targets; empty for the LM
    chance: Dict[str, float] = field(default_factory=dict)
    # suite mixer name -> the variant name its model has before matching (hypermlp ->
    # R-cg-q-12o), None where its arguments have none; the claims check reads it
    designs: Dict[str, Optional[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskPlan:
    """A task entry with its settings."""

    entry: TaskEntry
    settings: Tuple[Setting, ...]


def budget_key(entry: TaskEntry, s: Setting) -> str:
    """The heading of a setting's budget table in the report and results.json."""
    return f"{entry.label} / {s.label} (vocab {s.vocab_size}, length {s.seq_len})"


def plan_tasks(suite: Suite, log=print) -> List[TaskPlan]:
    """Every task entry of the suite with its settings, data built and budgets matched."""
    plans = []
    for entry in suite.tasks:
        settings: List[Setting] = []
        datas = data_settings(entry)
        for i, data in enumerate(datas):
            task, resolved = build_task(entry.task, data, suite.cache_dir)
            if entry.kind == "mad":
                label = mad_setting_label(entry.task[4:], resolved)
            else:
                label = "baseline" if len(datas) == 1 else f"setting {i}"
            base = {name: _model_config(suite, entry, name, task.vocab_size, task.seq_len) for name in suite.mixers}
            matched, rows = match_budgets(base, **_budget_args(suite.budget, base))
            settings.append(Setting(index=i, data=data, label=label, vocab_size=task.vocab_size, seq_len=task.seq_len,
                                    steps=_steps(entry, task), models=matched, budget_rows=rows,
                                    chance=chance_levels(task),
                                    designs={name: design_name(cfg) for name, cfg in base.items()}))
            log(f"\n[budget] {budget_key(entry, settings[-1])}\n{format_budget_table(rows)}")
        plans.append(TaskPlan(entry, tuple(settings)))
    return plans


def design_name(cfg: ModelConfig) -> Optional[str]:
    """The variant name (``hypermlp.variants``) of a model's mixer with its arguments, before
    budget matching: what the model is in the paper's naming, whatever the suite calls it."""
    try:
        spec = get_mixer(cfg.mixer)
        args = spec.layer_args(cfg.d_model, dict(cfg.mixer_args or {}))
        return variant_name(spec.base, cfg.d_model, args, spec.overparameterised)
    except ConfigError:
        return None


def chance_levels(task) -> Dict[str, float]:
    """Accuracy of the best constant prediction on a token task, from its validation targets
    (same distribution as the test split, whose labels nothing here reads): plain = the share of
    the commonest target, macro = one over the number of target classes. Empty for the LM."""
    data = getattr(task, "data", None)
    targets = getattr(data, "val_targets", None)
    if targets is None:
        return {}
    kept = targets[targets != IGNORE_INDEX].long()
    if kept.numel() == 0:
        return {}
    counts = torch.bincount(kept)
    return {"test_acc": float(counts.max()) / kept.numel(), "test_macro_acc": 1.0 / int((counts > 0).sum())}


def data_settings(entry: TaskEntry) -> List[dict]:
    """The data settings of one entry: one, or for a full MAD preset the baseline and one per
    change (the change wins over the entry's own reductions)."""
    if entry.kind != "mad" or entry.preset == "quick":
        return [dict(entry.data)]
    if entry.preset != "full":
        raise ConfigError(f"preset must be quick or full, got {entry.preset!r}")
    name = entry.task[4:]
    base = mad_settings(name, "quick")[0]
    out = []
    for s in mad_settings(name, "full"):
        changed = {k: v for k, v in s.items() if base.get(k) != v}
        out.append({**entry.data, **changed})
    return out


def _model_config(suite: Suite, entry: TaskEntry, name: str, vocab_size: int, seq_len: int) -> ModelConfig:
    """The model of mixer ``name`` on this task before matching: the suite's model, the entry's
    overrides, then a named mixer's own arguments on top."""
    named = suite.resolve(name)
    m = {"vocab_size": vocab_size, "max_len": seq_len, **suite.model, **entry.model, "mixer": named.mixer}
    if named.mixer_args:
        m["mixer_args"] = {**m.get("mixer_args", {}), **named.mixer_args}
    return ModelConfig.from_dict(m)


def _budget_args(budget: dict, base: Dict[str, ModelConfig]) -> dict:
    """match_budgets' keyword arguments (rule, reference, target, tol, ...); a mixer name as the
    grow rule's target means that model's count."""
    args = dict(budget)
    if isinstance(args.get("target"), str):
        args["target"] = count_params(base[args["target"]])
    return args


def _steps(entry: TaskEntry, task) -> int:
    epochs, batch_size = entry.train.get("epochs"), entry.train["batch_size"]
    if epochs and task.steps_per_epoch(batch_size):
        return epochs * task.steps_per_epoch(batch_size)
    return entry.train.get("steps") or 0

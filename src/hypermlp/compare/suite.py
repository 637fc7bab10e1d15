"""The compare suite: the YAML config checked into typed records, and the built-in default suite.

A suite names the mixers to compare (registered mixers, variant names such as ``R-cg-q-12o``
(``hypermlp.variants``), or named mixers from the YAML ``variants:`` section: one of those with
arguments of its own), the seeds, the model shared by every run, the budget rule
(``budget: {rule: grow | paper, reference, target, tol}``, ``hypermlp.budget``) and the task
entries. ``load_suite`` raises a ConfigError
naming the field at fault before anything runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

import torch

from ..budget import RULES, paper_reference
from ..config import ConfigError
from ..registry import get_mixer, mixer_names
from ..defaults import default_cache_dir, mad_protocol
from ..tasks import parse_task_name, resolve_train
from ..train import TrainConfig

__all__ = ["DEFAULT_SUITE", "NamedMixer", "Grid", "TaskEntry", "Suite", "load_suite"]

# `hypermlp compare` without --config: one MAD task and a short language-model run
DEFAULT_SUITE = {
    "tasks": [
        {"task": "mad:in_context_recall", "data": {"seq_len": 64, "num_train": 2048, "num_test": 256},
         "train": {"epochs": 8, "batch_size": 64}},
        {"task": "lm", "data": {"seq_len": 128, "max_bytes": 2_000_000, "eval_windows": 32},
         "train": {"steps": 200, "batch_size": 16, "warmup_steps": 20, "lr": 2e-3}},
    ],
    "model": {"d_model": 64, "n_layers": 2, "mixer_args": {"n_heads": 2}},
}

DEFAULT_SEEDS = (0, 1, 2)  # three seeds unless the config says otherwise: enough for a t-interval
SUITE_KEYS = {"mixers", "variants", "seeds", "workers", "threads_per_worker", "model", "budget", "tasks", "cache_dir", "device"}
TASK_KEYS = {"task", "label", "preset", "data", "train", "grid", "model"}
BUDGET_KEYS = {"rule", "reference", "target", "tol", "qk_max_factor"}
GRID_KEYS = ("lr", "weight_decay")


@dataclass(frozen=True)
class NamedMixer:
    """A mixer under its own name: ``mixer`` (registered or a variant name) with ``mixer_args`` of
    its own, e.g. ``softmax_conv`` = softmax attention with the Hyper layers' causal conv."""

    name: str
    mixer: str
    mixer_args: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    """The learning rates and weight decays every (setting, mixer, seed) is trained with; the
    best point is kept."""

    lr: Tuple[float, ...]
    weight_decay: Tuple[float, ...]

    def to_dict(self) -> dict:
        return {"lr": list(self.lr), "weight_decay": list(self.weight_decay)}


@dataclass(frozen=True)
class TaskEntry:
    """One entry of ``tasks:``, defaults filled in."""

    task: str  # mad:<name> | mqar | lm
    kind: str  # mad | mqar | lm
    label: str  # its name in the report
    preset: str  # MAD: quick (baseline setting) or full (+ one setting per change)
    data: Dict[str, Any]
    train: Dict[str, Any]  # a complete TrainConfig as a dict
    grid: Grid
    model: Dict[str, Any]  # overrides of the suite's model for this task

    def to_dict(self) -> dict:
        return {"task": self.task, "kind": self.kind, "label": self.label, "preset": self.preset,
                "data": self.data, "train": self.train, "grid": self.grid.to_dict(), "model": self.model}


@dataclass(frozen=True)
class Suite:
    """A checked compare config."""

    mixers: Tuple[str, ...]  # registered or named mixers, in report order
    seeds: Tuple[int, ...]
    workers: int  # parallel training processes
    threads_per_worker: int
    model: Dict[str, Any]  # ModelConfig fields shared by every run (not mixer, vocab_size, max_len)
    budget: Dict[str, Any]  # match_budgets arguments: rule, reference (paper), target (grow: None, an int or a mixer name), tol
    cache_dir: str
    device: str
    tasks: Tuple[TaskEntry, ...]
    named_mixers: Dict[str, NamedMixer]

    def resolve(self, name: str) -> NamedMixer:
        """What a mixer name of the suite builds: its named mixer, or the registered (or variant) one as is."""
        return self.named_mixers.get(name) or NamedMixer(name, name, {})

    def to_dict(self) -> dict:
        """The suite as written to results.json (named mixers under their YAML key, variants)."""
        return {
            "mixers": list(self.mixers), "seeds": list(self.seeds), "workers": self.workers,
            "threads_per_worker": self.threads_per_worker, "model": self.model, "budget": self.budget,
            "cache_dir": self.cache_dir, "device": self.device, "tasks": [t.to_dict() for t in self.tasks],
            "variants": {n: {"mixer": m.mixer, "mixer_args": m.mixer_args} for n, m in self.named_mixers.items()},
        }


def load_suite(cfg: dict) -> Suite:
    """Check a compare config (the parsed YAML) and fill in defaults."""
    if not isinstance(cfg, dict):
        raise ConfigError("the compare config must be a YAML mapping")
    unknown = sorted(set(cfg) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"unknown compare setting(s) {unknown}; known: {sorted(SUITE_KEYS)}")
    named = _named_mixers(cfg.get("variants") or {})
    mixers = _mixer_list(cfg.get("mixers") or mixer_names(), named)
    model = _mapping(cfg.get("model"), "model")
    for key in ("mixer", "vocab_size", "max_len"):
        if key in model:
            raise ConfigError(f"model.{key} is set by compare itself (mixers / the task); remove it")
    tasks = cfg.get("tasks")
    if not tasks or not isinstance(tasks, list):
        raise ConfigError("the compare config needs a non-empty list 'tasks'")
    entries: List[TaskEntry] = []
    for t in tasks:
        entry = _task_entry(t)
        if entry.label in {e.label for e in entries}:
            raise ConfigError(f"task label {entry.label!r} is used twice; give each entry its own 'label'")
        entries.append(entry)
    return Suite(
        mixers=mixers,
        seeds=_seeds(cfg.get("seeds") or list(DEFAULT_SEEDS)),
        workers=_int(cfg.get("workers") or 1, "workers"),
        threads_per_worker=_int(cfg.get("threads_per_worker") or max(1, torch.get_num_threads()), "threads_per_worker"),
        model=model,
        budget=_budget(cfg.get("budget"), mixers, named),
        cache_dir=cfg.get("cache_dir") or default_cache_dir(),
        device=cfg.get("device") or "auto",
        tasks=tuple(entries),
        named_mixers=named,
    )


def _named_mixers(variants) -> Dict[str, NamedMixer]:
    if not isinstance(variants, dict):
        raise ConfigError(f"variants must map names to named mixers, got {variants!r}")
    named = {}
    for name, v in variants.items():
        if (not isinstance(v, dict) or not isinstance(v.get("mixer"), str) or set(v) - {"mixer", "mixer_args"}
                or not isinstance(v.get("mixer_args") or {}, dict)):
            raise ConfigError(f"variants: {name!r} must be a mapping with 'mixer' (one of {mixer_names()} or a "
                              "variant name such as R-cg-q-12o) and optional 'mixer_args'")
        try:
            get_mixer(v["mixer"])
        except ConfigError as e:
            raise ConfigError(f"variants: {name!r}: {e}") from None
        named[name] = NamedMixer(name, v["mixer"], dict(v.get("mixer_args") or {}))
    return named


def _mixer_list(mixers, named: Dict[str, NamedMixer]) -> Tuple[str, ...]:
    if not isinstance(mixers, list):
        raise ConfigError(f"mixers must be a list of mixer names, got {mixers!r}")
    for m in mixers:
        if not isinstance(m, str):
            raise ConfigError(f"mixers: {m!r} is not a mixer name")
        if m in named:
            continue
        try:
            get_mixer(m)  # registered or a variant name; a bad letter is named
        except ConfigError as e:
            raise ConfigError(f"mixers: {e} (or a name under 'variants')") from None
    if len(set(mixers)) != len(mixers):
        raise ConfigError(f"mixers {mixers} repeat a name")
    return tuple(mixers)


def _task_entry(t) -> TaskEntry:
    """One ``tasks:`` entry: its training settings complete and checked, its lr x wd grid."""
    if not isinstance(t, dict) or "task" not in t:
        raise ConfigError(f"every entry of 'tasks' needs a 'task' key, got {t!r}")
    bad = sorted(set(t) - TASK_KEYS)
    if bad:
        raise ConfigError(f"unknown task setting(s) {bad} in {t['task']!r}; known: {sorted(TASK_KEYS)}")
    kind, name = parse_task_name(t["task"])
    preset = t.get("preset", "quick")
    user_train = _mapping(t.get("train"), f"{t['task']}: train")
    train = resolve_train(t["task"], user_train, preset)
    train = asdict(TrainConfig.from_dict(train).validate())  # bad keys or values -> error now
    grid = _mapping(t.get("grid"), f"{t['task']}: grid")
    if kind == "mad":
        # the MAD protocol's lr x weight-decay grid, unless the entry sets its own (or its own lr)
        protocol = mad_protocol(preset)["grid"]
        for key in GRID_KEYS:
            if key not in grid and key not in user_train:
                grid[key] = protocol[key]
    bad = sorted(set(grid) - set(GRID_KEYS))
    if bad:
        raise ConfigError(f"grid keys must be lr and/or weight_decay, got {bad}")
    return TaskEntry(
        task=t["task"], kind=kind, label=t.get("label") or (name or kind), preset=preset,
        data=_mapping(t.get("data"), f"{t['task']}: data"), train=train,
        grid=Grid(lr=_numbers(grid.get("lr") or [train["lr"]], "grid.lr"),
                  weight_decay=_numbers(grid.get("weight_decay") or [train["weight_decay"]], "grid.weight_decay")),
        model=_mapping(t.get("model"), f"{t['task']}: model"),
    )


def _budget(budget, mixers: Tuple[str, ...], named: Dict[str, NamedMixer]) -> Dict[str, Any]:
    """The budget section checked. Rule grow (the default) is kept as given; rule paper gets its
    reference filled in (the first softmax mixer when not named)."""
    budget = _mapping(budget, "budget")
    bad = sorted(set(budget) - BUDGET_KEYS)
    if bad:
        raise ConfigError(f"unknown budget setting(s) {bad}; known: {', '.join(sorted(BUDGET_KEYS))}")
    rule = budget.get("rule", "grow")
    if rule not in RULES:
        raise ConfigError(f"budget.rule must be one of {', '.join(RULES)}, got {rule!r}")

    def base(m: str) -> str:
        return named[m].mixer if m in named else m

    def bound(m: str) -> bool:
        return get_mixer(base(m)).overparameterised

    if rule == "grow":
        if "reference" in budget:
            raise ConfigError("budget.reference applies to rule paper only; with rule grow set budget.target "
                              "(null, a count or a mixer name) or add rule: paper")
        target = budget.get("target")
        if isinstance(target, str):  # a mixer name: everyone matches that model
            if target not in mixers:
                raise ConfigError(f"budget target {target!r} is not one of the mixers {sorted(mixers)}")
            if bound(target):
                raise ConfigError(f"budget target {target!r} is an over-parameterised bound (!), never matched; "
                                  "pick a matched mixer")
        return budget
    for key in ("target", "qk_max_factor"):
        if key in budget:
            raise ConfigError(f"budget.{key} does not apply to rule paper (the reference's count is the target "
                              "and qk_rank only shrinks); remove it or use rule grow")
    reference = budget.get("reference")
    if reference is None:
        reference = paper_reference({m: [base(m)] for m in mixers})
        if reference is None:
            raise ConfigError(f"budget.rule paper needs a reference and no mixer is softmax attention "
                              f"({list(mixers)}); set budget.reference")
    elif reference not in mixers:
        raise ConfigError(f"budget.reference {reference!r} is not one of the mixers {list(mixers)}")
    elif bound(reference):
        raise ConfigError(f"budget.reference {reference!r} is an over-parameterised bound (!), never matched; "
                          "pick a matched mixer")
    return {**budget, "rule": "paper", "reference": reference}


def _mapping(value, what: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping, got {value!r}")
    return dict(value)


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return value


def _seeds(seeds) -> Tuple[int, ...]:
    if not isinstance(seeds, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a list of integers, got {seeds!r}")
    return tuple(seeds)


def _numbers(xs, what: str) -> Tuple[float, ...]:
    if not isinstance(xs, list):
        xs = [xs]
    try:
        return tuple(float(x) for x in xs)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a list of numbers, got {xs!r}") from None

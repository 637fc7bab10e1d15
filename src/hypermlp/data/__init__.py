"""Data generators for the HyperMLP benchmarks: MAD tasks, MQAR and a text corpus."""

from __future__ import annotations

from typing import Any, Callable

from .common import (
    IGNORE_INDEX,
    DataError,
    TaskData,
    cache_path,
    cached,
    derive_rngs,
    load_task,
    save_task,
    score_predictions,
    settings_key,
)
from .mad import (
    MAD_CHANGES,
    MAD_NUM_TEST,
    MAD_TASKS,
    compression,
    fuzzy_in_context_recall,
    in_context_recall,
    mad_setting_label,
    mad_settings,
    memorization,
    noisy_in_context_recall,
    selective_copying,
)
from .mqar import mqar, mqar_query_gaps
from .text import (
    DEFAULT_CORPUS_MAX_BYTES,
    Corpus,
    batch_iterator,
    bits_per_byte,
    default_corpus_root,
    eval_windows,
    get_batch,
    load_corpus,
)

# Every synthetic task generator by name.
TASKS: dict[str, Callable[..., TaskData]] = {**MAD_TASKS, "mqar": mqar}


def make_task(name: str, cache_dir=None, **settings: Any) -> TaskData:
    """Generate (or load from ``cache_dir``) the task ``name`` with ``settings``."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return cached(TASKS[name], cache_dir, name=name, **settings)


__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "TaskData",
    "cache_path",
    "cached",
    "derive_rngs",
    "load_task",
    "save_task",
    "score_predictions",
    "settings_key",
    "MAD_CHANGES",
    "MAD_NUM_TEST",
    "MAD_TASKS",
    "compression",
    "fuzzy_in_context_recall",
    "in_context_recall",
    "mad_setting_label",
    "mad_settings",
    "memorization",
    "noisy_in_context_recall",
    "selective_copying",
    "mqar",
    "mqar_query_gaps",
    "DEFAULT_CORPUS_MAX_BYTES",
    "Corpus",
    "batch_iterator",
    "bits_per_byte",
    "default_corpus_root",
    "eval_windows",
    "get_batch",
    "load_corpus",
    "TASKS",
    "make_task",
]

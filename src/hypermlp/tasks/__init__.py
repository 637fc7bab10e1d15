"""Tasks: what the Trainer trains on. ``build_task("mad:in_context_recall", data)`` gives the
task and its resolved data settings; ``base.Task`` is the contract every task meets.

* ``lm``: next-token prediction on a text corpus (``lm.LMTask``);
* ``mad:<name>``, ``mqar``: supervised token tasks, MAD compression with its decoder head
  (``token.TokenTask``, ``token.CompressionTask``);
* ``samplers``: the resumable batch samplers.

The tasks and their protocols: docs/math.md §8.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ..config import ConfigError
from ..defaults import LM_DATA, MQAR_DATA, default_cache_dir, train_defaults
from .base import Task, batched_logits
from .lm import LMTask
from .samplers import EpochSampler, WindowSampler
from .token import CompressionModel, CompressionTask, TokenTask, task_from_data

__all__ = [
    "Task",
    "batched_logits",
    "WindowSampler",
    "EpochSampler",
    "LMTask",
    "TokenTask",
    "CompressionTask",
    "CompressionModel",
    "task_from_data",
    "TASK_HELP",
    "parse_task_name",
    "build_task",
    "resolve_train",
]

TASK_HELP = "mad:<name> (one of the six MAD tasks), mqar, or lm"


def parse_task_name(task: str) -> Tuple[str, Optional[str]]:
    """'mad:in_context_recall' -> ('mad', 'in_context_recall'); 'lm' -> ('lm', None)."""
    from ..data.mad import MAD_TASKS

    if not isinstance(task, str):
        raise ConfigError(f"task must be a string ({TASK_HELP}), got {task!r}")
    if task in ("lm", "mqar"):
        return task, None
    if task.startswith("mad:") and task[4:] in MAD_TASKS:
        return "mad", task[4:]
    raise ConfigError(f"unknown task {task!r}; choose {TASK_HELP}: MAD tasks are {sorted(MAD_TASKS)}")


def resolve_train(task: str, user: dict, preset: str = "quick") -> dict:
    """The task's training defaults overridden by ``user``; a user ``steps`` without ``epochs``
    means steps (it drops the task's default epochs)."""
    kind, _ = parse_task_name(task)
    train = {**train_defaults(kind, preset), **user}
    if user.get("steps") is not None and user.get("epochs") is None:
        train["epochs"] = None
    return train


def build_task(task: str, data: Optional[dict] = None, cache_dir: Optional[str] = None):
    """The task for a task name and its data settings; returns (task, resolved settings).

    ``data`` overrides the task's defaults: the MAD baseline (``mad_settings(name)[0]``),
    ``defaults.MQAR_DATA``, or for ``lm`` ``defaults.LM_DATA`` (path, tokenizer, seq_len,
    eval_windows, max_bytes, bpe_vocab_size, val_fraction, seed); an ``lm`` path that is a
    ``hypermlp prepare`` folder is read from its memory-mapped shards, its manifest fixing the
    tokenizer and the split. The synthetic tasks take
    ``num_val`` (validation sequences; None = ``num_test``).
    """
    from ..data import make_task
    from ..data.mad import mad_settings

    kind, name = parse_task_name(task)
    data = dict(data or {})
    if kind == "lm":
        from ..data.shards import is_prepared
        from ..data.text import load_corpus

        s = _check_lm_data(_merge_known(LM_DATA, data, "lm data"))
        if is_prepared(s["path"]):
            corpus = _prepared_corpus(s, data)
            s["source"], s["vocab_size"] = corpus.source, corpus.vocab_size
            return LMTask(corpus, seq_len=s["seq_len"], eval_windows=s["eval_windows"]), s
        corpus = load_corpus(
            s["path"], tokenizer=s["tokenizer"], bpe_vocab_size=s["bpe_vocab_size"],
            val_fraction=s["val_fraction"], cache_dir=cache_dir or default_cache_dir(),
            seed=s["seed"], max_bytes=s["max_bytes"],
        )
        s["source"] = corpus.source  # recorded in run.yaml for the reader
        s["vocab_size"] = corpus.vocab_size
        return LMTask(corpus, seq_len=s["seq_len"], eval_windows=s["eval_windows"]), s
    if kind == "mqar":
        s = _held_out(_merge_known(MQAR_DATA, data, "mqar data"))
        try:
            task_data = make_task("mqar", cache_dir, **s)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"mqar: {e}") from None
        return TokenTask(task_data, label="mqar"), s
    base = mad_settings(name, "quick")[0]  # the seed, like every setting, comes from data when given
    s = _held_out(_merge_known(base, data, f"{name} data"))
    if name == "fuzzy_in_context_recall" and "vocab_size" in data and "num_keys" not in data:
        s["num_keys"] = (s["vocab_size"] - 1) // 2  # keys follow the vocabulary, as in MAD
    try:
        task_data = make_task(name, cache_dir, **s)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None
    return task_from_data(task_data, label=name), s


def _check_lm_data(s: dict) -> dict:
    """Every ``lm`` data setting's type and range (a ConfigError naming it), before any reading."""
    def is_int(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    if s["path"] is not None and not isinstance(s["path"], str):
        raise ConfigError(f"lm data path must be a file or folder name, got {s['path']!r}")
    if s["tokenizer"] not in ("byte", "bpe"):
        raise ConfigError(f"lm data tokenizer must be byte or bpe, got {s['tokenizer']!r}")
    for name, lo, optional in (("seq_len", 1, False), ("eval_windows", 1, True), ("max_bytes", 1, True),
                               ("bpe_vocab_size", 257, False), ("seed", 0, False)):
        v = s[name]
        if not (optional and v is None) and not is_int(v, lo):
            what = " (or null)" if optional else ""
            raise ConfigError(f"lm data {name} must be an integer >= {lo}{what}, got {v!r}")
    v = s["val_fraction"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ConfigError(f"lm data val_fraction must be a number in (0, 1), got {v!r}")
    return s


def _prepared_corpus(s: dict, given: dict):
    """The corpus of a ``hypermlp prepare`` folder: its manifest fixes the tokenizer and the split,
    so ``s`` takes them from there, and a different value the user gave is an error."""
    from ..data.shards import load_prepared, read_manifest

    made = read_manifest(s["path"])["settings"]
    fixed = {k: made.get(k) for k in ("tokenizer", "val_fraction", "seed", "bpe_vocab_size")}
    fixed["max_bytes"] = None
    if made.get("tokenizer") != "bpe":
        fixed["bpe_vocab_size"] = s["bpe_vocab_size"]  # means nothing for bytes
    for k, v in fixed.items():
        if k in given and given[k] != v:
            raise ConfigError(f"lm data {k}={given[k]!r}, but the prepared corpus in {s['path']} was made with "
                              f"{k}={v!r} (it is fixed by `hypermlp prepare`)")
    s.update(fixed)
    return load_prepared(s["path"])


def _held_out(s: dict) -> dict:
    """``num_val`` None = as many validation sequences as test ones, written out (run.yaml and
    the cache key say the number)."""
    if s.get("num_val") is None:
        s["num_val"] = s.get("num_test")
    return s


def _merge_known(defaults: dict, overrides: dict, what: str) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **overrides}

"""Shared containers, errors, seeding, caching and scoring for the data generators.

Conventions used by every task generator in :mod:`hypermlp.data`:

* Inputs and targets are ``torch.long`` tensors of shape ``(N, T)``, aligned
  position by position: the model at position ``t`` predicts ``targets[:, t]``.
* ``IGNORE_INDEX`` (-100) marks a position that is not trained on (in the
  ``train_targets``) or not scored (in the ``test_targets``); it matches the
  default ``ignore_index`` of :func:`torch.nn.functional.cross_entropy`.
* ``train_targets`` hold what the loss trains on; ``val_targets`` and
  ``test_targets`` hold only the scored positions.  For most tasks both use the
  same mask; the in-context recall family trains on every next token but scores
  only recalled values.
* Three splits: train (what the loss sees), validation (what early stopping and
  hyperparameter selection read) and test (reported only, never used to choose
  anything).  Validation and test are drawn the same way from different streams.
* Randomness comes only from ``numpy.random.Generator`` objects derived from the
  explicit ``seed`` argument (see :func:`derive_rngs`); global random state is
  never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "IGNORE_INDEX",
    "VAL_STREAM",
    "CACHE_FORMAT_VERSION",
    "DataError",
    "TaskData",
    "derive_rngs",
    "settings_key",
    "cache_path",
    "atomic_torch_save",
    "save_task",
    "load_task",
    "cached",
    "score_predictions",
]

IGNORE_INDEX = -100
VAL_STREAM = 3  # derive_rngs(seed, 4)[VAL_STREAM] draws every task's validation split

# Bump when the on-disk layout or any generator's output changes, so that
# stale cache entries are never reused.  2: every task holds a validation split.
CACHE_FORMAT_VERSION = 2


class DataError(ValueError):
    """A data source is missing, empty, unreadable or otherwise unusable."""


@dataclass
class TaskData:
    """A generated train / validation / test split of a sequence task.

    Attributes:
        train_inputs: ``(N_train, T)`` long token ids.
        train_targets: ``(N_train, T)`` long; ``-100`` = position not trained on.
        test_inputs: ``(N_test, T)`` long token ids.
        test_targets: ``(N_test, T)`` long; ``-100`` = position not scored.
        val_inputs, val_targets: ``(N_val, T)``, drawn like the test split from a
            stream of its own (``None`` only for hand-made data; the tasks need it).
        vocab_size: model vocabulary size; every id in inputs and (non-ignored)
            targets is ``< vocab_size``, special tokens included.
        name: task name (the generator's name, e.g. ``"in_context_recall"``).
        settings: every generator argument, including ``seed`` (plus a few
            descriptive entries such as ``readout`` where a task needs them).
    """

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    vocab_size: int
    name: str
    settings: dict = field(default_factory=dict)
    val_inputs: torch.Tensor | None = None
    val_targets: torch.Tensor | None = None

    # ------------------------------------------------------------------ info
    @property
    def seq_len(self) -> int:
        return int(self.train_inputs.shape[1])

    @property
    def num_train(self) -> int:
        return int(self.train_inputs.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_inputs.shape[0])

    @property
    def num_val(self) -> int:
        return 0 if self.val_inputs is None else int(self.val_inputs.shape[0])

    def validate(self) -> "TaskData":
        """Check shapes, dtypes and id ranges; raise ``ValueError`` if broken."""
        pairs = [
            ("train", self.train_inputs, self.train_targets),
            ("test", self.test_inputs, self.test_targets),
        ]
        if (self.val_inputs is None) != (self.val_targets is None):
            raise ValueError(f"{self.name}: give both val_inputs and val_targets, or neither")
        if self.val_inputs is not None:
            pairs.append(("val", self.val_inputs, self.val_targets))
        for split, x, y in pairs:
            if x.dtype != torch.long or y.dtype != torch.long:
                raise ValueError(f"{self.name}: {split} tensors must be torch.long")
            if x.dim() != 2 or x.shape != y.shape:
                raise ValueError(
                    f"{self.name}: {split} inputs {tuple(x.shape)} and targets "
                    f"{tuple(y.shape)} must be equal 2-D shapes"
                )
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ValueError(f"{self.name}: {split} input ids out of [0, vocab_size)")
            kept = y[y != IGNORE_INDEX]
            if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= self.vocab_size):
                raise ValueError(f"{self.name}: {split} target ids out of [0, vocab_size)")
        widths = {x.shape[1] for _, x, _ in pairs}
        if len(widths) > 1:
            raise ValueError(f"{self.name}: the splits have different sequence lengths {sorted(widths)}")
        return self

    # ----------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict:
        return {
            "train_inputs": self.train_inputs,
            "train_targets": self.train_targets,
            "test_inputs": self.test_inputs,
            "test_targets": self.test_targets,
            "vocab_size": int(self.vocab_size),
            "name": str(self.name),
            "settings": _plain(self.settings),
            "val_inputs": self.val_inputs,
            "val_targets": self.val_targets,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TaskData":
        return cls(
            train_inputs=d["train_inputs"],
            train_targets=d["train_targets"],
            test_inputs=d["test_inputs"],
            test_targets=d["test_targets"],
            vocab_size=int(d["vocab_size"]),
            name=str(d["name"]),
            settings=dict(d["settings"]),
            val_inputs=d.get("val_inputs"),
            val_targets=d.get("val_targets"),
        )


# --------------------------------------------------------------------- seeding
def derive_rngs(seed: int, n: int) -> list[np.random.Generator]:
    """``n`` independent generators derived from ``seed``.

    Uses ``np.random.SeedSequence(seed).spawn(n)``, so the streams are
    statistically independent and fully determined by ``seed``; stream ``i``
    is the same whatever ``n`` (``spawn`` numbers its children), so adding a
    stream never changes the others.  Task generators use stream 0 for
    training data, stream 1 for test data, stream 2 for anything shared between
    the splits (the global key->value map of the memorization task) and
    stream 3 for validation data (:data:`VAL_STREAM`).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    children = np.random.SeedSequence(int(seed)).spawn(n)
    return [np.random.default_rng(c) for c in children]


# --------------------------------------------------------------------- caching
def _plain(obj: Any) -> Any:
    """Convert settings to plain JSON-able Python (tuples -> lists, numpy -> py)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"setting value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


def settings_key(name: str, settings: dict) -> str:
    """sha256 hex digest of the task name + settings (sorted JSON)."""
    payload = json.dumps(
        {"name": name, "settings": _plain(settings), "format": CACHE_FORMAT_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cache_path(cache_dir: str | os.PathLike, name: str, settings: dict) -> Path:
    """Where the cache entry for ``name`` + ``settings`` lives."""
    safe = "".join(c if (c.isalnum() or c in "-_") else "_" for c in name)
    return Path(cache_dir) / f"{safe}-{settings_key(name, settings)[:24]}.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same directory, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_task(task: TaskData, path: str | os.PathLike) -> None:
    atomic_torch_save(task.to_dict(), path)


def load_task(path: str | os.PathLike) -> TaskData:
    return TaskData.from_dict(torch.load(path, map_location="cpu", weights_only=True))


def cached(
    fn: Callable[..., TaskData],
    cache_dir: str | os.PathLike | None,
    name: str | None = None,
    **settings: Any,
) -> TaskData:
    """Call ``fn(**settings)``, memoised on disk under ``cache_dir``.

    The cache key is the sha256 of the task name (``name`` or ``fn.__name__``)
    and the settings as sorted JSON.  Pass every argument that matters
    explicitly (including ``seed``): the key covers only what is passed, so two
    calls that rely on different defaults of an edited generator would collide;
    :data:`CACHE_FORMAT_VERSION` guards against such edits.  A corrupt or
    mismatching entry is regenerated.  ``cache_dir=None`` disables caching.
    """
    task_name = name or getattr(fn, "__name__", "task")
    if cache_dir is None:
        return fn(**settings)
    path = cache_path(cache_dir, task_name, settings)
    if path.exists():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("cache_settings") == _plain(settings) and d.get("cache_name") == task_name:
                return TaskData.from_dict(d)
        except Exception:  # corrupt/partial/old entry: fall through and rebuild
            pass
    task = fn(**settings)
    d = task.to_dict()
    d["cache_settings"] = _plain(settings)
    d["cache_name"] = task_name
    atomic_torch_save(d, path)
    return task


# --------------------------------------------------------------------- scoring
def score_predictions(pred: torch.Tensor, targets: torch.Tensor) -> dict:
    """Accuracy of ``pred`` against ``targets`` over the scored positions.

    Args:
        pred: ``(N, T)`` predicted token ids (e.g. ``logits.argmax(-1)``).
        targets: ``(N, T)`` target ids, ``-100`` at positions that are not scored.

    Returns:
        ``dict(acc=..., macro_acc=..., n_scored=...)`` where ``acc`` is the plain
        fraction of scored positions predicted exactly, and ``macro_acc`` is the
        accuracy computed separately for each target token id present among
        the scored positions and then averaged over those ids (each class
        weighs equally).  Both are ``nan`` when nothing is scored.
    """
    pred = torch.as_tensor(pred)
    targets = torch.as_tensor(targets)
    if pred.shape != targets.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and targets {tuple(targets.shape)} differ in shape")
    mask = targets != IGNORE_INDEX
    t = targets[mask].long()
    p = pred[mask].long()
    n = int(t.numel())
    if n == 0:
        return {"acc": float("nan"), "macro_acc": float("nan"), "n_scored": 0}
    correct = (p == t).to(torch.float64)
    acc = float(correct.mean())
    classes, inverse = torch.unique(t, return_inverse=True)
    per_class_correct = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, correct)
    per_class_count = torch.bincount(inverse, minlength=len(classes)).to(torch.float64)
    macro = float((per_class_correct / per_class_count).mean())
    return {"acc": acc, "macro_acc": macro, "n_scored": n}

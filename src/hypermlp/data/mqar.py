"""Multi-query associative recall (MQAR) from Zoology (Arora et al., arXiv 2312.04927).

Implemented from the paper's description.  Id layout for ``V = vocab_size``:

* ``0``: filler id for positions that hold neither a pair nor a query (never a
  key or a value, never a target)
* keys: ``1 .. V//2 - 1``
* values: ``V//2 .. V - 1``

Sequence layout for ``T = seq_len`` and ``D = num_pairs``:

* positions ``0 .. 2D-1``: the ``D`` key-value pairs ``k1 v1 k2 v2 ... kD vD``
  (keys distinct within a sequence, values uniform with replacement);
* the remaining ``R = T - 2D`` positions form ``R // 2`` two-token query slots;
  slot ``j`` (``j = 0, 1, ...``) starts at position ``2D + 2j`` and lies at gap
  ``g = j + 1`` (in slots) from the end of the pairs block.  Each key is queried
  exactly once: ``D`` distinct slots are drawn by weighted sampling without
  replacement with weights ``p(g) ∝ g^(a-1)`` (``a = power_a``; Gumbel-top-k,
  i.e. exactly successive draws from the power law with already used slots
  removed, which is how collisions are resolved), and the keys, in a random
  order, are assigned to the chosen slots.  A query slot holds ``key value``
  (the value is the next token, so it is visible only after the prediction,
  as in a causal LM).  Unused slots (and a trailing odd position) hold ``0``.

Labels: the target at a query key's position is its value; every other
position is ``-100``, in train, validation and test alike.  The validation
split (``num_val`` sequences, default ``num_test``) comes from a stream of its
own (:data:`~hypermlp.data.common.VAL_STREAM`), so the train and test arrays do
not depend on it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..defaults import MQAR_DATA
from .common import IGNORE_INDEX, VAL_STREAM, TaskData, derive_rngs

__all__ = ["mqar", "mqar_query_gaps"]


def _distinct_keys(rng, n, k, low, high):
    """(n, k) integers in [low, high), distinct within each row."""
    span = high - low
    if k > span:
        raise ValueError(f"cannot draw {k} distinct keys from {span} ids")
    if span <= 4 * k or span <= 64:
        return np.argsort(rng.random((n, span)), axis=1)[:, :k] + low
    out = rng.integers(low, high, size=(n, k))
    while True:
        s = np.sort(out, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if len(bad) == 0:
            return out
        out[bad] = rng.integers(low, high, size=(len(bad), k))


def _mqar_split(rng, n, seq_len, num_pairs, vocab_size, power_a):
    half = vocab_size // 2
    d = num_pairs
    n_slots = (seq_len - 2 * d) // 2
    keys = _distinct_keys(rng, n, d, 1, half)
    values = rng.integers(half, vocab_size, size=(n, d))
    x = np.zeros((n, seq_len), dtype=np.int64)
    y = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    x[:, 0 : 2 * d : 2] = keys
    x[:, 1 : 2 * d : 2] = values
    # power-law slot choice without replacement (Gumbel-top-k)
    gaps = np.arange(1, n_slots + 1, dtype=np.float64)
    logw = (power_a - 1.0) * np.log(gaps)
    scores = logw[None, :] + rng.gumbel(size=(n, n_slots))
    slots = np.argpartition(-scores, d - 1, axis=1)[:, :d] if d < n_slots else np.tile(np.arange(n_slots), (n, 1))
    # assign keys in random order to the chosen slots
    order = np.argsort(rng.random((n, d)), axis=1)
    q_keys = np.take_along_axis(keys, order, axis=1)
    q_vals = np.take_along_axis(values, order, axis=1)
    qpos = 2 * d + 2 * slots
    np.put_along_axis(x, qpos, q_keys, axis=1)
    np.put_along_axis(x, qpos + 1, q_vals, axis=1)
    np.put_along_axis(y, qpos, q_vals, axis=1)
    return torch.from_numpy(x).long(), torch.from_numpy(y).long()


def mqar(
    seq_len: int,
    num_pairs: int,
    vocab_size: int = MQAR_DATA["vocab_size"],
    num_train: int = 100_000,
    num_test: int = 3_000,
    power_a: float = MQAR_DATA["power_a"],
    seed: int = 0,
    num_val: int | None = None,
) -> TaskData:
    """Generate an MQAR train / validation / test split (layout in the module docstring).

    Requires ``seq_len - 2 * num_pairs >= 2 * num_pairs`` (room for one query
    slot per key) and ``vocab_size // 2 - 1 >= num_pairs`` (distinct keys).
    """
    if num_val is None:
        num_val = num_test
    for name, v, lo in (("seq_len", seq_len, 4), ("num_pairs", num_pairs, 1), ("vocab_size", vocab_size, 4),
                        ("num_train", num_train, 1), ("num_test", num_test, 1), ("num_val", num_val, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if (seq_len - 2 * num_pairs) // 2 < num_pairs:
        raise ValueError(f"seq_len={seq_len} leaves too few query slots for num_pairs={num_pairs}")
    if vocab_size // 2 - 1 < num_pairs:
        raise ValueError(f"vocab_size={vocab_size} has too few key ids for num_pairs={num_pairs}")
    if not (0.0 < float(power_a) <= 1.0):
        raise ValueError(f"power_a must be in (0, 1], got {power_a}")
    settings = dict(
        seq_len=int(seq_len),
        num_pairs=int(num_pairs),
        vocab_size=int(vocab_size),
        num_train=int(num_train),
        num_test=int(num_test),
        num_val=int(num_val),
        power_a=float(power_a),
        seed=int(seed),
    )
    rngs = derive_rngs(seed, VAL_STREAM + 1)
    r_train, r_test, r_val = rngs[0], rngs[1], rngs[VAL_STREAM]
    args = (int(seq_len), int(num_pairs), int(vocab_size), float(power_a))
    tr_x, tr_y = _mqar_split(r_train, int(num_train), *args)
    te_x, te_y = _mqar_split(r_test, int(num_test), *args)
    va_x, va_y = _mqar_split(r_val, int(num_val), *args)
    return TaskData(
        train_inputs=tr_x,
        train_targets=tr_y,
        test_inputs=te_x,
        test_targets=te_y,
        vocab_size=int(vocab_size),
        name="mqar",
        settings=settings,
        val_inputs=va_x,
        val_targets=va_y,
    ).validate()


def mqar_query_gaps(inputs: torch.Tensor, targets: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """Gap (in query slots, 1-based) of every labelled query, flattened; for analysis/tests."""
    pos = torch.nonzero(targets != IGNORE_INDEX)[:, 1]
    return (pos - 2 * num_pairs) // 2 + 1

"""The six synthetic tasks of the MAD benchmark (Poli et al. 2024, arXiv 2403.17844).

Implemented from the task descriptions in the paper; the token-id layout of each
task is spelled out in its docstring.  ``vocab_size`` is always the task's
nominal vocabulary as MAD defines it and is also the model vocabulary of the
returned :class:`TaskData`: special tokens (pad, blank, copy / insert /
compression markers, noise ids) are carved out of that vocabulary, following
MAD, never added on top of it.

Label conventions (see :mod:`hypermlp.data.common`):

* recall family (``in_context_recall``, ``fuzzy_in_context_recall``,
  ``noisy_in_context_recall``): next-token prediction.  ``train_targets`` hold the
  next token at every position (the noisy task ignores positions whose next
  token is a noise id); ``test_targets`` keep only the positions whose next
  token is a value (token) belonging to a key that already occurred earlier in
  the same sequence, i.e. the positions where the answer is determined by the
  context.
* ``selective_copying``: next-token prediction; only the answer slots after the
  copy marker are trained on and scored.
* ``compression``: ``targets == inputs``; the model must rebuild the whole input
  from the representation at the last position (``settings['readout'] ==
  'last_position'``).  Every position is scored.
* ``memorization``: only the positions holding the insert marker carry a
  target (the value of the preceding key); trained and scored there.

Every generator takes an explicit ``seed``; the train, test and validation
splits come from independent streams derived from it (:func:`derive_rngs`), so
they differ.  The validation split (``num_val`` sequences, default as many as
``num_test``) is drawn exactly like the test split and is what early stopping
and hyperparameter selection read; the test split is only reported.
Every generator has the same shell: ``settings = dict(locals())`` (all of its
arguments, so ``fn(**data.settings)`` regenerates the task), ``_held_out_sizes``,
``_check_ints``, the checks of its own, then ``_generate`` with its split function.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable

import numpy as np
import torch

from .common import IGNORE_INDEX, VAL_STREAM, TaskData, derive_rngs

__all__ = [
    "in_context_recall",
    "fuzzy_in_context_recall",
    "noisy_in_context_recall",
    "selective_copying",
    "compression",
    "memorization",
    "MAD_TASKS",
    "MAD_CHANGES",
    "MAD_NUM_TEST",
    "mad_settings",
    "mad_setting_label",
]

MAD_NUM_TEST = 1280


# =========================================================================
# helpers
# =========================================================================
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_ints(settings: dict, **minimums: int) -> None:
    """Every integer argument named in ``minimums`` is an int >= its minimum (checked in order)."""
    for name, minimum in minimums.items():
        _check_int(name, settings[name], minimum)


def _generate(name: str, settings: dict, split: Callable, test_split: Callable | None = None) -> TaskData:
    """What every generator shares once its arguments are checked: independent streams from
    ``settings['seed']`` (:func:`derive_rngs`: 0 train, 1 test, 3 validation), a train, a test
    and a validation split drawn with ``split(rng, n)`` (or ``test_split`` for the two held-out
    ones), assembled into a TaskData. Each split is (inputs, train_targets, score_targets);
    train keeps its train targets, test and validation their score targets. The validation
    stream is a fourth one, so the train and test arrays are what they were before it existed."""
    rngs = derive_rngs(settings["seed"], VAL_STREAM + 1)
    r_train, r_test, r_val = rngs[0], rngs[1], rngs[VAL_STREAM]
    tr_x, tr_y, _ = split(r_train, settings["num_train"])
    te_x, _, te_y_score = (test_split or split)(r_test, settings["num_test"])
    va_x, _, va_y_score = (test_split or split)(r_val, settings["num_val"])
    return TaskData(
        train_inputs=tr_x,
        train_targets=tr_y,
        test_inputs=te_x,
        test_targets=te_y_score,
        vocab_size=int(settings["vocab_size"]),
        name=name,
        settings=dict(settings),
        val_inputs=va_x,
        val_targets=va_y_score,
    ).validate()


def _held_out_sizes(settings: dict) -> None:
    """``num_val=None`` means as many validation sequences as test ones (recorded as a number)."""
    if settings.get("num_val") is None:
        settings["num_val"] = settings["num_test"]


def _repeat_mask(codes: np.ndarray) -> np.ndarray:
    """``out[i, j]`` is True iff ``codes[i, j]`` occurs in ``codes[i, :j]``."""
    n, m = codes.shape
    if m == 0:
        return np.zeros((n, 0), dtype=bool)
    order = np.argsort(codes, axis=1, kind="stable")
    sorted_codes = np.take_along_axis(codes, order, axis=1)
    # stable sort keeps equal codes in order of position, so every element of a
    # run of equal codes except the first is a repeat
    rep_sorted = np.zeros((n, m), dtype=bool)
    rep_sorted[:, 1:] = sorted_codes[:, 1:] == sorted_codes[:, :-1]
    out = np.empty_like(rep_sorted)
    np.put_along_axis(out, order, rep_sorted, axis=1)
    return out


def _next_token_split(s: np.ndarray, train_keep: np.ndarray | None, score_keep: np.ndarray):
    """From full sequences ``s`` (N, T+1) build inputs and the two target tensors.

    ``train_keep`` / ``score_keep`` are boolean (N, T+1) masks over the tokens of
    ``s`` that are trained on / scored *as targets*; ``None`` = keep all.
    """
    inputs = torch.from_numpy(np.ascontiguousarray(s[:, :-1])).long()
    nxt = s[:, 1:]
    if train_keep is None:
        train_t = nxt.copy()
    else:
        train_t = np.where(train_keep[:, 1:], nxt, IGNORE_INDEX)
    score_t = np.where(score_keep[:, 1:], nxt, IGNORE_INDEX)
    return (
        inputs,
        torch.from_numpy(np.ascontiguousarray(train_t)).long(),
        torch.from_numpy(np.ascontiguousarray(score_t)).long(),
    )


# =========================================================================
# in-context recall
# =========================================================================
def _recall_split(rng, n, vocab_size, seq_len):
    num_keys = vocab_size // 2
    num_values = vocab_size - num_keys
    n_pairs = (seq_len + 2) // 2  # enough pairs for T+1 tokens
    # per-sequence key -> value map
    kv = rng.integers(num_keys, num_keys + num_values, size=(n, num_keys))
    keys = rng.integers(0, num_keys, size=(n, n_pairs))
    vals = np.take_along_axis(kv, keys, axis=1)
    s = np.stack([keys, vals], axis=2).reshape(n, 2 * n_pairs)
    score = np.zeros((n, 2 * n_pairs), dtype=bool)
    score[:, 1::2] = _repeat_mask(keys)  # value tokens of already-seen keys
    s, score = s[:, : seq_len + 1], score[:, : seq_len + 1]
    return _next_token_split(s, None, score)


def in_context_recall(
    vocab_size: int = 16,
    seq_len: int = 128,
    num_train: int = 12_800,
    num_test: int = MAD_NUM_TEST,
    num_val: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Multi-query associative recall.

    Id layout (``V = vocab_size``, no special tokens; MAD's multi-query variant
    uses the whole vocabulary for content):

    * keys:   ``0 .. V//2 - 1``
    * values: ``V//2 .. V - 1``

    Each sequence draws its own key->value map (every key gets a uniformly
    random value, with replacement), then is a stream of ``key value`` pairs
    with keys drawn uniformly (with repetition): ``k v k v ...``; inputs are the
    first ``T`` tokens and targets the next tokens, so even positions hold keys
    whose target is their value.  Train targets: next token everywhere.  Test
    targets: only even positions whose key already occurred earlier in the
    sequence (the value is then determined by the context).
    """
    settings = dict(locals())  # every argument: TaskData.settings regenerates the task
    _held_out_sizes(settings)
    _check_ints(settings, vocab_size=4, seq_len=4, num_train=1, num_test=1, num_val=1)
    return _generate("in_context_recall", settings, partial(_recall_split, vocab_size=vocab_size, seq_len=seq_len))


# =========================================================================
# fuzzy in-context recall
# =========================================================================
def _motifs(rng, shape, low, high, width, pad_id):
    """Random motifs of 1..width tokens from [low, high), left-padded to width with pad_id.

    Returns ``(tokens (…, width), codes (…))``; ``codes`` is an injective integer
    encoding of the padded motif.
    """
    lengths = rng.integers(1, width + 1, size=shape)
    toks = rng.integers(low, high, size=shape + (width,))
    pos = np.arange(width)
    is_pad = pos < (width - lengths[..., None])  # left padding
    toks = np.where(is_pad, pad_id, toks)
    base = high - low + 1
    digits = np.where(is_pad, 0, toks - low + 1)
    codes = (digits * (base ** pos)).sum(axis=-1)
    return toks, codes


def _fuzzy_split(rng, n, vocab_size, seq_len, key_motif_len, value_motif_len, num_keys):
    pad = vocab_size - 1
    content = vocab_size - 1
    k_lo, k_hi = 0, content // 2
    v_lo, v_hi = content // 2, content
    # per-sequence set of distinct key motifs (rejection-resample rows with duplicates)
    key_toks, key_codes = _motifs(rng, (n, num_keys), k_lo, k_hi, key_motif_len, pad)
    dup = _repeat_mask(key_codes)  # later copies of an already drawn motif
    while dup.any():
        r, c = np.nonzero(dup)
        t, code = _motifs(rng, (len(r),), k_lo, k_hi, key_motif_len, pad)
        key_toks[r, c], key_codes[r, c] = t, code
        dup = _repeat_mask(key_codes)
    # per-sequence map: each key motif -> a random value motif
    val_toks, _ = _motifs(rng, (n, num_keys), v_lo, v_hi, value_motif_len, pad)
    width = key_motif_len + value_motif_len
    n_pairs = -(-(seq_len + 1) // width)
    which = rng.integers(0, num_keys, size=(n, n_pairs))
    kb = np.take_along_axis(key_toks, which[:, :, None], axis=1)  # (n, P, kw)
    vb = np.take_along_axis(val_toks, which[:, :, None], axis=1)  # (n, P, vw)
    s = np.concatenate([kb, vb], axis=2).reshape(n, n_pairs * width)
    rep = _repeat_mask(which)  # (n, P)
    score = np.zeros((n, n_pairs, width), dtype=bool)
    score[:, :, key_motif_len:] = rep[:, :, None] & (vb != pad)
    score = score.reshape(n, n_pairs * width)
    s = s[:, : seq_len + 1]
    score = score[:, : seq_len + 1]
    return _next_token_split(s, None, score)


def fuzzy_in_context_recall(
    vocab_size: int = 16,
    seq_len: int = 128,
    num_train: int = 12_800,
    num_test: int = MAD_NUM_TEST,
    num_val: int | None = None,
    key_motif_len: int = 3,
    value_motif_len: int = 3,
    num_keys: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Fuzzy (multi-token) associative recall.

    Id layout (``V = vocab_size``; the pad id is carved out of ``V`` as in MAD):

    * ``C = V - 1`` content ids; key tokens ``0 .. C//2 - 1``,
      value tokens ``C//2 .. C - 1``
    * pad: ``V - 1`` (the last id)

    A key is a motif of 1..``key_motif_len`` key tokens and a value a motif of
    1..``value_motif_len`` value tokens (length uniform, tokens uniform), each
    left-padded with the pad id to its fixed width, so every pair occupies
    ``key_motif_len + value_motif_len`` positions: ``[pad* key][pad* value]``.
    Each sequence has its own set of ``num_keys`` distinct key motifs (default:
    the number of key token ids, ``C//2``; a motif that duplicates an earlier
    one of the set is redrawn) and its own map key motif -> value
    motif; pairs are drawn with keys uniform over that set.  Train targets:
    next token everywhere (pads included).  Test targets: the non-pad tokens of
    value motifs whose key motif already occurred earlier in the sequence.
    """
    settings = dict(locals())
    _held_out_sizes(settings)
    _check_ints(settings, vocab_size=5, seq_len=4, num_train=1, num_test=1, num_val=1, key_motif_len=1, value_motif_len=1)
    n_key_ids = (vocab_size - 1) // 2
    if num_keys is None:
        num_keys = settings["num_keys"] = n_key_ids
    _check_int("num_keys", num_keys, 1)
    motif_space = sum(n_key_ids**L for L in range(1, key_motif_len + 1))
    if num_keys > motif_space:
        raise ValueError(f"num_keys={num_keys} exceeds the {motif_space} possible key motifs")
    split = partial(_fuzzy_split, vocab_size=vocab_size, seq_len=seq_len, key_motif_len=key_motif_len,
                    value_motif_len=value_motif_len, num_keys=num_keys)
    return _generate("fuzzy_in_context_recall", settings, split)


# =========================================================================
# noisy in-context recall
# =========================================================================
def _noisy_split(rng, n, vocab_size, seq_len, noise_vocab_size, frac_noise):
    content = vocab_size - noise_vocab_size
    num_keys = content // 2
    num_values = content - num_keys
    total = seq_len + 1
    n_noise = int(round(frac_noise * total))
    n_pairs = max(1, -(-(total - n_noise) // 2))
    units = n_pairs + n_noise
    # random order of units (pair units = perm value < n_pairs)
    perm = np.argsort(rng.random((n, units)), axis=1)
    is_pair = perm < n_pairs
    lengths = np.where(is_pair, 2, 1)
    starts = np.cumsum(lengths, axis=1) - lengths
    length_all = 2 * n_pairs + n_noise
    rows = np.broadcast_to(np.arange(n)[:, None], (n, units))

    kv = rng.integers(num_keys, num_keys + num_values, size=(n, num_keys))
    keys = rng.integers(0, num_keys, size=(n, n_pairs))  # in order of appearance
    vals = np.take_along_axis(kv, keys, axis=1)
    noise = rng.integers(content, vocab_size, size=(n, n_noise))

    s = np.empty((n, length_all), dtype=np.int64)
    is_noise_tok = np.zeros((n, length_all), dtype=bool)
    score = np.zeros((n, length_all), dtype=bool)
    pr, ps = rows[is_pair], starts[is_pair]  # row-major: sequence order within a row
    s[pr, ps] = keys.ravel()
    s[pr, ps + 1] = vals.ravel()
    score[pr, ps + 1] = _repeat_mask(keys).ravel()
    nr, ns = rows[~is_pair], starts[~is_pair]
    s[nr, ns] = noise.ravel()
    is_noise_tok[nr, ns] = True
    s, score, is_noise_tok = s[:, :total], score[:, :total], is_noise_tok[:, :total]
    return _next_token_split(s, ~is_noise_tok, score)


def noisy_in_context_recall(
    vocab_size: int = 32,
    seq_len: int = 128,
    num_train: int = 12_800,
    num_test: int = MAD_NUM_TEST,
    num_val: int | None = None,
    noise_vocab_size: int = 16,
    frac_noise: float = 0.2,
    seed: int = 0,
) -> TaskData:
    """Multi-query associative recall with noise tokens interleaved.

    Id layout (``V = vocab_size``; the noise ids are carved out of ``V`` as in
    MAD, so baseline ``V = 32`` = 16 content + 16 noise):

    * ``C = V - noise_vocab_size`` content ids; keys ``0 .. C//2 - 1``,
      values ``C//2 .. C - 1``
    * noise: ``C .. V - 1``

    The sequence is a random interleaving of ``key value`` pairs (per-sequence
    key->value map, keys uniform) and single noise tokens (uniform over the
    noise ids).  Noise never splits a pair.  ``round(frac_noise * (T+1))`` of the
    ``T+1`` tokens behind each (inputs, targets) row are noise (up to one
    token lost when the last unit is cut at the sequence end).  Train targets:
    next token, except positions whose next token is noise (ignored, since
    noise is unpredictable by design).  Test targets: the values of keys that
    already occurred earlier in the sequence.
    """
    settings = dict(locals())
    _held_out_sizes(settings)
    _check_ints(settings, vocab_size=5, seq_len=4, num_train=1, num_test=1, num_val=1, noise_vocab_size=1)
    if vocab_size - noise_vocab_size < 2:
        raise ValueError("vocab_size - noise_vocab_size must leave at least 2 content ids")
    if not (0.0 <= float(frac_noise) < 1.0):
        raise ValueError(f"frac_noise must be in [0, 1), got {frac_noise}")
    frac_noise = settings["frac_noise"] = float(frac_noise)
    split = partial(_noisy_split, vocab_size=vocab_size, seq_len=seq_len, noise_vocab_size=noise_vocab_size,
                    frac_noise=frac_noise)
    return _generate("noisy_in_context_recall", settings, split)


# =========================================================================
# selective copying
# =========================================================================
def _selective_copy_split(rng, n, vocab_size, seq_len, num_tokens_to_copy):
    blank, copy_marker = vocab_size - 2, vocab_size - 1
    k = num_tokens_to_copy
    ctx = seq_len - k  # context length; full sequence = ctx + marker + k answers = T + 1
    toks = rng.integers(0, vocab_size - 2, size=(n, k))
    pos = np.sort(np.argsort(rng.random((n, ctx)), axis=1)[:, :k], axis=1)
    s = np.full((n, seq_len + 1), blank, dtype=np.int64)
    np.put_along_axis(s[:, :ctx], pos, toks, axis=1)
    s[:, ctx] = copy_marker
    s[:, ctx + 1 :] = toks
    keep = np.zeros_like(s, dtype=bool)
    keep[:, ctx + 1 :] = True
    return _next_token_split(s, keep, keep)


def selective_copying(
    vocab_size: int = 16,
    seq_len: int = 256,
    num_tokens_to_copy: int = 16,
    num_train: int = 12_800,
    num_test: int = MAD_NUM_TEST,
    num_val: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Copy the non-blank tokens, in order, after a copy marker.

    Id layout (``V = vocab_size``; both special ids carved out of ``V``):

    * content: ``0 .. V - 3``
    * blank: ``V - 2``
    * copy marker: ``V - 1``

    With ``T = seq_len`` and ``k = num_tokens_to_copy``: a context of ``T - k``
    positions holds ``k`` uniform content tokens at uniformly chosen distinct
    positions, blanks elsewhere; then the copy marker, then the ``k`` tokens
    again in order (teacher forcing).  Inputs are the first ``T`` of these
    ``T + 1`` tokens; targets are the next tokens at positions ``T - k .. T - 1``
    (the marker and the first ``k - 1`` answers predict the ``k`` answers) and
    ``-100`` elsewhere, for both training and scoring.
    """
    settings = dict(locals())
    _held_out_sizes(settings)
    _check_ints(settings, vocab_size=3, seq_len=2, num_tokens_to_copy=1, num_train=1, num_test=1, num_val=1)
    if seq_len - num_tokens_to_copy < num_tokens_to_copy:
        raise ValueError(
            f"seq_len={seq_len} too short to hold {num_tokens_to_copy} tokens in the context and the answer"
        )
    split = partial(_selective_copy_split, vocab_size=vocab_size, seq_len=seq_len, num_tokens_to_copy=num_tokens_to_copy)
    return _generate("selective_copying", settings, split)


# =========================================================================
# compression
# =========================================================================
def _compression_split(rng, n, vocab_size, seq_len):
    x = np.empty((n, seq_len), dtype=np.int64)
    x[:, :-1] = rng.integers(0, vocab_size - 1, size=(n, seq_len - 1))
    x[:, -1] = vocab_size - 1
    xt = torch.from_numpy(x).long()
    return xt, xt.clone(), xt.clone()


def compression(
    vocab_size: int = 16,
    seq_len: int = 32,
    num_train: int = 12_800,
    num_test: int = MAD_NUM_TEST,
    num_val: int | None = None,
    seed: int = 0,
    readout: str = "last_position",
) -> TaskData:
    """Compress a random sequence into the last position's representation.

    Id layout (``V = vocab_size``; the marker is carved out of ``V``):

    * content: ``0 .. V - 2``
    * compression marker: ``V - 1``

    Inputs are ``T - 1`` uniform content tokens followed by the marker.
    Targets equal the inputs (marker included): a model must reconstruct the
    whole sequence from its output at the last position, e.g. via a small
    decoder head that maps that single vector (plus a position embedding for
    the slot being decoded) to ``T`` token predictions.  ``settings['readout']
    = 'last_position'`` flags this (the only accepted value; it is an argument
    so that ``compression(**task.settings)`` regenerates the task).  Every
    position is trained on and scored.
    """
    settings = dict(locals())
    _held_out_sizes(settings)
    if readout != "last_position":
        raise ValueError(f"compression supports readout='last_position' only, got {readout!r}")
    _check_ints(settings, vocab_size=2, seq_len=2, num_train=1, num_test=1, num_val=1)
    return _generate("compression", settings, partial(_compression_split, vocab_size=vocab_size, seq_len=seq_len))


# =========================================================================
# memorization
# =========================================================================
def _memorization_train_split(rng, n, kv_map, insert, half):
    """Training keys: consecutive random permutations of all keys, so every key is seen."""
    num_keys, slots = len(kv_map), n * half
    reps = -(-slots // num_keys)
    keys = np.concatenate([rng.permutation(num_keys) for _ in range(reps)])[:slots]
    return _memorization_split(keys.reshape(n, half), kv_map, insert)


def _memorization_test_split(rng, n, kv_map, insert, half):
    """Test keys: uniform over all keys."""
    return _memorization_split(rng.integers(0, len(kv_map), size=(n, half)), kv_map, insert)


def _memorization_split(keys, kv_map, insert):
    n, half = keys.shape
    x = np.empty((n, 2 * half), dtype=np.int64)
    x[:, 0::2] = keys
    x[:, 1::2] = insert
    y = np.full_like(x, IGNORE_INDEX)
    y[:, 1::2] = kv_map[keys]
    xt, yt = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    return xt, yt, yt.clone()


def memorization(
    vocab_size: int = 256,
    seq_len: int = 32,
    num_train: int = 256,
    num_test: int = MAD_NUM_TEST,
    num_val: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Memorize a fixed global key->value map (facts stored in the weights).

    Id layout (``V = vocab_size``; the insert marker is carved out of ``V``):

    * ``K = (V - 1) // 2`` keys: ``0 .. K - 1``
    * values: ``K .. V - 2``
    * insert marker: ``V - 1``

    One global map (each key -> a uniform random value, drawn from a third
    stream of ``seed`` so train and test share it) is fixed for the task.  A
    sequence is ``T/2`` pairs ``key insert``; the target at each insert
    position is the value of the preceding key, ``-100`` elsewhere (train and
    test alike).  Training keys are consecutive random permutations of all
    keys, so every key occurs in training at least once whenever
    ``num_train * T/2 >= K`` (true for every MAD setting, e.g. V=8192: K=4095
    keys, 256*16=4096 slots); test keys are uniform, so test accuracy measures
    recall of facts that were all seen in training (validation keys: uniform too).
    """
    settings = dict(locals())
    _held_out_sizes(settings)
    _check_ints(settings, vocab_size=3, seq_len=2, num_train=1, num_test=1, num_val=1)
    if seq_len % 2:
        raise ValueError(f"memorization needs an even seq_len, got {seq_len}")
    num_keys = (vocab_size - 1) // 2
    r_map = derive_rngs(seed, 3)[2]  # a third stream (after train and test): the map both share
    kv_map = r_map.integers(num_keys, vocab_size - 1, size=num_keys)
    shared = dict(kv_map=kv_map, insert=vocab_size - 1, half=seq_len // 2)
    return _generate("memorization", settings, partial(_memorization_train_split, **shared),
                     test_split=partial(_memorization_test_split, **shared))


# =========================================================================
# registry and settings
# =========================================================================
MAD_TASKS: dict[str, Callable[..., TaskData]] = {
    "in_context_recall": in_context_recall,
    "fuzzy_in_context_recall": fuzzy_in_context_recall,
    "noisy_in_context_recall": noisy_in_context_recall,
    "selective_copying": selective_copying,
    "compression": compression,
    "memorization": memorization,
}

_TRAIN_SIZES = (6400, 3200, 1600, 800)

# Each change varies one factor from the generator's default (= MAD baseline).
MAD_CHANGES: dict[str, list[tuple[str, tuple]]] = {
    "in_context_recall": [
        ("vocab_size", (32, 64, 128)),
        ("seq_len", (256, 512, 1024)),
        ("num_train", _TRAIN_SIZES),
    ],
    "fuzzy_in_context_recall": [
        ("vocab_size", (32, 64, 128)),
        ("seq_len", (256, 512, 1024)),
        ("num_train", _TRAIN_SIZES),
    ],
    "noisy_in_context_recall": [
        ("vocab_size", (48, 80, 144)),
        ("seq_len", (256, 512, 1024)),
        ("num_train", _TRAIN_SIZES),
        ("frac_noise", (0.4, 0.6, 0.8)),
    ],
    "selective_copying": [
        ("vocab_size", (32, 64, 128)),
        ("seq_len", (512, 1024)),
        ("num_train", _TRAIN_SIZES),
        ("num_tokens_to_copy", (32, 64, 96)),
    ],
    "compression": [
        ("vocab_size", (32, 64, 128)),
        ("seq_len", (64, 128, 256)),
        ("num_train", _TRAIN_SIZES),
    ],
    "memorization": [
        ("vocab_size", (512, 1024, 2048, 4096, 8192)),
    ],
}


def _baseline(task: str, seed: int) -> dict:
    fn = MAD_TASKS[task]
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        out[name] = p.default
    out["seed"] = int(seed)
    if task == "fuzzy_in_context_recall" and out.get("num_keys") is None:
        out["num_keys"] = (out["vocab_size"] - 1) // 2
    return out


def mad_settings(task: str, preset: str = "quick", seed: int = 0) -> list[dict]:
    """Complete keyword arguments for ``MAD_TASKS[task]``, baseline first.

    ``preset="quick"``: ``[baseline]``.  ``preset="full"``: baseline followed by
    one setting per change in :data:`MAD_CHANGES` (each varies a single factor
    from the baseline).  Every dict holds every generator argument, ``seed``
    included, so it can be passed to :func:`hypermlp.data.common.cached`.
    For the fuzzy task ``num_keys`` follows ``vocab_size`` (key ids = ``(V-1)//2``).
    """
    if task not in MAD_TASKS:
        raise KeyError(f"unknown MAD task {task!r}; known: {sorted(MAD_TASKS)}")
    if preset not in ("quick", "full"):
        raise ValueError(f"preset must be 'quick' or 'full', got {preset!r}")
    base = _baseline(task, seed)
    out = [dict(base)]
    if preset == "full":
        for key, values in MAD_CHANGES[task]:
            for v in values:
                s = dict(base)
                s[key] = v
                if task == "fuzzy_in_context_recall" and key == "vocab_size":
                    s["num_keys"] = (v - 1) // 2
                out.append(s)
    return out


def mad_setting_label(task: str, setting: dict) -> str:
    """Short label of how ``setting`` differs from the task baseline, e.g. ``"vocab_size=32"``."""
    base = _baseline(task, setting.get("seed", 0))
    diff = [
        f"{k}={setting[k]}"
        for k in sorted(setting)
        if k not in ("seed", "num_keys") and k in base and setting[k] != base[k]
    ]
    return ",".join(diff) if diff else "baseline"

"""Tests for the MAD task generators, the task cache and the scoring helper."""

import math
import os

import numpy as np
import pytest
import torch

from hypermlp.data import (
    IGNORE_INDEX,
    MAD_TASKS,
    TaskData,
    cache_path,
    cached,
    compression,
    fuzzy_in_context_recall,
    in_context_recall,
    mad_setting_label,
    mad_settings,
    memorization,
    noisy_in_context_recall,
    score_predictions,
    selective_copying,
)

# Small settings so every generator runs in milliseconds.
SMALL = {
    "in_context_recall": dict(vocab_size=16, seq_len=64, num_train=96, num_test=48),
    "fuzzy_in_context_recall": dict(vocab_size=16, seq_len=64, num_train=96, num_test=48),
    "noisy_in_context_recall": dict(vocab_size=32, seq_len=64, num_train=96, num_test=48),
    "selective_copying": dict(vocab_size=16, seq_len=64, num_tokens_to_copy=8, num_train=96, num_test=48),
    "compression": dict(vocab_size=16, seq_len=32, num_train=96, num_test=48),
    "memorization": dict(vocab_size=64, seq_len=32, num_train=16, num_test=48),
}


def _rows(x: torch.Tensor) -> set:
    return {tuple(r) for r in x.tolist()}


# --------------------------------------------------------------- generic checks
@pytest.mark.parametrize("task", sorted(MAD_TASKS))
def test_shapes_dtypes_ranges(task):
    s = SMALL[task]
    d = MAD_TASKS[task](seed=3, **s)
    assert isinstance(d, TaskData)
    assert d.name == task
    assert d.vocab_size == s["vocab_size"]
    for k, v in s.items():
        assert d.settings[k] == v
    assert d.settings["seed"] == 3
    T = s["seq_len"]
    assert d.train_inputs.shape == d.train_targets.shape == (s["num_train"], T)
    assert d.test_inputs.shape == d.test_targets.shape == (s["num_test"], T)
    for t in (d.train_inputs, d.train_targets, d.test_inputs, d.test_targets):
        assert t.dtype == torch.long
    for x in (d.train_inputs, d.test_inputs):
        assert int(x.min()) >= 0 and int(x.max()) < d.vocab_size
    for y in (d.train_targets, d.test_targets):
        kept = y[y != IGNORE_INDEX]
        assert kept.numel() > 0
        assert int(kept.min()) >= 0 and int(kept.max()) < d.vocab_size
        assert set(torch.unique(y[y < 0]).tolist()) <= {IGNORE_INDEX}


@pytest.mark.parametrize("task", sorted(MAD_TASKS))
def test_settings_regenerate_task(task):
    d = MAD_TASKS[task](seed=2, **SMALL[task])
    again = MAD_TASKS[task](**d.settings)
    assert torch.equal(d.train_inputs, again.train_inputs)
    assert torch.equal(d.test_targets, again.test_targets)


@pytest.mark.parametrize("task", sorted(MAD_TASKS))
def test_seeded_determinism_and_split_difference(task):
    fn, s = MAD_TASKS[task], SMALL[task]
    a, b, c = fn(seed=0, **s), fn(seed=0, **s), fn(seed=1, **s)
    for f in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.train_inputs, c.train_inputs)
    assert not torch.equal(a.test_inputs, c.test_inputs)
    # test sequences are not copies of training sequences
    assert not (_rows(a.test_inputs) & _rows(a.train_inputs))


def test_no_global_random_state_used():
    np.random.seed(0)
    torch.manual_seed(0)
    before_np, before_torch = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = in_context_recall(seed=5, **SMALL["in_context_recall"])
    np.random.seed(123)
    torch.manual_seed(123)
    b = in_context_recall(seed=5, **SMALL["in_context_recall"])
    assert torch.equal(a.train_inputs, b.train_inputs)
    np.random.seed(0)
    torch.manual_seed(0)
    in_context_recall(seed=5, **SMALL["in_context_recall"])
    assert np.array_equal(np.random.get_state()[1], before_np)
    assert torch.equal(torch.get_rng_state(), before_torch)


# --------------------------------------------------------------- in-context recall
def test_in_context_recall_statistics():
    V, T = 16, 64
    d = in_context_recall(seed=0, **SMALL["in_context_recall"])
    K = V // 2
    # train: next token everywhere
    assert torch.equal(d.train_targets[:, :-1], d.train_inputs[:, 1:])
    assert (d.train_targets != IGNORE_INDEX).all()
    x, y = d.test_inputs.tolist(), d.test_targets.tolist()
    n_scored = 0
    for row_x, row_y in zip(x, y):
        assert all(v < K for v in row_x[0::2]) and all(v >= K for v in row_x[1::2])
        kv = {}
        expected = [IGNORE_INDEX] * T
        for t in range(0, T, 2):
            k = row_x[t]
            v = row_x[t + 1] if t + 1 < T else None
            if k in kv:
                expected[t] = kv[k]
                if v is not None:
                    assert v == kv[k]  # map fixed within the sequence
            elif v is not None:
                kv[k] = v
        assert row_y == expected
        n_scored += sum(v != IGNORE_INDEX for v in row_y)
    assert n_scored > 0.3 * len(x) * T / 2
    assert _check_scored_recall_queries(d.test_inputs, d.test_targets, set(range(K)), set(range(K, V))) == n_scored
    # different sequences use different maps
    maps = [tuple(sorted({(r[t], r[t + 1]) for t in range(0, T - 1, 2)})) for r in x[:10]]
    assert len(set(maps)) > 1


def _check_scored_recall_queries(inputs, targets, key_ids, value_ids):
    """Each scored position holds a key seen earlier, its target is the value paired
    with that key before, and every repeated key is scored."""
    count = 0
    for row_x, row_y in zip(inputs.tolist(), targets.tolist()):
        T = len(row_x)
        for t in range(T):
            k = row_x[t]
            earlier = [j for j in range(t) if row_x[j] == k] if k in key_ids else []
            if row_y[t] == IGNORE_INDEX:
                assert not earlier, "repeated key not scored"
                continue
            assert k in key_ids
            assert row_y[t] in value_ids
            assert earlier, "scored query whose key never appeared before"
            assert row_x[earlier[0] + 1] in value_ids
            assert row_x[earlier[0] + 1] == row_y[t]
            count += 1
    return count


def test_noisy_recall_statistics():
    s = dict(SMALL["noisy_in_context_recall"], frac_noise=0.4)
    d = noisy_in_context_recall(seed=2, **s)
    V, nv = s["vocab_size"], 16
    C = V - nv
    keys, values = set(range(C // 2)), set(range(C // 2, C))
    for x, y in ((d.train_inputs, d.train_targets), (d.test_inputs, d.test_targets)):
        frac = (x >= C).float().mean().item()
        assert abs(frac - 0.4) < 0.03
    # train: next token, except where the next token is noise
    nxt = d.train_inputs[:, 1:]
    yt = d.train_targets[:, :-1]
    assert torch.equal(yt[nxt < C], nxt[nxt < C])
    assert (yt[nxt >= C] == IGNORE_INDEX).all()
    # a key is always immediately followed by its value (noise never splits pairs)
    x = d.train_inputs
    is_key = x[:, :-1] < C // 2
    assert ((x[:, 1:][is_key] >= C // 2) & (x[:, 1:][is_key] < C)).all()
    n = _check_scored_recall_queries(d.test_inputs, d.test_targets, keys, values)
    assert n > 0
    # noise fraction follows the setting
    lo = noisy_in_context_recall(seed=2, **dict(s, frac_noise=0.2))
    assert abs((lo.train_inputs >= C).float().mean().item() - 0.2) < 0.03


def test_fuzzy_recall_statistics():
    s = SMALL["fuzzy_in_context_recall"]
    d = fuzzy_in_context_recall(seed=4, **s)
    V, T = s["vocab_size"], s["seq_len"]
    pad, C = V - 1, V - 1
    kw = vw = 3
    W = kw + vw
    assert d.settings["num_keys"] == C // 2
    assert torch.equal(d.train_targets[:, :-1], d.train_inputs[:, 1:])
    total_scored = 0
    for row_x, row_y in zip(d.test_inputs.tolist(), d.test_targets.tolist()):
        # full sequence where known: inputs plus the last target if scored
        seq = row_x + [row_y[-1]]
        kv = {}
        expected = [IGNORE_INDEX] * T
        n_pairs = (T + 1) // W + 1
        for p in range(n_pairs):
            kb = seq[p * W : p * W + kw]
            vb = seq[p * W + kw : p * W + W]
            if len(kb) < kw:
                break
            # key block: left padding then 1..3 key tokens
            n_pad = sum(1 for v in kb if v == pad)
            assert kb[:n_pad] == [pad] * n_pad and n_pad < kw
            assert all(0 <= v < C // 2 for v in kb[n_pad:])
            key = tuple(kb)
            if key in kv:
                for i, want in enumerate(kv[key]):
                    q = p * W + kw + i
                    if want != pad and q <= T:
                        expected[q - 1] = want
                    if q < T:
                        assert seq[q] == want  # same value motif as at the key's first occurrence
            elif len(vb) == vw and p * W + W <= T:
                nv = sum(1 for v in vb if v == pad)
                assert vb[:nv] == [pad] * nv and nv < vw
                assert all(C // 2 <= v < C for v in vb[nv:])
                kv[key] = vb
            else:
                break  # first occurrence cut by the sequence end: nothing after it
        for t in range(T):
            if expected[t] != IGNORE_INDEX:
                assert row_y[t] == expected[t]
                total_scored += 1
            else:
                assert row_y[t] == IGNORE_INDEX
    assert total_scored > 0


# --------------------------------------------------------------- selective copying
def test_selective_copying_statistics():
    s = SMALL["selective_copying"]
    V, T, k = s["vocab_size"], s["seq_len"], s["num_tokens_to_copy"]
    blank, marker = V - 2, V - 1
    d = selective_copying(seed=0, **s)
    for x, y in ((d.train_inputs, d.train_targets), (d.test_inputs, d.test_targets)):
        ctx = T - k
        assert (x[:, ctx] == marker).all()
        assert (y[:, :ctx] == IGNORE_INDEX).all()
        assert (y[:, ctx:] != IGNORE_INDEX).all()
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            toks = [v for v in row_x[:ctx] if v != blank]
            assert len(toks) == k and all(v < V - 2 for v in toks)
            assert row_y[ctx:] == toks
            assert row_x[ctx + 1 :] == toks[:-1]  # teacher forcing
    # train and test share the same mask: only the k answer slots
    assert torch.equal(d.train_targets[0] != IGNORE_INDEX, d.test_targets[0] != IGNORE_INDEX)


# --------------------------------------------------------------- compression
def test_compression_statistics():
    s = SMALL["compression"]
    d = compression(seed=0, **s)
    V = s["vocab_size"]
    assert d.settings["readout"] == "last_position"
    assert torch.equal(d.train_targets, d.train_inputs)
    assert torch.equal(d.test_targets, d.test_inputs)
    assert (d.train_inputs[:, -1] == V - 1).all()
    assert (d.train_inputs[:, :-1] < V - 1).all()
    # content tokens are roughly uniform
    counts = torch.bincount(d.train_inputs[:, :-1].reshape(-1), minlength=V - 1)
    assert counts.min() > 0.5 * counts.float().mean()


# --------------------------------------------------------------- memorization
def test_memorization_global_map():
    d = memorization(seed=7, vocab_size=256, seq_len=32, num_train=256, num_test=200)
    V = 256
    K = (V - 1) // 2
    kv = {}
    for x, y in ((d.train_inputs, d.train_targets), (d.test_inputs, d.test_targets)):
        assert (x[:, 1::2] == V - 1).all()
        assert (x[:, 0::2] < K).all()
        assert (y[:, 0::2] == IGNORE_INDEX).all()
        assert ((y[:, 1::2] >= K) & (y[:, 1::2] < V - 1)).all()
        for k, v in zip(x[:, 0::2].reshape(-1).tolist(), y[:, 1::2].reshape(-1).tolist()):
            assert kv.setdefault(k, v) == v, "key mapped to two different values"
    # every key occurs in training
    assert set(d.train_inputs[:, 0::2].reshape(-1).tolist()) == set(range(K))
    # the map does not depend on num_test / split sizes, only on the seed
    d2 = memorization(seed=7, vocab_size=256, seq_len=32, num_train=64, num_test=10)
    for k, v in zip(d2.train_inputs[:, 0::2].reshape(-1).tolist(), d2.train_targets[:, 1::2].reshape(-1).tolist()):
        assert kv[k] == v
    assert len(set(kv.values())) > 30  # a random map, not a constant


# --------------------------------------------------------------- baseline sizes and settings
def test_baseline_generation_sizes():
    for task in MAD_TASKS:
        (s,) = mad_settings(task, "quick")
        d = MAD_TASKS[task](**s)
        n_train = 256 if task == "memorization" else 12_800
        assert d.num_train == n_train and d.num_test == 1280, task
        assert d.seq_len == s["seq_len"]
        assert d.vocab_size == {"noisy_in_context_recall": 32, "memorization": 256}.get(task, 16)


def test_mad_settings_presets():
    expected_full = {
        "in_context_recall": 11,
        "fuzzy_in_context_recall": 11,
        "noisy_in_context_recall": 14,
        "selective_copying": 13,
        "compression": 11,
        "memorization": 6,
    }
    for task, n in expected_full.items():
        quick = mad_settings(task, "quick")
        full = mad_settings(task, "full")
        assert len(quick) == 1 and len(full) == n
        assert full[0] == quick[0]
        assert mad_setting_label(task, full[0]) == "baseline"
        base = full[0]
        for s in full[1:]:
            diff = {k for k in s if s[k] != base[k]} - {"num_keys"}
            assert len(diff) == 1, (task, s)
            assert "=" in mad_setting_label(task, s)
        assert len({mad_setting_label(task, s) for s in full}) == n
        for s in full:
            assert s["num_test"] == 1280 and "seed" in s
    base = mad_settings("noisy_in_context_recall")[0]
    assert base["vocab_size"] == 32 and base["noise_vocab_size"] == 16 and base["frac_noise"] == 0.2
    assert mad_settings("selective_copying")[0]["seq_len"] == 256
    assert mad_settings("memorization", seed=9)[0]["seed"] == 9
    with pytest.raises(KeyError):
        mad_settings("nope")


# --------------------------------------------------------------- scoring
def test_score_predictions():
    targets = torch.tensor([[1, IGNORE_INDEX, 1, 2], [1, 1, IGNORE_INDEX, 2]])
    pred = torch.tensor([[1, 5, 1, 0], [1, 0, 7, 0]])
    out = score_predictions(pred, targets)
    # class 1: 3 of 4 right; class 2: 0 of 2 right
    assert out["acc"] == pytest.approx(3 / 6)
    assert out["macro_acc"] == pytest.approx((3 / 4 + 0.0) / 2)
    assert out["n_scored"] == 6
    perfect = score_predictions(targets.clamp(min=0), targets)
    assert perfect["acc"] == 1.0 and perfect["macro_acc"] == 1.0
    empty = score_predictions(pred, torch.full_like(targets, IGNORE_INDEX))
    assert math.isnan(empty["acc"])


# --------------------------------------------------------------- cache
def test_cache_roundtrip(tmp_path):
    calls = []

    def counting(**kw):
        calls.append(kw)
        return in_context_recall(**kw)

    counting.__name__ = "in_context_recall"
    s = dict(SMALL["in_context_recall"], seed=11)
    a = cached(counting, tmp_path, **s)
    b = cached(counting, tmp_path, **s)
    assert len(calls) == 1  # second call loaded from disk
    for f in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert b.vocab_size == a.vocab_size and b.name == a.name and b.settings == a.settings
    p1 = cache_path(tmp_path, "in_context_recall", s)
    assert p1.exists() and p1.suffix == ".pt"
    s2 = dict(s, seed=12)
    p2 = cache_path(tmp_path, "in_context_recall", s2)
    assert p1 != p2
    c = cached(counting, tmp_path, **s2)
    assert len(calls) == 2 and p2.exists()
    assert not torch.equal(c.train_inputs, a.train_inputs)
    # no temp files left behind (atomic write)
    assert sorted(os.listdir(tmp_path)) == sorted([p1.name, p2.name])
    # a corrupt entry is regenerated
    p1.write_bytes(b"garbage")
    d = cached(counting, tmp_path, **s)
    assert len(calls) == 3 and torch.equal(d.train_inputs, a.train_inputs)
    # cache disabled
    cached(counting, None, **s)
    assert len(calls) == 4


# sha256 (first 16 hex digits) of the train and the test arrays, recorded before the validation
# split existed (seed 3, num_train=64, num_test=32; selective copying at seq_len 64): adding the
# validation stream must leave them bit for bit as they were
ARRAYS_BEFORE_VALIDATION = {
    "compression": ("7bca3f0f7e183c5e", "0466455be1dda128"),
    "fuzzy_in_context_recall": ("2958599c936f8ccf", "c568563950a333f0"),
    "in_context_recall": ("37f5efaa997365df", "e83d090112fc6e1f"),
    "memorization": ("c2e79683a25164cf", "674f7d9a4dd8d7b1"),
    "noisy_in_context_recall": ("e2e2b350960ed67a", "780306eb68c9e110"),
    "selective_copying": ("27ef8341fc73fdc1", "7d27ace128c7c2de"),
    "mqar": ("1d83346fae6c7ea9", "6f9ea24dd4704fee"),
}


def _digest(*tensors):
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("task", sorted(ARRAYS_BEFORE_VALIDATION))
def test_validation_split_is_held_apart_and_train_test_are_unchanged(task):
    from hypermlp.data import make_task

    if task == "mqar":
        kw = dict(seq_len=64, num_pairs=4, vocab_size=256)
    else:
        kw = dict(seq_len=64) if task == "selective_copying" else {}
    d = make_task(task, None, seed=3, num_train=64, num_test=32, **kw)
    assert (_digest(d.train_inputs, d.train_targets), _digest(d.test_inputs, d.test_targets)) == \
        ARRAYS_BEFORE_VALIDATION[task]
    # as many validation sequences as test ones by default, scored like the test split
    assert d.num_val == d.settings["num_val"] == 32 and d.val_inputs.shape == d.test_inputs.shape
    assert ((d.val_targets != IGNORE_INDEX).sum(1) > 0).all()
    again = make_task(task, None, seed=3, num_train=64, num_test=32, **kw)
    assert torch.equal(again.val_inputs, d.val_inputs) and torch.equal(again.val_targets, d.val_targets)
    # disjoint: no validation sequence is a training or a test sequence
    val = _rows(d.val_inputs)
    assert not val & _rows(d.train_inputs) and not val & _rows(d.test_inputs)
    # its own size, its own stream: a bigger validation split leaves train and test alone
    big = make_task(task, None, seed=3, num_train=64, num_test=32, num_val=80, **kw)
    assert big.num_val == 80
    assert torch.equal(big.train_inputs, d.train_inputs) and torch.equal(big.test_targets, d.test_targets)
    with pytest.raises(ValueError, match="num_val"):
        make_task(task, None, seed=3, num_train=64, num_test=32, num_val=0, **kw)


def test_the_cache_key_includes_the_validation_size(tmp_path):
    from hypermlp.data import make_task

    a = make_task("in_context_recall", tmp_path, vocab_size=16, seq_len=32, num_train=32, num_test=16, num_val=8, seed=0)
    b = make_task("in_context_recall", tmp_path, vocab_size=16, seq_len=32, num_train=32, num_test=16, num_val=12, seed=0)
    assert (a.num_val, b.num_val) == (8, 12) and len(os.listdir(tmp_path)) == 2
    again = make_task("in_context_recall", tmp_path, vocab_size=16, seq_len=32, num_train=32, num_test=16, num_val=8,
                      seed=0)
    assert torch.equal(again.val_inputs, a.val_inputs) and torch.equal(again.val_targets, a.val_targets)

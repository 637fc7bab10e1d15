"""Tests for the MQAR generator."""

import pathlib

import pytest
import torch
import yaml

from hypermlp.data import IGNORE_INDEX, cached, mqar, mqar_query_gaps

SWEEP_YAML = pathlib.Path(__file__).resolve().parents[2] / "configs" / "mqar_sweep.yaml"

V = 8192


def _small(seed=0, seq_len=64, num_pairs=4, **kw):
    return mqar(seq_len, num_pairs, vocab_size=kw.pop("vocab_size", V), num_train=kw.pop("num_train", 256),
                num_test=kw.pop("num_test", 64), seed=seed, **kw)


def test_shapes_and_ranges():
    d = _small()
    assert d.name == "mqar" and d.vocab_size == V
    assert d.train_inputs.shape == d.train_targets.shape == (256, 64)
    assert d.test_inputs.shape == d.test_targets.shape == (64, 64)
    for t in (d.train_inputs, d.train_targets, d.test_inputs, d.test_targets):
        assert t.dtype == torch.long
    assert int(d.train_inputs.min()) >= 0 and int(d.train_inputs.max()) < V
    assert d.settings == dict(seq_len=64, num_pairs=4, vocab_size=V, num_train=256, num_test=64, num_val=64,
                              power_a=0.01, seed=0)


@pytest.mark.parametrize("seq_len,num_pairs", [(64, 4), (128, 8), (256, 16)])
def test_layout_keys_values_queries(seq_len, num_pairs):
    d = _small(seq_len=seq_len, num_pairs=num_pairs, num_train=128, num_test=32)
    D, half = num_pairs, V // 2
    for x, y in ((d.train_inputs, d.train_targets), (d.test_inputs, d.test_targets)):
        keys = x[:, 0 : 2 * D : 2]
        vals = x[:, 1 : 2 * D : 2]
        assert ((keys >= 1) & (keys < half)).all()
        assert ((vals >= half) & (vals < V)).all()
        # keys distinct within each sequence
        assert all(len(set(r)) == D for r in keys.tolist())
        # no labels inside the pairs block, labels only at query positions
        assert (y[:, : 2 * D] == IGNORE_INDEX).all()
        labelled = y != IGNORE_INDEX
        assert (labelled.sum(1) == D).all()
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            kv = dict(zip(row_x[0 : 2 * D : 2], row_x[1 : 2 * D : 2]))
            queried = []
            for t in range(2 * D, seq_len):
                if row_y[t] != IGNORE_INDEX:
                    assert (t - 2 * D) % 2 == 0  # query slots start at even offsets
                    k = row_x[t]
                    assert k in kv and row_y[t] == kv[k]
                    assert row_x[t + 1] == kv[k]  # value follows the query key
                    queried.append(k)
                elif (t - 2 * D) % 2 == 0:
                    assert row_x[t] == 0 and (t + 1 >= seq_len or row_x[t + 1] == 0)  # unused slot: filler 0
            assert sorted(queried) == sorted(kv)  # each key queried exactly once


def test_gaps_follow_power_law():
    d = _small(seq_len=256, num_pairs=16, num_train=2000, num_test=10)
    gaps = mqar_query_gaps(d.train_inputs, d.train_targets, 16)
    n_slots = (256 - 32) // 2
    assert int(gaps.min()) >= 1 and int(gaps.max()) <= n_slots
    counts = torch.bincount(gaps, minlength=n_slots + 1)[1:].float()
    # more small gaps than large ones; decreasing on average
    assert counts[:10].mean() > 2 * counts[-10:].mean()
    q = n_slots // 4
    assert counts[:q].sum() > counts[q : 2 * q].sum() > counts[3 * q :].sum()
    # keys are assigned to slots in random order (not sorted by key position)
    first_key_gap = []
    for row_x, row_y in zip(d.train_inputs[:200].tolist(), d.train_targets[:200].tolist()):
        k0 = row_x[0]
        t = next(t for t in range(32, 256) if row_y[t] != IGNORE_INDEX and row_x[t] == k0)
        first_key_gap.append((t - 32) // 2)
    assert len(set(first_key_gap)) > 10


def test_determinism_and_splits():
    a, b, c = _small(seed=0), _small(seed=0), _small(seed=1)
    for f in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.train_inputs, c.train_inputs)
    tr = {tuple(r) for r in a.train_inputs.tolist()}
    te = {tuple(r) for r in a.test_inputs.tolist()}
    assert not (tr & te)


def test_errors():
    with pytest.raises(ValueError):
        mqar(16, 8, num_train=4, num_test=4)  # no room for the queries
    with pytest.raises(ValueError):
        mqar(64, 4, vocab_size=8, num_train=4, num_test=4)  # too few key ids


def test_sweep_config_and_settings(tmp_path):
    # the Zoology sweep lives in configs/mqar_sweep.yaml: every (length, pairs) point at every width
    tasks = yaml.safe_load(SWEEP_YAML.read_text())["tasks"]
    points = sorted({(t["data"]["seq_len"], t["data"]["num_pairs"]) for t in tasks})
    assert points == [(64, 4), (128, 8), (256, 16)]
    assert sorted({t["model"]["d_model"] for t in tasks}) == [64, 128, 256, 512]
    assert len(tasks) == 3 * 4 and {t["data"]["vocab_size"] for t in tasks} == {8192}
    ss = [dict(seq_len=t, num_pairs=d, vocab_size=8192, num_train=32, num_test=8, power_a=0.01, seed=0) for t, d in points]
    a = cached(mqar, tmp_path, **ss[0])
    b = cached(mqar, tmp_path, **ss[0])
    assert torch.equal(a.train_inputs, b.train_inputs)
    assert len(list(tmp_path.glob("mqar-*.pt"))) == 1

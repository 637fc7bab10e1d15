"""The chunked core against the readable reference: outputs, every gradient, gradcheck."""

import itertools

import pytest
import torch

from hypermlp.ops import hyper_core_chunked, hyper_core_reference, skew, unskew
from hypermlp.ops.hyper_chunked import _HyperChunkedFn

DT = torch.float64


def make_inputs(glu, batch=2, heads=2, t=11, offset=0, dk=3, dv=4, r=3, max_len=24, padding=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hq = 2 * heads if glu else heads
    s = offset + t

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_()

    q, k, v = rnd(batch, hq, t, dk), rnd(batch, hq, s, dk), rnd(batch, heads, s, dv)
    s1 = torch.rand(batch, hq, t, r, generator=g, dtype=DT).requires_grad_()
    s2 = torch.rand(batch, heads, t, r, generator=g, dtype=DT).requires_grad_()
    mix1 = (rnd(hq, max_len, r, scale=0.4), rnd(hq, max_len, r, scale=0.4), rnd(hq, max_len, scale=0.4))
    mix2 = (rnd(heads, max_len, r, scale=0.4), rnd(heads, max_len, r, scale=0.4), rnd(heads, max_len, scale=0.4))
    key_valid = None
    if padding:  # left padding of different lengths per row
        key_valid = torch.ones(batch, s, dtype=torch.bool)
        for b in range(batch):
            key_valid[b, : (b * 3) % max(s - 1, 1)] = False
    return q, k, v, s1, s2, mix1, mix2, key_valid


def leaves(q, k, v, s1, s2, mix1, mix2):
    return [q, k, v, s1, s2, *mix1, *mix2]


def run(fn, inputs, glu, layout, offset, mixes=(True, True), **kw):
    q, k, v, s1, s2, mix1, mix2, key_valid = inputs
    return fn(
        q, k, v, s1, s2, mix1 if mixes[0] else None, mix2 if mixes[1] else None,
        glu=glu, layout=layout, offset=offset, key_valid=key_valid, **kw,
    )


def test_skew_and_unskew_shift_rows_by_position():
    c, w = 3, 5
    x = torch.arange(1, c * w + 1, dtype=DT).view(c, w)
    sk = skew(x)
    for i in range(c):
        for m in range(w):
            src = m - (c - 1 - i)
            assert sk[i, m] == (x[i, src] if src >= 0 else 0)
    # unskew inverts skew on the causal part (lags the row can see)
    causal = torch.arange(w)[None, :] <= torch.arange(c)[:, None] + (w - c)
    assert torch.equal(unskew(skew(x * causal)), x * causal)


CASES = list(itertools.product([False, True], ["lag", "left"], [0, 5], [False, True]))


@pytest.mark.parametrize("glu,layout,offset,padding", CASES)
def test_chunked_matches_reference_outputs_and_gradients(glu, layout, offset, padding):
    inputs = make_inputs(glu, offset=offset, padding=padding, seed=offset + 7 * glu)
    params = leaves(*inputs[:7])
    ref = run(hyper_core_reference, inputs, glu, layout, offset)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, params, grad_out)
    for chunk in (1, 4, 5, 11, 64):  # 4 and 5 do not divide T = 11
        out = run(hyper_core_chunked, inputs, glu, layout, offset, chunk_size=chunk)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        grads = torch.autograd.grad(out, params, grad_out)
        for name, g, gr in zip("q k v s1 s2 A1 B1 p1 A2 B2 p2".split(), grads, ref_grads):
            torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-10, msg=f"grad of {name}, chunk {chunk}")


@pytest.mark.parametrize("mixes", [(False, False), (True, False), (False, True)])
def test_chunked_matches_reference_with_mixings_off(mixes):
    for glu in (False, True):
        inputs = make_inputs(glu, t=6)
        ref = run(hyper_core_reference, inputs, glu, "lag", 0, mixes=mixes)
        out = run(hyper_core_chunked, inputs, glu, "lag", 0, mixes=mixes, chunk_size=4)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_single_position():
    for glu in (False, True):
        inputs = make_inputs(glu, t=1, batch=3)
        ref = run(hyper_core_reference, inputs, glu, "lag", 0)
        out = run(hyper_core_chunked, inputs, glu, "lag", 0, chunk_size=8)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("glu,layout", [(False, "lag"), (True, "lag"), (True, "left")])
def test_chunked_backward_passes_gradcheck(glu, layout):
    q, k, v, s1, s2, mix1, mix2, key_valid = make_inputs(glu, batch=1, heads=1, t=5, offset=2, dk=2, dv=2, r=2, max_len=8, padding=True)
    key_valid = torch.tensor([[False, True, True, True, True, True, True]])

    def fn(*xs):
        meta = (2, 3, glu, layout, 1e-12)
        return _HyperChunkedFn.apply(key_valid, meta, *xs)

    assert torch.autograd.gradcheck(fn, tuple(leaves(q, k, v, s1, s2, mix1, mix2)), eps=1e-6, atol=1e-7, rtol=1e-5)

"""``hyper_core_trace``: the reference core's loop with its intermediates kept. Its readout is the
reference's bit for bit, and every intermediate equals a direct computation in matrix form
(docs/math.md §2.4 - §2.8): each query's mixings as explicit (n x n) operators."""

import pytest
import torch
import torch.nn.functional as F

from hypermlp.inspect import flip_layout
from hypermlp.ops import hyper_core_reference, table_rows
from hypermlp.ops.hyper.reference import hyper_core_trace

from ..ops._inputs import make_inputs

CASES = [
    dict(glu=False),
    dict(glu=True),
    dict(glu=True, padding=True),
    dict(glu=False, padding=True, offset=4),
    dict(glu=True, offset=3, mixes=(True, False)),
    dict(glu=False, mixes=(False, False)),
    dict(glu=True, layout="left"),
    dict(glu=True, t=1),
]


def _split(case):
    case = dict(case)
    layout = case.pop("layout", "lag")
    return case, layout


@pytest.mark.parametrize("case", CASES)
def test_trace_readout_is_the_reference_bit_for_bit(case):
    kw, layout = _split(case)
    inp = make_inputs(**kw)
    common = dict(glu=kw["glu"], layout=layout, offset=kw.get("offset", 0))
    ref = inp.call(hyper_core_reference, **common)
    trace = inp.call(hyper_core_trace, **common)
    assert torch.equal(trace.out, ref)


def test_half_inputs_trace_in_float32_and_match_the_reference():
    inp = make_inputs(True, padding=True).map(lambda x: x.to(torch.float16))
    ref = inp.call(hyper_core_reference, glu=True)
    trace = inp.call(hyper_core_trace, glu=True)
    assert trace.a.dtype == torch.float32
    assert torch.equal(trace.out.to(torch.float16), ref)
    assert torch.isfinite(trace.out).all()


def _operator(tables, gate, head, rows):
    """I + diag(p) + A diag(s) B^T over the given table rows, as an explicit matrix acting on a
    row vector of scores by lag: z' = z @ M."""
    a, b, p = (t[head, rows] for t in tables)
    return torch.eye(p.shape[0], dtype=p.dtype) + torch.diag(p) + (a * gate) @ b.T


@pytest.mark.parametrize("case", CASES)
def test_intermediates_equal_a_direct_matrix_computation(case):
    kw, layout = _split(case)
    glu, offset = kw["glu"], kw.get("offset", 0)
    inp = make_inputs(**kw)
    q, k, v, s1, s2, mix1, mix2, key_valid = (x.detach() if torch.is_tensor(x) else x for x in inp)
    with torch.no_grad():
        tr = hyper_core_trace(q, k, v, s1, s2, mix1, mix2, glu=glu, layout=layout, offset=offset, key_valid=key_valid)
    b, hq, t_len, _ = q.shape
    h, s_len = v.shape[1], k.shape[2]
    valid_keys = torch.ones(b, s_len, dtype=torch.bool) if key_valid is None else key_valid
    for bi in range(b):
        for t in range(t_len):
            pos = offset + t
            n = pos + 1
            lags = torch.arange(n)
            real = valid_keys[bi, pos - lags].to(q.dtype)  # (n,) by lag
            rows = table_rows(layout, n, s_len)
            assert torch.equal(tr.valid[bi, 0, t, :n], real > 0) and not tr.valid[bi, 0, t, n:].any()
            assert tr.z[bi, :, t, n:].isnan().all()  # no slot beyond the query's position
            z = (k[bi, :, pos - lags] @ q[bi, :, t, :, None])[..., 0] * real  # (Hq, n)
            torch.testing.assert_close(tr.z[bi, :, t, :n], z)
            zm = torch.stack([z[i] @ _operator(mix1, s1[bi, i, t], i, rows) for i in range(hq)]) * real if mix1 else z
            torch.testing.assert_close(tr.z_mixed[bi, :, t, :n], zm)
            gate = zm[:h]
            rho = torch.sqrt((gate * gate).sum(-1) + 1e-12)  # eps = rho_eps (a query without a real key: sqrt(eps))
            torch.testing.assert_close(tr.rho[bi, :, t], rho)
            routed = F.relu(gate / rho[:, None])
            a = (F.softplus(zm[h:]) * routed if glu else routed) * real
            torch.testing.assert_close(tr.routed[bi, :, t, :n] * real, routed * real)
            if glu:
                torch.testing.assert_close(tr.magnitude[bi, :, t, :n], F.softplus(zm[h:]))
            else:
                assert tr.magnitude is None
            torch.testing.assert_close(tr.a[bi, :, t, :n], a)
            w = torch.stack([a[i] @ _operator(mix2, s2[bi, i, t], i, rows) for i in range(h)]) * real if mix2 else a
            torch.testing.assert_close(tr.weights[bi, :, t, :n], w)
            out = (w[:, None, :] @ v[bi, :, pos - lags])[:, 0]  # (H, dv): the readout from the weights
            torch.testing.assert_close(tr.out[bi, :, t], out)


def test_flip_layout_maps_lags_to_keys_and_back():
    x = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(2, 3, 5)  # rows at positions 2, 3, 4 (offset 2)
    keys = flip_layout(x, offset=2)
    for t in range(3):
        for j in range(5):
            pos = 2 + t
            assert (keys[:, t, j].isnan().all() if j > pos else torch.equal(keys[:, t, j], x[:, t, pos - j]))
    back = flip_layout(keys, offset=2)
    exists = ~back.isnan()
    assert torch.equal(back[exists], x[exists])
    valid = flip_layout(torch.ones(3, 5, dtype=torch.bool), offset=2, fill=False)
    assert valid.sum() == 3 + 4 + 5

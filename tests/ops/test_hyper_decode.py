"""The one-token decode step against the readable reference, and ``hyper_core``'s dispatch."""

import itertools

import pytest
import torch

import hypermlp.ops.hyper as hyper_pkg
from hypermlp.ops import hyper_core, hyper_core_decode, hyper_core_reference

from ._inputs import make_inputs

MIXES = [(True, True), (False, True), (True, False), (False, False)]


@pytest.mark.parametrize("glu,layout", list(itertools.product([False, True], ["lag", "left"])))
@pytest.mark.parametrize("padding", [False, True])
def test_decode_matches_reference(glu, layout, padding):
    for offset, mixes in itertools.product((0, 1, 7, 15), MIXES):
        inputs = make_inputs(glu, batch=2, t=1, offset=offset, padding=padding and offset > 0, mixes=mixes, seed=offset)
        kw = dict(glu=glu, layout=layout, offset=offset)
        with torch.no_grad():
            ref = inputs.call(hyper_core_reference, **kw)
            out = inputs.call(hyper_core_decode, **kw)
            dispatched = inputs.call(hyper_core, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"offset {offset}, mixes {mixes}")
        torch.testing.assert_close(dispatched, out, rtol=0, atol=0)


def test_decode_with_longer_tables_and_float32():
    # the tables are longer than the cache and arrive in another dtype (as under autocast)
    inputs = make_inputs(True, batch=3, t=1, offset=9, max_len=40, padding=True, seed=3)
    kw = dict(glu=True, layout="lag", offset=9)
    with torch.no_grad():
        ref = inputs.call(hyper_core_reference, **kw)
        q, k, v, s1, s2 = (x.float() for x in inputs[:5])
        out = hyper_core_decode(q, k, v, s1, s2, inputs.mix1, inputs.mix2, key_valid=inputs.key_valid, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_decode_refuses_anything_but_one_query_at_the_end():
    inputs = make_inputs(False, t=2, offset=3)
    with pytest.raises(ValueError, match="one query"):
        inputs.call(hyper_core_decode, glu=False, offset=3)
    one = make_inputs(False, t=1, offset=3)
    with pytest.raises(ValueError, match="one query"):
        one.call(hyper_core_decode, glu=False, offset=2)


def test_hyper_core_dispatch(monkeypatch):
    calls = []
    real = hyper_pkg.decode_op  # the decode step, through its custom op

    def spy(*args, **kw):
        calls.append(kw["offset"])
        return real(*args, **kw)

    monkeypatch.setattr(hyper_pkg, "decode_op", spy)
    inputs = make_inputs(True, t=1, offset=5)
    kw = dict(glu=True, offset=5)
    with torch.no_grad():
        inputs.call(hyper_core, **kw)  # one no-grad query at the end: decode
        inputs.call(hyper_core, impl="reference", **kw)  # the reference stays the reference
    assert calls == [5]
    out = inputs.call(hyper_core, **kw)  # gradients needed: the chunked core
    assert calls == [5] and out.requires_grad
    with torch.no_grad():
        make_inputs(True, t=3, offset=5).call(hyper_core, glu=True, offset=5)  # several queries
    assert calls == [5]
    with pytest.raises(ValueError, match="impl"):
        inputs.call(hyper_core, impl="fast", **kw)
    with pytest.raises(ValueError, match="layout"):
        inputs.call(hyper_core, layout="right", **kw)

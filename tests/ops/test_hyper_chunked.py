"""The chunked core against the readable reference (float64): outputs, every gradient, and a
gradcheck of the hand-written backward, all through the public ``hyper_core_chunked``."""

import itertools

import pytest
import torch

from hypermlp.ops import hyper_core, hyper_core_chunked, hyper_core_reference

from ._inputs import make_inputs


def check_against_reference(inputs, chunks, **kw):
    """Outputs and the gradient of every input and table, for each chunk size; plus the no-grad
    forward (a separate, in-place path)."""
    ref = inputs.call(hyper_core_reference, **kw)
    grad_out = torch.randn_like(ref)
    names, params = zip(*inputs.leaves())
    ref_grads = torch.autograd.grad(ref, params, grad_out)
    for chunk in chunks:
        out = inputs.call(hyper_core_chunked, chunk_size=chunk, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"output, chunk {chunk}")
        grads = torch.autograd.grad(out, params, grad_out)
        for name, g, gr in zip(names, grads, ref_grads):
            torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-10, msg=f"grad of {name}, chunk {chunk}")
        with torch.no_grad():
            out_ng = inputs.call(hyper_core_chunked, chunk_size=chunk, **kw)
        torch.testing.assert_close(out_ng, ref, rtol=1e-10, atol=1e-10, msg=f"no-grad output, chunk {chunk}")


@pytest.mark.parametrize("glu,layout,padding", list(itertools.product([False, True], ["lag", "left"], [False, True])))
@pytest.mark.parametrize("offset", [0, 5])
def test_every_gradient_matches_reference(glu, layout, padding, offset):
    # T = 11: chunks 2, 4, 5 and 7 do not divide it, 11 is one block, 64 is larger than T
    inputs = make_inputs(glu, t=11, offset=offset, padding=padding, seed=offset + 7 * glu)
    check_against_reference(inputs, (1, 2, 4, 5, 7, 11, 64), glu=glu, layout=layout, offset=offset)


@pytest.mark.parametrize("mixes", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("glu,layout", list(itertools.product([False, True], ["lag", "left"])))
@pytest.mark.parametrize("offset,padding", [(0, False), (3, True)])
def test_mixings_off(mixes, glu, layout, offset, padding):
    inputs = make_inputs(glu, t=13, offset=offset, padding=padding, mixes=mixes)
    check_against_reference(inputs, (4, 5, 7, 13), glu=glu, layout=layout, offset=offset)


@pytest.mark.parametrize("glu,layout,padding", [(False, "lag", False), (True, "lag", False), (True, "lag", True),
                                                (True, "left", True)])
def test_single_query(glu, layout, padding):
    # T = 1 with gradients (the decode step is no-grad only), and without: the chunked core
    # itself stays correct for one query (hyper_core would send that to the decode step)
    for offset in (0, 1, 6):
        inputs = make_inputs(glu, t=1, batch=3, offset=offset, padding=padding, seed=offset)
        check_against_reference(inputs, (1, 4, 8), glu=glu, layout=layout, offset=offset)


def test_hyper_core_with_gradients_takes_the_chunked_path():
    inputs = make_inputs(True, t=9, offset=2, padding=True)
    kw = dict(glu=True, layout="lag", offset=2)
    out = inputs.call(hyper_core, chunk_size=4, **kw)
    assert out.grad_fn is not None and "hyper_core_chunked" in type(out.grad_fn).__name__  # the custom op
    torch.testing.assert_close(out, inputs.call(hyper_core_reference, **kw), rtol=1e-10, atol=1e-10)
    ref = inputs.call(hyper_core, impl="reference", **kw)
    torch.testing.assert_close(ref, inputs.call(hyper_core_reference, **kw), rtol=0, atol=0)


GRADCHECK_CASES = [  # glu, layout, mixes, padding, chunk, batch
    (False, "lag", (True, True), True, 2, 2),
    (True, "lag", (True, True), True, 3, 2),
    (True, "left", (True, True), True, 2, 2),
    (False, "left", (True, True), False, 4, 2),
    (True, "lag", (False, True), False, 2, 2),
    (True, "lag", (True, False), True, 2, 2),
    (False, "lag", (False, False), True, 3, 2),
    (False, "lag", (True, True), True, 3, 1),
    (True, "lag", (True, True), True, 3, 1),
    (True, "left", (True, True), True, 3, 1),
]


@pytest.mark.parametrize("glu,layout,mixes,padding,chunk,batch", GRADCHECK_CASES)
def test_hand_written_backward_gradcheck(glu, layout, mixes, padding, chunk, batch):
    offset = 2
    inputs = make_inputs(glu, batch=batch, heads=1, t=5, offset=offset, dk=2, dv=2, r=2, max_len=8,
                         padding=padding, mixes=mixes, seed=chunk + batch)
    names = [n for n, _ in inputs.leaves()]

    def fn(*xs):
        given = dict(zip(names, xs))
        mix = [tuple(given[f"{t}{i}"] for t in "ABp") if f"A{i}" in given else None for i in (1, 2)]
        return hyper_core_chunked(given["q"], given["k"], given["v"], given.get("s1"), given.get("s2"), *mix,
                                  glu=glu, layout=layout, offset=offset, key_valid=inputs.key_valid, chunk_size=chunk)

    xs = tuple(t for _, t in inputs.leaves())
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-7, rtol=1e-5)

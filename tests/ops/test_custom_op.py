"""The Hyper cores as torch.library custom ops (ops/hyper/custom_op.py): the chunked twin tests and a
gradcheck through the op, ``torch.library.opcheck`` (schema, autograd registration, fake tensors,
AOT dispatch with dynamic shapes) and the decode op; the Triton core's op where triton and CUDA are."""

import itertools

import pytest
import torch

from hypermlp.ops import hyper_core, hyper_core_chunked, hyper_core_decode, hyper_core_reference
from hypermlp.ops.hyper.custom_op import chunked_op, decode_op, triton_decode_op, triton_op

from ._inputs import make_inputs

def check_op_against_reference(op, inputs, chunks, **kw):
    """Output and every gradient of ``op`` against the reference (float64), per chunk size; and
    the no-grad forward."""
    ref = inputs.call(hyper_core_reference, **kw)
    grad_out = torch.randn_like(ref)
    names, params = zip(*inputs.leaves())
    ref_grads = torch.autograd.grad(ref, params, grad_out)
    for chunk in chunks:
        out = inputs.call(op, chunk_size=chunk, **kw)
        assert "Generated" in type(out.grad_fn).__name__  # the op's own autograd formula
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"output, chunk {chunk}")
        for name, g, gr in zip(names, torch.autograd.grad(out, params, grad_out), ref_grads):
            torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-10, msg=f"grad of {name}, chunk {chunk}")
        with torch.no_grad():
            out_ng = inputs.call(op, chunk_size=chunk, **kw)
        torch.testing.assert_close(out_ng, ref, rtol=1e-10, atol=1e-10, msg=f"no-grad output, chunk {chunk}")


@pytest.mark.parametrize("glu,layout,padding", list(itertools.product([False, True], ["lag", "left"], [False, True])))
@pytest.mark.parametrize("offset", [0, 5])
def test_chunked_op_matches_reference(glu, layout, padding, offset):
    # T = 11 against chunks that do not divide it, one block, and a chunk larger than T
    inputs = make_inputs(glu, t=11, offset=offset, padding=padding, seed=offset + 7 * glu)
    check_op_against_reference(chunked_op, inputs, (1, 4, 7, 64), glu=glu, layout=layout, offset=offset)


@pytest.mark.parametrize("mixes", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("glu", [False, True])
def test_chunked_op_with_mixings_off(mixes, glu):
    inputs = make_inputs(glu, t=9, offset=3, padding=True, mixes=mixes)
    check_op_against_reference(chunked_op, inputs, (4, 9), glu=glu, layout="lag", offset=3)


@pytest.mark.parametrize("glu,padding", [(False, False), (True, True)])
def test_chunked_op_single_query_with_gradients(glu, padding):
    for offset in (0, 6):  # T = 1, batch 3: the op, not the decode step (gradients are needed)
        inputs = make_inputs(glu, t=1, batch=3, offset=offset, padding=padding, seed=offset)
        check_op_against_reference(chunked_op, inputs, (1, 4), glu=glu, layout="lag", offset=offset)


def test_only_the_asked_gradients_are_computed():
    inputs = make_inputs(True, t=6, offset=1, padding=True)
    kw = dict(glu=True, layout="lag", offset=1, key_valid=inputs.key_valid, chunk_size=4)
    q, k = inputs.q.detach(), inputs.k.detach().requires_grad_()  # q and the tables: no gradient
    mix1 = tuple(t.detach() for t in inputs.mix1)
    out = chunked_op(q, k, inputs.v, inputs.s1, inputs.s2, mix1, inputs.mix2, **kw)
    ref = hyper_core_reference(q, k, inputs.v, inputs.s1, inputs.s2, mix1, inputs.mix2, **kw_ref(kw))
    params = (k, inputs.v, inputs.s1, inputs.s2, *inputs.mix2)
    grad_out = torch.randn_like(out)
    for g, gr in zip(torch.autograd.grad(out, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
        torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-10)


def kw_ref(kw):
    return {n: x for n, x in kw.items() if n != "chunk_size"}


@pytest.mark.parametrize("glu,layout,padding,batch", [(False, "lag", True, 2), (True, "lag", True, 1),
                                                      (True, "left", False, 2)])
def test_gradcheck_through_the_op(glu, layout, padding, batch):
    offset = 2
    inputs = make_inputs(glu, batch=batch, heads=1, t=5, offset=offset, dk=2, dv=2, r=2, max_len=8,
                         padding=padding, seed=batch)
    names = [n for n, _ in inputs.leaves()]

    def fn(*xs):
        given = dict(zip(names, xs))
        mix = [tuple(given[f"{t}{i}"] for t in "ABp") for i in (1, 2)]
        return hyper_core(given["q"], given["k"], given["v"], given["s1"], given["s2"], *mix, glu=glu,
                          layout=layout, offset=offset, key_valid=inputs.key_valid, chunk_size=2)

    assert torch.autograd.gradcheck(fn, tuple(t for _, t in inputs.leaves()), eps=1e-6, atol=1e-7, rtol=1e-5)


def _flat(inputs, detach=False):
    xs = [inputs.q, inputs.k, inputs.v, inputs.s1, inputs.s2, *(inputs.mix1 or (None,) * 3),
          *(inputs.mix2 or (None,) * 3)]
    return [None if x is None else (x.detach() if detach else x) for x in xs]


@pytest.mark.parametrize("glu,padding,mixes,keep", [(True, True, (True, True), True), (False, False, (True, False), True),
                                                    (True, False, (False, False), False)])
def test_opcheck_chunked(glu, padding, mixes, keep):
    inputs = make_inputs(glu, batch=2, heads=1, t=5, offset=2, dk=2, dv=2, r=2, max_len=8, padding=padding,
                         mixes=mixes)
    args = (*_flat(inputs), inputs.key_valid, glu, "lag", 2, 1e-12, 2, keep)
    torch.library.opcheck(chunked_op.forward_op, args)


def test_opcheck_decode():
    inputs = make_inputs(True, batch=2, heads=1, t=1, offset=4, dk=2, dv=2, r=2, max_len=8, padding=True)
    torch.library.opcheck(decode_op.op, (*_flat(inputs, detach=True), inputs.key_valid, True, "lag", 1e-12))


@pytest.mark.parametrize("glu,padding", [(False, False), (True, True)])
def test_decode_op_matches_the_decode_step(glu, padding):
    inputs = make_inputs(glu, t=1, batch=3, offset=6, padding=padding)
    kw = dict(glu=glu, offset=6)
    with torch.no_grad():
        out = inputs.call(decode_op, **kw)
        torch.testing.assert_close(out, inputs.call(hyper_core_decode, **kw), rtol=0, atol=0)
        torch.testing.assert_close(out, inputs.call(hyper_core_reference, **kw), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="one query"):
        make_inputs(glu, t=2, offset=5).call(decode_op, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_op_computes_as_the_chunked_core_in_every_dtype(dtype):
    low = make_inputs(True, t=9, offset=2, padding=True).map(lambda x: x.to(dtype))
    kw = dict(glu=True, layout="lag", offset=2, chunk_size=4)
    out, ref = low.call(chunked_op, **kw), low.call(hyper_core_chunked, **kw)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    names, params = zip(*low.leaves())
    grad_out = torch.randn_like(out)
    for name, g, gr in zip(names, torch.autograd.grad(out, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
        assert g.dtype == gr.dtype == dtype and torch.isfinite(g).all(), name
        torch.testing.assert_close(g, gr, rtol=0, atol=0, msg=name)


needs_triton = pytest.mark.skipif(triton_op is None or not torch.cuda.is_available(),
                                  reason="the Triton core needs ops/hyper/triton, triton and a CUDA device")


@needs_triton
@pytest.mark.parametrize("glu,padding", [(False, False), (True, True)])
def test_triton_op_matches_reference(glu, padding):
    inputs = make_inputs(glu, t=37, offset=5, padding=padding).map(lambda x: x.to("cuda", torch.float32))
    inputs = inputs._replace(key_valid=None if inputs.key_valid is None else inputs.key_valid.cuda())
    kw = dict(glu=glu, layout="lag", offset=5)
    ref = inputs.call(hyper_core_reference, **kw)
    out = inputs.call(triton_op, **kw)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)  # tf32 dots in the kernels
    names, params = zip(*inputs.leaves())
    grad_out = torch.randn_like(ref)
    for name, g, gr in zip(names, torch.autograd.grad(out, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
        torch.testing.assert_close(g, gr, rtol=5e-3, atol=5e-3, msg=name)
    one = make_inputs(glu, t=1, offset=8, padding=padding).map(lambda x: x.to("cuda", torch.float32))
    with torch.no_grad():
        torch.testing.assert_close(one._replace(key_valid=None).call(triton_decode_op, glu=glu, offset=8),
                                   one._replace(key_valid=None).call(hyper_core_decode, glu=glu, offset=8),
                                   rtol=2e-3, atol=2e-3)

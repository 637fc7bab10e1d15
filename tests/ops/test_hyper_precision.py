"""Half precision in the Hyper core (README.md, "Precision"): float16 and bfloat16 inputs, given as
such or as a layer hands them under CPU autocast (projections in half, tables in float32), against
the float64 reference evaluated on the same rounded values.

Cases (``case_inputs``):
  zero    an all-zero query row and an all-zero key: that row's rho is sqrt(eps), eps = 1e-12
          (0 in float16);
  small   q, k, v scaled by 1e-3: |z|^2 ~ 1e-12, far below float16's smallest subnormal;
  normal  the factory's inputs;
  large   q, k scaled by 30: the raw (unnormalised) readout is beyond float16's largest number.

Tolerance (``assert_near``): every entry within one unit in the last place of its float64 value,
rtol = eps of the dtype (float16 2^-10, bfloat16 2^-7). The core computes in float32 and rounds
once, at the end, which costs at most eps/2; the other half covers the float32 arithmetic (about
1e-7 relative). Plus an absolute slack of eps/100 times the tensor's largest entry (for entries
that come from cancellations; the float32 error there is still about 100x smaller) and the
spacing of float16's subnormals. The code before the float32 policy failed these by NaN (float16)
or by one to two eps norm-wise (bfloat16).
"""

import contextlib
import itertools

import pytest
import torch

from hypermlp.ops import hyper_core, hyper_core_chunked, hyper_core_decode, hyper_core_reference

from ._inputs import make_inputs

HALF = [torch.float16, torch.bfloat16]
CASES = ["zero", "small", "normal", "large"]


def assert_near(actual, expected, dtype, what):
    fin = torch.finfo(dtype)
    assert torch.isfinite(actual).all(), f"{what}: not finite"
    atol = fin.eps * (1e-2 * expected.abs().max().item() + fin.smallest_normal)
    torch.testing.assert_close(actual.double(), expected, rtol=fin.eps, atol=atol, msg=lambda m: f"{what}: {m}")


def case_inputs(case, glu, zero_row, **kw):
    """float64 inputs of one case (module docstring); ``zero_row``: the query row made zero."""
    inputs = make_inputs(glu, **kw)
    q, k, v = (x.detach().clone() for x in inputs[:3])
    if case == "zero":
        q[:, :, zero_row] = 0
        k[:, :, 2] = 0
    elif case == "small":
        q, k, v = q * 1e-3, k * 1e-3, v * 1e-3
    elif case == "large":
        q, k = q * 30, k * 30
    return inputs._replace(q=q, k=k, v=v).map(lambda x: x)


def rounded(inputs, dtype, autocast):
    """The inputs in ``dtype``; with ``autocast`` the tables stay in float32, as a layer's
    parameters do under autocast. Returns (those inputs, the same values in float64)."""
    low = inputs.map(lambda x: x.to(dtype))
    if autocast:
        as_f32 = inputs.map(lambda x: x.float())
        low = low._replace(mix1=as_f32.mix1, mix2=as_f32.mix2)
    return low, low.map(lambda x: x.double())


def autocast_ctx(dtype, on):
    return torch.autocast("cpu", dtype=dtype) if on else contextlib.nullcontext()


def check_with_grads(fn, inputs, dtype, autocast, chunk_size=None, **kw):
    """Output and every gradient of ``fn`` on half inputs against the float64 reference;
    ``chunk_size`` for ``fn`` only."""
    low, exact = rounded(inputs, dtype, autocast)
    ref = exact.call(hyper_core_reference, **kw)
    with autocast_ctx(dtype, autocast):
        out = low.call(fn, **kw, **({} if chunk_size is None else dict(chunk_size=chunk_size)))
    assert out.dtype == dtype
    assert_near(out, ref, dtype, "output")
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    names, params = zip(*low.leaves())
    grads = torch.autograd.grad(out, params, grad_out)
    ref_grads = torch.autograd.grad(ref, [t for _, t in exact.leaves()], grad_out.double())
    for name, p, g, gr in zip(names, params, grads, ref_grads):
        assert g.dtype == p.dtype, name
        assert_near(g, gr, dtype, f"grad of {name}")  # float32 table grads (autocast): the same bound


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("glu,layout,padding", [(False, "lag", False), (True, "lag", True), (True, "left", False)])
def test_chunked_half(dtype, case, glu, layout, padding):
    # T = 11 in blocks of 4: several blocks, a short last one, key and table gradients summed over blocks
    inputs = case_inputs(case, glu, zero_row=5, t=11, offset=3, padding=padding, seed=2)
    check_with_grads(hyper_core_chunked, inputs, dtype, False, glu=glu, layout=layout, offset=3, chunk_size=4)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("glu", [False, True])
def test_reference_half(dtype, case, glu):
    inputs = case_inputs(case, glu, zero_row=5, t=9, offset=2, padding=True, seed=3)
    check_with_grads(hyper_core_reference, inputs, dtype, False, glu=glu, offset=2)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("glu,padding", [(False, False), (True, True)])
def test_decode_half(dtype, case, glu, padding):
    # the one query is the zero row
    inputs = case_inputs(case, glu, zero_row=0, t=1, offset=14, padding=padding, seed=4)
    low, exact = rounded(inputs, dtype, False)
    kw = dict(glu=glu, offset=14)
    with torch.no_grad():
        ref = exact.call(hyper_core_reference, **kw)
        out = low.call(hyper_core_decode, **kw)
        dispatched = low.call(hyper_core, **kw)
    assert out.dtype == dtype
    assert_near(out, ref, dtype, "decode output")
    torch.testing.assert_close(dispatched, out, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case,glu", [("zero", True), ("small", False), ("normal", True), ("large", True)])
def test_under_autocast(dtype, case, glu):
    """As a layer calls the core under autocast: q, k, v and the gates in half, the tables in float32;
    autocast must not push the core's float32 matmuls back down to half."""
    inputs = case_inputs(case, glu, zero_row=4, t=10, offset=2, padding=True, seed=6)
    check_with_grads(hyper_core_chunked, inputs, dtype, True, glu=glu, offset=2, chunk_size=3)
    check_with_grads(hyper_core_reference, inputs, dtype, True, glu=glu, offset=2)
    one = case_inputs(case, glu, zero_row=0, t=1, offset=9, padding=True, seed=7)
    low, exact = rounded(one, dtype, True)
    with torch.no_grad():
        ref = exact.call(hyper_core_reference, glu=glu, offset=9)
        with torch.autocast("cpu", dtype=dtype):
            out = low.call(hyper_core_decode, glu=glu, offset=9)
    assert out.dtype == dtype
    assert_near(out, ref, dtype, "decode output under autocast")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_no_grad_chunked_half(dtype):
    """The no-grad forward (its own in-place path) under the same bound."""
    for case, glu in itertools.product(("zero", "small", "large"), (False, True)):
        inputs = case_inputs(case, glu, zero_row=6, t=13, offset=0, seed=8)
        low, exact = rounded(inputs, dtype, False)
        with torch.no_grad():
            ref = exact.call(hyper_core_reference, glu=glu)
            out = low.call(hyper_core_chunked, glu=glu, chunk_size=5)
        assert out.dtype == dtype
        assert_near(out, ref, dtype, f"no-grad output, {case}, glu={glu}")

"""The layers in half precision: converted (``.half()``, ``.bfloat16()``) or under CPU autocast
(float16, bfloat16), with an all-zero input token and with inputs around 1e-3, give finite outputs
and finite gradients (input and every parameter). Softmax attention is there for comparison.

An all-zero token has an all-zero query (no bias before the core), so its rho is sqrt(eps); inputs
of 1e-3 make |z|^2 about 1e-12, below float16's range. Both gave NaN in float16 before the core
computed in float32 (src/hypermlp/ops/hyper/README.md, "Precision").
"""

import contextlib
import copy

import pytest
import torch

from hypermlp import HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

from .helpers import make, x_of

LAYERS = [HyperMLP, HyperGLU, ReLUAttention, SoftmaxAttention]
MODES = {  # name: (dtype, autocast)
    "half": (torch.float16, False),
    "bfloat16": (torch.bfloat16, False),
    "autocast-float16": (torch.float16, True),
    "autocast-bfloat16": (torch.bfloat16, True),
}


def case_input(case):
    x = x_of(batch=2, t=17, seed=3)
    if case == "zero":
        x[:, 0] = 0  # the first token: its query and (through the causal conv) its key are zero
        x[:, 6] = 0
    elif case == "small":
        x = x * 1e-3
    return x


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", ["zero", "small", "normal"])
def test_half_precision_is_finite(cls, mode, case):
    dtype, autocast = MODES[mode]
    layer = make(cls, dtype=torch.float32 if autocast else dtype)
    x = case_input(case).to(torch.float32 if autocast else dtype).requires_grad_()
    ctx = torch.autocast("cpu", dtype=dtype) if autocast else contextlib.nullcontext()
    with ctx:
        out = layer(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), "output"
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    (out.float() * weight).sum().backward()
    assert torch.isfinite(x.grad).all(), "input gradient"
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"gradient of {name}"


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", ["zero", "small"])
def test_half_precision_output_is_close(cls, mode, case):
    """Finite is not enough (a readout that underflows to 0 is finite): the output is within a few
    eps of the float64 layer's, norm-wise. Every projection rounds to the dtype, so several eps."""
    dtype, autocast = MODES[mode]
    ref_layer = make(cls, dtype=torch.float64)
    x = case_input(case)
    ref = ref_layer(x)
    layer = copy.deepcopy(ref_layer).to(torch.float32 if autocast else dtype)
    ctx = torch.autocast("cpu", dtype=dtype) if autocast else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        out = layer(x.to(torch.float32 if autocast else dtype))
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < 8 * torch.finfo(dtype).eps, err

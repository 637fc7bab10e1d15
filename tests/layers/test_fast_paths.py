"""The layers' fast paths: the shifted-add depthwise conv against ``F.conv1d``, cached decoding
and chunked-vs-reference training through whole layers. No timing assertions: speed is the
benchmark's business (``hypermlp bench``)."""

import pytest
import torch
import torch.nn.functional as F

from hypermlp.layers import HyperGLU, HyperMLP
from hypermlp.layers.common import CausalDepthwiseConv

DT = torch.float64


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_depthwise_conv_matches_conv1d(kernel):
    torch.manual_seed(kernel)
    conv = CausalDepthwiseConv(6, kernel).double()
    x = torch.randn(2, 9, 6, dtype=DT, requires_grad=True)
    y, state = conv(x)
    xt = torch.cat([x.new_zeros(2, kernel - 1, 6), x], dim=1)
    ref = F.conv1d(xt.transpose(1, 2), conv.weight, groups=6).transpose(1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert state.shape == (2, kernel - 1, 6)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), gy)
    rx, rw = torch.autograd.grad(ref, (x, conv.weight), gy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    # streaming in pieces with the carried state gives the same result, also one step at a time
    y1, s1 = conv(x[:, :4])
    y2, _ = conv(x[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), ref, rtol=1e-12, atol=1e-12)
    state, steps = None, []
    for i in range(x.shape[1]):
        yi, state = conv(x[:, i : i + 1], state)
        steps.append(yi)
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,layout", [(HyperGLU, "lag"), (HyperMLP, "lag"), (HyperGLU, "left")])
def test_layer_cached_decode_equals_parallel_forward(cls, layout):
    torch.manual_seed(0)
    layer = cls(d_model=16, n_heads=2, max_len=24, seq_rank=3, chunk_size=4, layout=layout).double()
    with torch.no_grad():  # make the tables matter
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 13, 16, dtype=DT)
    with torch.no_grad():
        full = layer(x)
        cache = layer.new_cache(2)
        parts = [layer(x[:, :6], cache=cache)] + [layer(x[:, i : i + 1], cache=cache) for i in range(6, 13)]
    stepped = torch.cat(parts, dim=1)
    if layout == "lag":
        torch.testing.assert_close(stepped, full, rtol=1e-10, atol=1e-10)
    else:  # left layout: only the last position of each call coincides with the parallel forward
        torch.testing.assert_close(stepped[:, -1], full[:, -1], rtol=1e-10, atol=1e-10)


def test_reference_and_chunked_layers_agree_in_training():
    torch.manual_seed(1)
    fast = HyperGLU(d_model=16, n_heads=2, max_len=16, seq_rank=3, chunk_size=3).double()
    ref = HyperGLU(d_model=16, n_heads=2, max_len=16, seq_rank=3, impl="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 10, 16, dtype=DT)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    yf, yr = fast(x, mask=mask), ref(x, mask=mask)
    torch.testing.assert_close(yf, yr, rtol=1e-10, atol=1e-10)
    (yf.square().sum()).backward()
    (yr.square().sum()).backward()
    for (n, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-8, atol=1e-10, msg=n)

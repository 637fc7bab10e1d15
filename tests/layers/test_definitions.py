"""Each layer against a direct computation from its definition (docs/math.md §5, §7 property 4)."""

import math

import pytest
import torch

from hypermlp import HyperMLP, ReLUAttention, SoftmaxAttention

from .helpers import make, x_of


# -- property 4: reduction to ReLU(L2Norm) attention -------------------------------------------
def relu_l2_attention_direct(layer, x, eps):
    """ReLU(L2Norm(q.k)) attention written from its definition, full T x T matrix."""
    b, t, _ = x.shape
    h = layer.n_heads
    q = layer.q_proj(x).view(b, t, h, -1).transpose(1, 2)
    k = layer.k_proj(x).view(b, t, h, -1).transpose(1, 2)
    v = layer.v_proj(x).view(b, t, h, -1).transpose(1, 2)
    scores = q @ k.transpose(-1, -2)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, 0.0)
    norm = torch.sqrt((scores**2).sum(-1, keepdim=True) + eps)
    out = (torch.relu(scores) / norm) @ v
    return layer.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def test_hypermlp_reduces_to_relu_l2norm_attention():
    layer = make(HyperMLP, mix1=False, mix2=False, conv_size=0, qk_gate=False, out_gate=False)
    x = x_of()
    torch.testing.assert_close(layer(x), relu_l2_attention_direct(layer, x, layer.config.rho_eps), rtol=1e-10, atol=1e-12)
    # with the mixings on, it does not (the comparison above can fail)
    mixed = make(HyperMLP, conv_size=0, qk_gate=False, out_gate=False)
    assert (mixed(x) - relu_l2_attention_direct(mixed, x, 1e-12)).abs().max() > 1e-3


def test_relu_attention_matches_its_definition():
    layer = make(ReLUAttention, conv_size=0, qk_gate=False, out_gate=False)
    x = x_of()
    torch.testing.assert_close(layer(x), relu_l2_attention_direct(layer, x, layer.config.rho_eps), rtol=1e-10, atol=1e-12)
    assert layer.seq_mix1 is None and layer.seq_mix2 is None
    assert not any(name.startswith(("seq_mix", "mix1", "mix2")) for name, _ in layer.named_parameters())


def rope_direct(x, positions, base=10000.0):
    """Rotate pairs (i, i + d/2) as complex numbers by angle pos * base^(-2i/d)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    rot = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions[:, None].double() * freqs)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * rot
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


@pytest.mark.parametrize("rope", [False, True])
def test_softmax_attention_matches_its_definition(rope):
    layer = make(SoftmaxAttention, n_heads=2, rope=rope)
    x = x_of()
    b, t, _ = x.shape
    q = layer.q_proj(x).view(b, t, 2, -1).transpose(1, 2)
    k = layer.k_proj(x).view(b, t, 2, -1).transpose(1, 2)
    v = layer.v_proj(x).view(b, t, 2, -1).transpose(1, 2)
    if rope:
        pos = torch.arange(t)
        q, k = rope_direct(q, pos), rope_direct(k, pos)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(scores, -1) @ v
    direct = layer.o_proj(out.transpose(1, 2).reshape(b, t, -1))
    torch.testing.assert_close(layer(x), direct, rtol=1e-10, atol=1e-12)

"""Loading the authors' reference-layer parameters (docs/math.md §9).

The state dict is built by hand from the §9 table, and the function it defines is computed here
independently, the authors' way: a full (T x T) key-position score matrix, tables stored oldest-lag
first and gathered per (query, key) pair at row L-1-(t-j), the mask applied after each mixing, and
the readout divided by max(||gate row||, 1e-12).
"""

import pytest
import torch
import torch.nn.functional as F

from hypermlp import HyperGLU, HyperMLP
from hypermlp.interop import load_reference_state_dict

DT = torch.float64


def authors_state_dict(d, h, glu, L, r, qk_rank, vo_rank, kernel=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hq = 2 * h if glu else h

    def rnd(*shape, scale=0.3):
        return torch.randn(*shape, generator=g, dtype=DT) * scale

    return {
        "q.weight": rnd(qk_rank, d), "k.weight": rnd(qk_rank, d), "v.weight": rnd(vo_rank, d),
        "c_proj.weight": rnd(d, vo_rank),
        "conv1.conv.weight": rnd(d, 1, kernel), "conv2.conv.weight": rnd(d, 1, kernel),
        "left_gate.weight": rnd(qk_rank, d), "left_gate.bias": rnd(qk_rank),
        "right_gate.weight": rnd(vo_rank, d), "right_gate.bias": rnd(vo_rank),
        "control1.weight": rnd(hq * r, d), "control1.bias": rnd(hq * r),
        "control2.weight": rnd(h * r, d), "control2.bias": rnd(h * r),
        "op.mix.U": rnd(hq, L, r), "op.mix.Vt": rnd(hq, r, L), "op.mix.d": rnd(hq, L),
        "op2.mix.U": rnd(h, L, r), "op2.mix.Vt": rnd(h, r, L), "op2.mix.d": rnd(h, L),
    }


def authors_forward(sd, x, h, glu, L):
    b, t, d = x.shape
    hq = 2 * h if glu else h

    def conv(w, inp):  # depthwise causal, left padding kernel-1
        return F.conv1d(F.pad(inp.transpose(1, 2), (w.shape[-1] - 1, 0)), w, groups=d).transpose(1, 2)

    def heads(y, n):
        return y.view(b, t, n, -1).transpose(1, 2)

    q = heads(x @ sd["q.weight"].T, hq)
    k = heads(conv(sd["conv1.conv.weight"], x) @ sd["k.weight"].T, hq)
    v = heads(conv(sd["conv2.conv.weight"], x) @ sd["v.weight"].T, h)
    q = q * torch.sigmoid(heads(x @ sd["left_gate.weight"].T + sd["left_gate.bias"], hq))
    s1 = torch.sigmoid(heads(x @ sd["control1.weight"].T + sd["control1.bias"], hq))
    s2 = torch.sigmoid(heads(x @ sd["control2.weight"].T + sd["control2.bias"], h))

    tq = torch.arange(t)[:, None]
    tk = torch.arange(t)[None, :]
    causal = (tk <= tq).to(DT)
    row = (L - 1 - (tq - tk)).clamp(0, L - 1)  # table row of each (query, key) pair

    def mix(X, U, Vt, dd, s):
        Ug = U[:, row]  # (heads, T, T, r)
        Vg = Vt.transpose(1, 2)[:, row]
        low = torch.einsum("bhij,hijr->bhir", X, Ug) * s
        return (X + torch.einsum("bhir,hijr->bhij", low, Vg) + X * dd[:, row]) * causal

    X = (q @ k.transpose(-1, -2)) * causal
    X = mix(X, sd["op.mix.U"], sd["op.mix.Vt"], sd["op.mix.d"], s1)
    gate = X[:, :h]
    act = F.softplus(X[:, h:]) * F.relu(gate) if glu else F.relu(gate)
    act = mix(act, sd["op2.mix.U"], sd["op2.mix.Vt"], sd["op2.mix.d"], s2)
    out = (act @ v) / gate.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = out.transpose(1, 2).reshape(b, t, -1)
    out = out * torch.sigmoid(x @ sd["right_gate.weight"].T + sd["right_gate.bias"])
    return out @ sd["c_proj.weight"].T


@pytest.mark.parametrize("cls,glu", [(HyperGLU, True), (HyperMLP, False)])
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_loaded_layer_computes_the_authors_function(cls, glu, impl):
    d, h, L, r = 16, 2, 24, 3
    qk_rank, vo_rank = 8, 16
    sd = authors_state_dict(d, h, glu, L, r, qk_rank, vo_rank)
    layer = cls(d_model=d, n_heads=h, max_len=L, seq_rank=r, qk_rank=qk_rank, vo_rank=vo_rank, impl=impl, chunk_size=5).to(DT)
    load_reference_state_dict(layer, sd)
    x = torch.randn(2, 13, d, generator=torch.Generator().manual_seed(3), dtype=DT)
    expected = authors_forward(sd, x, h, glu, L)
    torch.testing.assert_close(layer(x), expected, rtol=1e-9, atol=1e-10)
    # also at the full length L, where every table row is used
    x = torch.randn(1, L, d, generator=torch.Generator().manual_seed(4), dtype=DT)
    torch.testing.assert_close(layer(x), authors_forward(sd, x, h, glu, L), rtol=1e-9, atol=1e-10)


def test_loader_names_every_difference():
    layer = HyperGLU(d_model=16, n_heads=2, max_len=24, seq_rank=3, qk_rank=8)
    sd = authors_state_dict(16, 2, True, 24, 3, 8, 16)
    bad = dict(sd)
    del bad["op.mix.U"]
    bad["extra.weight"] = torch.zeros(1)
    bad["op2.mix.d"] = torch.zeros(2, 23)
    with pytest.raises(ValueError) as err:
        load_reference_state_dict(layer, bad)
    msg = str(err.value)
    assert "missing keys ['op.mix.U']" in msg
    assert "unexpected keys ['extra.weight']" in msg
    assert "op2.mix.d: expected (2, 24), got (2, 23)" in msg
    # a layer built with other switches expects other keys
    with pytest.raises(ValueError, match=r"unexpected keys \['conv1.conv.weight', 'conv2.conv.weight'\]"):
        load_reference_state_dict(HyperGLU(d_model=16, n_heads=2, max_len=24, seq_rank=3, qk_rank=8, conv_size=0), sd)
    # nothing was half-loaded by the failed calls
    fresh = HyperGLU(d_model=16, n_heads=2, max_len=24, seq_rank=3, qk_rank=8)
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError):
        load_reference_state_dict(fresh, bad)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())

"""Layer factories and inputs shared by the layer tests."""

import pytest
import torch

from hypermlp import HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

D = 16
SWITCHES = [  # several combinations of the layers' switches
    dict(),
    dict(conv_size=0, qk_gate=False, out_gate=False),
    dict(rope=True, mix1=False, qk_rank=16),
    dict(mix2=False, conv_size=2, seq_rank=3),
    dict(n_heads=1, vo_rank=8, qk_rank=8),
]


def make(cls, seed=0, dtype=torch.float64, randomize_tables=True, **kw):
    torch.manual_seed(seed)
    args = dict(d_model=D, max_len=48)
    if cls is not SoftmaxAttention:
        args.update(chunk_size=5)
    args.update(kw)
    layer = cls(**args).to(dtype)
    if randomize_tables:  # make the sequence mixings matter (their init is close to identity)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.startswith("seq_mix"):
                    p.normal_(0, 0.3)
    return layer


def hyper_layers():
    for cls in (HyperMLP, HyperGLU):
        for sw in SWITCHES:
            yield pytest.param(cls, sw, id=f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in sw.items()) or 'default'}")


ALL_LAYERS = [
    pytest.param(HyperMLP, {}, id="HyperMLP"),
    pytest.param(HyperGLU, {}, id="HyperGLU"),
    pytest.param(ReLUAttention, {}, id="ReLUAttention"),
    pytest.param(SoftmaxAttention, {}, id="SoftmaxAttention"),
    pytest.param(SoftmaxAttention, dict(conv_size=4, qk_gate=True, out_gate=True), id="SoftmaxAttention-conv-gates"),
]


def x_of(batch=2, t=17, seed=1):
    return torch.randn(batch, t, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

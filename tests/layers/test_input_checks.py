"""Bad inputs and bad configs raise errors that name the problem; defaults are the paper's."""

import pytest
import torch

from hypermlp import ConfigError, HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

from .helpers import D, make


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [HyperMLP, HyperGLU, ReLUAttention, SoftmaxAttention])
def test_bad_inputs_raise_clear_errors(cls):
    layer = make(cls, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"shape \(batch, seq_len, d_model=16\)"):
        layer(torch.randn(5, D))
    with pytest.raises(ValueError, match="does not match d_model=16"):
        layer(torch.randn(1, 3, D + 1))
    with pytest.raises(ValueError, match="sequence length 49 exceeds max_len=48"):
        layer(torch.randn(1, 49, D))
    with pytest.raises(ValueError, match="no tokens"):
        layer(torch.randn(1, 0, D))
    cache = layer.new_cache(1)
    layer(torch.randn(1, 40, D), cache=cache)
    with pytest.raises(ValueError, match=r"40 cached \+ 9 new tokens = 49 exceeds max_len=48"):
        layer(torch.randn(1, 9, D), cache=cache)
    with pytest.raises(ValueError, match="batch size 1, input has batch size 2"):
        layer(torch.randn(2, 1, D), cache=cache)
    with pytest.raises(ValueError, match="mask must be a boolean"):
        layer(torch.randn(1, 3, D), mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="mask shape"):
        layer(torch.randn(1, 3, D), mask=torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(d_model=16, n_heads=0), "n_heads must be a positive integer"),
        (dict(d_model=16, layout="right"), "layout must be one of"),
        (dict(d_model=16, impl="fast"), "impl must be one of"),
        (dict(d_model=16, qk_rank=6), "qk_rank=6 must be divisible"),
        (dict(d_model=16, vo_rank=15), "vo_rank=15 must be divisible"),
        (dict(d_model=16, conv_size=-1), "conv_size must be an integer >= 0"),
        (dict(d_model=16, chunk_size=0), "chunk_size must be a positive integer"),
        (dict(d_model=16, mix1="yes"), "mix1 must be True or False"),
        (dict(d_model=16, heads=2), r"unknown argument\(s\) \['heads'\]"),
        (dict(n_heads=2), "d_model is required"),
        (dict(d_model=16, max_len=-3), "max_len must be a positive integer"),
    ],
)
def test_invalid_config_values_raise(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        HyperGLU(**kwargs)


def test_baselines_reject_arguments_that_do_not_apply():
    with pytest.raises(ConfigError, match="unknown argument"):
        SoftmaxAttention(d_model=16, mix1=True)
    with pytest.raises(ConfigError, match="no sequence mixing"):
        ReLUAttention(d_model=16, seq_rank=4)


def test_defaults_follow_the_spec():
    layer = HyperGLU(d_model=64)
    c = layer.config
    assert (c.n_heads, c.qk_rank, c.vo_rank, c.seq_rank, c.conv_size) == (2, 16, 64, 16, 4)
    assert c.qk_gate and c.out_gate and c.mix1 and c.mix2 and not c.rope and c.layout == "lag"
    assert layer.qk_heads == 4 and layer.seq_mix1.A.shape == (4, c.max_len, 16)
    assert layer.seq_mix2.A.shape == (2, c.max_len, 16)
    assert torch.all(layer.seq_mix1.p == 0) and layer.seq_mix1.A.std().item() == pytest.approx(0.02, rel=0.1)
    assert layer.q_proj.bias is None and layer.conv_k.weight.shape == (64, 1, 4)


@pytest.mark.parametrize("cls", [HyperMLP, HyperGLU, ReLUAttention, SoftmaxAttention])
def test_empty_batch_and_wrong_dtypes_are_named(cls):
    layer = make(cls, dtype=torch.float32)
    with pytest.raises(ValueError, match="empty batch"):
        layer(torch.randn(0, 3, D))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(1, 3, D, dtype=torch.long))
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(TypeError, match=f"input dtype {dtype} does not match the layer's parameters"):
            layer(torch.randn(1, 3, D, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts by itself: accepted
        assert layer(torch.randn(1, 3, D)).shape == (1, 3, D)

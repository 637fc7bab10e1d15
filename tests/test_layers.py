"""Layer-level properties of SPEC.md §6 for every mixer, and the layers' input checks."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hypermlp import ConfigError, HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

D = 16
SWITCHES = [  # several combinations of the spec's switches
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


# -- property 1: causality ------------------------------------------------------------------
@pytest.mark.parametrize("cls,sw", ALL_LAYERS + list(hyper_layers()) + [
    pytest.param(HyperGLU, dict(impl="reference"), id="HyperGLU-reference"),
    pytest.param(HyperGLU, dict(layout="left"), id="HyperGLU-left"),
    pytest.param(HyperMLP, dict(impl="reference", rope=True, qk_rank=16), id="HyperMLP-reference-rope"),
])
def test_causality(cls, sw):
    layer = make(cls, **sw)
    x = x_of()
    y = layer(x)
    for t in (0, 6, 15):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = layer(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :])  # the change is visible later


# -- property 2: truncation invariance (layer level; the model-level test is in test_model) --
@pytest.mark.parametrize("cls,sw", ALL_LAYERS + list(hyper_layers()))
def test_truncation_invariance(cls, sw):
    layer = make(cls, **sw)
    x = x_of(t=23)
    y = layer(x)
    for t in (1, 5, 12, 22):
        torch.testing.assert_close(layer(x[:, :t]), y[:, :t], rtol=1e-10, atol=1e-12)


# -- property 7: the left layout really changes the semantics ---------------------------------
@pytest.mark.parametrize("cls", [HyperMLP, HyperGLU])
def test_left_layout_breaks_truncation_invariance(cls):
    layer = make(cls, layout="left")
    x = x_of(t=20)
    y = layer(x)
    gap = (layer(x[:, :10]) - y[:, :10]).abs().max().item()
    assert gap > 1e-3
    # ...while it coincides with the lag layout at the last position (same tables)
    lag = copy.deepcopy(layer)
    lag.config.layout = "lag"
    torch.testing.assert_close(lag(x)[:, -1], y[:, -1], rtol=1e-10, atol=1e-12)
    assert (lag(x)[:, :-1] - y[:, :-1]).abs().max() > 1e-3


# -- property 3: decode consistency -----------------------------------------------------------
@pytest.mark.parametrize("cls,sw", ALL_LAYERS + list(hyper_layers()))
def test_cached_decoding_equals_parallel_forward(cls, sw):
    layer = make(cls, **sw)
    x = x_of(t=19)
    y = layer(x)
    for prompt in (1, 4, 11):
        cache = layer.new_cache(2)
        outs = [layer(x[:, :prompt], cache=cache)]
        t = prompt
        for step in (1, 3, 1, 2):  # one token or a few at a time: the same call
            outs.append(layer(x[:, t : t + step], cache=cache))
            t += step
        while t < 19:
            outs.append(layer(x[:, t : t + 1], cache=cache))
            t += 1
        torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-12)
        assert cache.length == 19


# -- property 5: reference vs chunked vs decode, outputs and all gradients ---------------------
@pytest.mark.parametrize("cls,sw", list(hyper_layers()) + [pytest.param(ReLUAttention, {}, id="ReLUAttention")])
@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_reference_and_chunked_layers_agree_on_outputs_and_gradients(cls, sw, chunk):
    chunked = make(cls, chunk_size=chunk, **sw)
    reference = copy.deepcopy(chunked)
    reference.config.impl = "reference"
    x = x_of(t=13).requires_grad_()
    y_ref = reference(x)
    y = chunked(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, [x, *reference.parameters()], g)
    grads = torch.autograd.grad(y, [x, *chunked.parameters()], g)
    names = ["x"] + [n for n, _ in chunked.named_parameters()]
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")


def test_chunked_gradients_through_a_cache_with_offset():
    # training through a prefilled cache (offset > 0) also differentiates correctly
    layer = make(HyperGLU)
    reference = copy.deepcopy(layer)
    reference.config.impl = "reference"
    x = x_of(t=9).requires_grad_()
    outs = []
    for model in (layer, reference):
        cache = model.new_cache(2)
        model(x[:, :4], cache=cache)
        y = model(x[:, 4:], cache=cache)
        outs.append((y, torch.autograd.grad(y.sum(), [x, *model.parameters()])))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


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


# -- padding: padded positions take no part in any output -------------------------------------
@pytest.mark.parametrize("cls,sw", ALL_LAYERS + [pytest.param(HyperGLU, dict(rope=True, qk_rank=16), id="HyperGLU-rope")])
def test_left_padding_equals_unpadded_runs(cls, sw):
    layer = make(cls, **sw)
    lengths = [9, 5, 1]
    t = max(lengths)
    seqs = [x_of(batch=1, t=n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    x = torch.zeros(len(lengths), t, D, dtype=torch.float64)
    mask = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        x[i, t - n :] = s
        x[i, : t - n] = 100.0  # garbage in the padding must not leak
        mask[i, t - n :] = True
    x.requires_grad_()
    y = layer(x, mask=mask)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        torch.testing.assert_close(y[i, t - n :], layer(s[None])[0], rtol=1e-9, atol=1e-11)
        assert torch.all(y[i, : t - n] == 0)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.all(gx[~mask] == 0)

    # the same through the cache: padded prompt, then decode steps
    cache = layer.new_cache(len(lengths))
    outs = [layer(x.detach()[:, :4], cache=cache, mask=mask[:, :4])]
    for j in range(4, t):
        outs.append(layer(x.detach()[:, j : j + 1], cache=cache, mask=mask[:, j : j + 1]))
    torch.testing.assert_close(torch.cat(outs, 1), y.detach(), rtol=1e-9, atol=1e-11)


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

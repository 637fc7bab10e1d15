"""The properties of docs/math.md §7 at layer level, for every mixer: causality, truncation
invariance, the left layout breaking it, decode consistency, reference vs chunked, padding."""

import copy

import pytest
import torch

from hypermlp import HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

from .helpers import ALL_LAYERS, D, hyper_layers, make, x_of


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


# -- property 2: truncation invariance (layer level; the model-level test is in tests/models/test_lm.py) --
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


@pytest.mark.parametrize("cls,sw", ALL_LAYERS)
def test_nan_and_inf_in_the_padding_stay_out_of_real_outputs(cls, sw):
    layer = make(cls, **sw)
    x = x_of(batch=2, t=8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :3] = False
    clean = layer(x, mask=mask)
    x_bad = x.clone()
    x_bad[1, 0], x_bad[1, 1, 2], x_bad[1, 2] = float("nan"), float("inf"), float("-inf")
    x_bad.requires_grad_()
    y = layer(x_bad, mask=mask)
    torch.testing.assert_close(y, clean, rtol=0, atol=0)
    (gx,) = torch.autograd.grad(y.sum(), x_bad)
    assert torch.isfinite(gx).all() and torch.all(gx[~mask] == 0)


@pytest.mark.parametrize("cls", [SoftmaxAttention, HyperMLP])
def test_gradients_through_cached_calls_equal_the_parallel_forward(cls):
    # every mixer supports training through a cache: prompt, then two more calls
    layer = make(cls)
    x = x_of(t=9).requires_grad_()
    y_full = layer(x)
    cache = layer.new_cache(2)
    y_cached = torch.cat([layer(x[:, :4], cache=cache), layer(x[:, 4:7], cache=cache), layer(x[:, 7:], cache=cache)], 1)
    torch.testing.assert_close(y_cached, y_full, rtol=1e-10, atol=1e-12)
    grads_full = torch.autograd.grad(y_full.square().sum(), [x, *layer.parameters()])
    grads_cached = torch.autograd.grad(y_cached.square().sum(), [x, *layer.parameters()])
    for a, b in zip(grads_cached, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # and the cache still decodes without grad afterwards
    with torch.no_grad():
        assert layer(x[:, :1].detach(), cache=cache).shape == (2, 1, D)


@pytest.mark.parametrize("cls,sw", ALL_LAYERS + [pytest.param(HyperGLU, dict(layout="left"), id="HyperGLU-left")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_reaches_only_the_positions_that_see_it(cls, sw, bad):
    # docs/math.md §10: a NaN or inf at position 3 reaches outputs 3.. of its row, never 0..2
    # (in a block matmul an earlier query would meet it as 0 * NaN) and never another row
    layer = make(cls, **sw)
    x = x_of(batch=2, t=9)
    clean = layer(x)
    x_bad = x.clone()
    x_bad[1, 3, 5] = bad
    y = layer(x_bad)
    torch.testing.assert_close(y[0], clean[0], rtol=0, atol=0)
    torch.testing.assert_close(y[1, :3], clean[1, :3], rtol=0, atol=0)
    assert torch.isnan(y[1, 3:]).all()
    if sw.get("layout") == "left":
        return  # no cached decoding in the left layout
    cache = layer.new_cache(2)
    stepped = torch.cat([layer(x_bad[:, :2], cache=cache)] + [layer(x_bad[:, t : t + 1], cache=cache) for t in range(2, 9)], 1)
    torch.testing.assert_close(stepped[0], clean[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stepped[1, :3], clean[1, :3], rtol=1e-10, atol=1e-12)
    assert torch.isnan(stepped[1, 3:]).all()

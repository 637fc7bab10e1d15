"""``probe``: the intermediates of each chosen layer of a LanguageModel, from the reference path.
The layer's output rebuilt from them is the layer's output; head and layer choices slice the full
trace; the sparsity equals a direct count; bad requests are clear errors; no hook is left behind."""

import pytest
import torch

from hypermlp.inspect import InspectError, active_fraction, flip_layout, mixing_operator, probe
from hypermlp.models import LanguageModel, ModelConfig
from hypermlp.ops import Tables
from hypermlp.ops.hyper.reference import dplr_mix

MIXERS = ["hyperglu", "hypermlp", "relu", "softmax"]


def _model(impl="reference", seed=0, **mixer_args):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=20, d_model=16, n_layers=4, mixer=MIXERS, max_len=16,
                      mixer_args={"n_heads": 2, "seq_rank": 3, "impl": impl, **mixer_args})
    model = LanguageModel(cfg).eval()
    with torch.no_grad():  # tables away from their near-identity init, so the mixings matter
        for block in model.blocks:
            for name, p in block.mixer.named_parameters():
                if "seq_mix" in name:
                    p.normal_(0, 0.3)
    return model


def _layer_outputs(model, tokens, mask=None):
    """Each mixer's output in an ordinary forward (the fast path)."""
    outs = {}
    hooks = [b.mixer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(tokens, mask=mask)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("padded", [False, True])
def test_layer_output_rebuilt_from_the_probe_is_the_layer_output(impl, padded):
    model = _model(impl)
    tokens = torch.randint(0, 20, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = None
    if padded:
        mask = torch.ones(3, 11, dtype=torch.bool)
        mask[1, :4] = False
        mask[2, :1] = False
    expected = _layer_outputs(model, tokens, mask)
    probes = probe(model, tokens, mask=mask)
    assert sorted(probes) == [0, 1, 2, 3] and [p.kind for p in probes.values()] == MIXERS
    for i, p in probes.items():
        mixer = model.blocks[i].mixer
        rebuilt = mixer.finish(p.trace.out.to(p.x.dtype), p.x, p.mask, p.sees_bad)
        if impl == "reference" and p.kind != "softmax":
            assert torch.equal(rebuilt, expected[i]), p.kind  # the same loop, bit for bit
        else:
            torch.testing.assert_close(rebuilt, expected[i], atol=2e-6, rtol=1e-5)
        # the readout rebuilt from the final slot weights: a plain sum over keys
        by_key = flip_layout(p.trace.weights, fill=0.0).nan_to_num(0.0)  # (b, H, T, S)
        torch.testing.assert_close(by_key @ _values(mixer, p), p.trace.out, atol=1e-6, rtol=1e-5)


def _values(mixer, p):
    """The layer's values of every key, as its forward computes them."""
    if p.kind != "softmax":
        return mixer.core_inputs(p.x, 0, None, p.mask)[2]
    _, k, v = mixer.project(p.x, 0, None, p.mask)
    return mixer.all_keys(k, v, None, p.mask)[1]


def test_chosen_layers_and_heads_are_slices_of_the_full_trace():
    model = _model()
    tokens = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(2))
    full = probe(model, tokens)
    part = probe(model, tokens, layers=[0, 3], heads=[1])
    assert sorted(part) == [0, 3] and part[0].heads == [1]
    glu, soft = part[0], part[3]
    torch.testing.assert_close(glu.trace.z, full[0].trace.z[:, [1, 3]], equal_nan=True)  # gate 1, scale 1 of H = 2
    for f in ("rho", "routed", "magnitude", "a", "weights", "out"):
        torch.testing.assert_close(getattr(glu.trace, f), getattr(full[0].trace, f)[:, [1]], equal_nan=True)
    assert torch.equal(glu.gates[0], full[0].gates[0][:, [1, 3]]) and torch.equal(glu.gates[1], full[0].gates[1][:, [1]])
    assert torch.equal(glu.tables[0].A, full[0].tables[0].A[[1, 3]])
    torch.testing.assert_close(soft.trace.weights, full[3].trace.weights[:, [1]], equal_nan=True)


def test_active_fraction_is_a_direct_count():
    model = _model()
    tokens = torch.randint(0, 20, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    for p in probe(model, tokens, mask=mask).values():
        frac = active_fraction(p.trace)
        a = p.trace.weights if p.kind == "softmax" else p.trace.a
        for b in range(2):
            for h in range(len(p.heads)):
                for t in range(10):
                    real = [j for j in range(t + 1) if bool(mask[b, j])]
                    if not real:
                        assert frac[b, h, t].isnan()
                        continue
                    active = sum(1 for j in real if float(a[b, h, t, t - j]) > 0)
                    assert float(frac[b, h, t]) == pytest.approx(active / len(real))
        if p.kind == "softmax":
            assert torch.equal(frac[0], torch.ones_like(frac[0]))


def test_mixing_operator_is_the_dplr_mixing():
    g = torch.Generator().manual_seed(4)
    tables = Tables(torch.randn(2, 8, 3, generator=g), torch.randn(2, 8, 3, generator=g), torch.randn(2, 8, generator=g))
    gate = torch.rand(3, generator=g)
    z = torch.randn(5, generator=g)
    p, m = mixing_operator(tables, gate, head=1, n=5)
    mixed = dplr_mix(z[None, None], Tables(*(t[1:2, :5] for t in tables)), gate[None, None])[0, 0]
    torch.testing.assert_close(z + z * p + z @ m, mixed)


def test_bad_requests_are_clear_errors_and_no_hook_is_left():
    model = _model()
    tokens = torch.randint(0, 20, (1, 5))
    with pytest.raises(InspectError, match="unknown layer 4: the model has 4"):
        probe(model, tokens, layers=[4])
    with pytest.raises(InspectError, match=r"unknown head 2: layer 0 \(hyperglu\) has 2"):
        probe(model, tokens, heads=[2])
    with pytest.raises(InspectError, match="17 tokens but the model's max_len is 16"):
        probe(model, torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(InspectError, match="expected a LanguageModel"):
        probe(torch.nn.Linear(2, 2), tokens)
    probe(model, tokens)
    assert all(not b.mixer._forward_pre_hooks for b in model.blocks)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_probe_finite_float32_traces(dtype):
    model = _model("chunked").to(dtype)
    tokens = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(5))
    expected = _layer_outputs(model, tokens)
    for i, p in probe(model, tokens).items():
        assert p.trace.out.dtype == torch.float32 and torch.isfinite(p.trace.out).all()
        assert torch.isfinite(p.trace.weights[p.trace.valid.expand_as(p.trace.weights)]).all()
        rebuilt = model.blocks[i].mixer.finish(p.trace.out.to(dtype), p.x, p.mask, p.sees_bad)
        torch.testing.assert_close(rebuilt.float(), expected[i].float(), atol=3e-2, rtol=3e-2)

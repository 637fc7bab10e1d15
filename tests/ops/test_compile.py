"""torch.compile of the whole LanguageModel with every mixer: fullgraph=True (no graph break), one
graph for every sequence length (dynamic=True, a second length must not recompile), compiled
forward and backward equal to eager. The cores are opaque custom ops (ops/hyper/custom_op.py).

backend="aot_eager" traces exactly what inductor would (dynamo + AOT autograd with fake tensors
through the ops' fake and autograd registrations) without generating C++; inductor itself
compiles the same model on CPU too but takes minutes on a CI-class machine."""

import pytest
import torch

from hypermlp.models.lm import LanguageModel, ModelConfig

MIXERS = ["hyperglu", "hypermlp", "relu", "softmax"]


def hybrid(seed=0) -> LanguageModel:
    torch.manual_seed(seed)  # one layer of each mixer: one compile covers them all
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=len(MIXERS), mixer=MIXERS,
                      mixer_args={"n_heads": 2, "chunk_size": 8}, max_len=64)
    return LanguageModel(cfg)


def loss_and_grads(model, idx, targets, mask=None):
    _, loss = model(idx, targets, mask=mask)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def test_compiled_model_matches_eager_and_does_not_recompile_for_a_new_length():
    model = hybrid()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    for i, t in enumerate((13, 29)):  # neither a multiple of the chunk (8)
        idx, targets = torch.randint(0, 32, (2, t), generator=g), torch.randint(0, 32, (2, t), generator=g)
        if i == 0:
            got = loss_and_grads(compiled, idx, targets)
        else:  # a second length runs the graph compiled for the first
            with torch.compiler.set_stance("fail_on_recompile"):
                got = loss_and_grads(compiled, idx, targets)
        want = loss_and_grads(model, idx, targets)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
        for (name, _), a, b in zip(model.named_parameters(), got[1], want[1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"grad of {name}, T={t}")


@pytest.mark.parametrize("t", [16, 37])
def test_no_graph_break_with_padding(t):
    model = hybrid()
    idx = torch.randint(0, 32, (2, t), generator=torch.Generator().manual_seed(t))
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[0, :5] = False  # left padding in one row
    report = torch._dynamo.explain(model)(idx, mask=mask)
    assert report.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in report.break_reasons]
    assert report.graph_count == 1


def test_out_of_range_token_ids_still_fail_when_compiled():
    model = hybrid()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="token ids must lie in"):
        compiled(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(torch.tensor([[1, 40]]))

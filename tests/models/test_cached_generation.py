"""Cached generation gives exactly what recomputing the whole sequence for every token gives."""

import pytest
import torch

from hypermlp.models import LanguageModel, ModelConfig


def tiny_cfg(mixer="hyperglu", vocab=16, max_len=32):
    return ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, mixer=mixer, mixer_args={"n_heads": 2}, max_len=max_len)


@pytest.mark.parametrize("mixer", ["softmax", "relu", "hypermlp", "hyperglu"])
def test_greedy_cached_generation_equals_full_recomputation(mixer):
    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg(mixer, vocab=50, max_len=40)).double().eval()
    prompt = torch.randint(0, 50, (2, 7))
    cached = model.generate(prompt, max_new_tokens=20, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(20):  # no cache: the whole sequence again for every token
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(cached, ids)
    assert len(set(ids[0, 7:].tolist())) > 1  # not a constant continuation

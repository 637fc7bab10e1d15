"""``generate()`` on the layers' caches: one token per step after the prompt, and the same
tokens as recomputing the whole sequence every step (greedy, sampling, beams, left padding)."""

import pytest
import torch

from hypermlp.hf import HyperMLPCache
from hypermlp.layers import LayerCache

from .helpers import hf_model


def prompts(b=2, t=7, vocab=64, seed=2):
    return torch.randint(1, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def left_padded(rows):
    """A (B, T) batch of the rows, left-padded with 0, and its attention mask."""
    t = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    return ids, mask


@pytest.mark.parametrize("name", ["hyperglu", "softmax", "hybrid"])
def test_cached_greedy_equals_recomputation_and_language_model(name):
    hf = hf_model(name)
    x = prompts()
    cached = hf.generate(x, max_new_tokens=12, do_sample=False)
    assert cached.shape == (2, 19)
    assert torch.equal(cached, hf.generate(x, max_new_tokens=12, do_sample=False, use_cache=False))
    assert torch.equal(cached, hf.to_language_model().eval().generate(x, 12, temperature=0))


def test_cached_decoding_feeds_one_token_per_step():
    hf = hf_model("hybrid")
    seen = []
    hook = hf.model.embed.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    try:
        out = hf.generate(prompts(t=9), max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    finally:
        hook.remove()
    assert seen == [9] + [1] * 5  # the prompt once, then O(t) per token: never the whole sequence again
    cache = out.past_key_values
    assert isinstance(cache, HyperMLPCache) and cache.get_seq_length() == 14
    assert all(isinstance(c, LayerCache) and c.length == 14 for c in cache.layer_caches)


def test_sampling_with_the_cache_equals_recomputation():
    hf = hf_model("hybrid")
    x = prompts()
    torch.manual_seed(5)
    a = hf.generate(x, max_new_tokens=15, do_sample=True, top_k=20, temperature=0.9)
    torch.manual_seed(5)
    b = hf.generate(x, max_new_tokens=15, do_sample=True, top_k=20, temperature=0.9, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["hyperglu", "softmax", "hybrid"])
def test_left_padded_batch(name):
    hf = hf_model(name)
    rows = [prompts(1, 9, seed=3)[0], prompts(1, 4, seed=4)[0], prompts(1, 6, seed=5)[0]]
    ids, mask = left_padded(rows)
    cached = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    again = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(cached, again)
    for i, r in enumerate(rows):  # padding takes no part: each row continues as it would alone
        alone = hf.generate(r[None], max_new_tokens=10, do_sample=False)[0]
        assert torch.equal(cached[i, ids.shape[1] - len(r):], alone)
    torch.manual_seed(1)
    sampled = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, pad_token_id=0)
    torch.manual_seed(1)
    assert torch.equal(sampled, hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True,
                                            pad_token_id=0, use_cache=False))


def test_beam_search_reorders_the_cache():
    hf = hf_model("hybrid")
    ids, mask = left_padded([prompts(1, 6, seed=6)[0], prompts(1, 3, seed=7)[0]])
    kw = dict(attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(hf.generate(ids, **kw), hf.generate(ids, use_cache=False, **kw))


def test_past_max_len_is_an_error_naming_it():
    hf = hf_model("hyperglu")  # max_len 48
    with pytest.raises(ValueError, match="max_len=48"):
        hf.generate(prompts(t=40), max_new_tokens=20, do_sample=False)


def test_cache_layer_interface():
    hf = hf_model("hybrid")
    cache = HyperMLPCache.for_blocks(hf.model.blocks, batch_size=2)
    assert cache.get_seq_length() == 0 and cache.get_max_length() == 48 and len(cache) == 2
    x = prompts(t=5)
    hf(x, past_key_values=cache)
    layer = cache.layers[0]
    assert cache.get_seq_length() == 5 and layer.get_mask_sizes(1) == (6, 0)
    assert layer.keys.shape[2] == 5 and cache.batch_size == 2
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.batch_size == 1 and layer.keys.shape[0] == 1
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(1)
    cache.reset()
    assert cache.get_seq_length() == 0

"""The language model: spec §6 properties through the whole model, generation, persistence."""

import pytest
import torch

from hypermlp.config import ConfigError
from hypermlp.models import LanguageModel, ModelConfig

MIXERS = ["softmax", "relu", "hypermlp", "hyperglu", ["hyperglu", "softmax"]]


def tiny(mixer, **kw):
    torch.manual_seed(0)
    args = {"n_heads": 2} if mixer == "softmax" else {"n_heads": 2, "chunk_size": 6}
    cfg = ModelConfig(vocab_size=37, d_model=32, n_layers=2, mixer=mixer, mixer_args=args, max_len=40, **kw)
    model = LanguageModel(cfg).double()
    with torch.no_grad():  # make the sequence mixings matter
        for name, p in model.named_parameters():
            if ".seq_mix" in name:
                p.normal_(0, 0.3)
    return model.eval()


def ids(t=25, batch=2, seed=0):
    return torch.randint(0, 37, (batch, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mixer", MIXERS, ids=str)
def test_truncation_invariance_through_the_model(mixer):
    model = tiny(mixer)
    x = ids()
    full = model(x)
    for t in (1, 7, 24):
        torch.testing.assert_close(model(x[:, :t]), full[:, :t], rtol=1e-9, atol=1e-10)


def test_left_layout_breaks_truncation_invariance_through_the_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=37, d_model=32, n_layers=2, mixer="hyperglu", mixer_args={"layout": "left"}, max_len=40)
    model = LanguageModel(cfg).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".seq_mix" in name:
                p.normal_(0, 0.3)
    x = ids()
    assert (model(x[:, :10]) - model(x)[:, :10]).abs().max() > 1e-4


@pytest.mark.parametrize("mixer", MIXERS, ids=str)
def test_cached_decoding_equals_parallel_forward_through_the_model(mixer):
    model = tiny(mixer)
    x = ids()
    full = model(x)
    for prompt in (1, 9):
        caches = model.new_caches(2)
        outs = [model(x[:, :prompt], caches=caches)]
        outs += [model(x[:, t : t + 1], caches=caches) for t in range(prompt, x.shape[1])]
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mixer", ["softmax", "hyperglu"])
def test_greedy_generation_with_cache_equals_full_recomputation(mixer):
    model = tiny(mixer)
    prompt = ids(t=6)
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    seq = prompt
    for _ in range(12):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    # sampling is seeded: same seed, same text; other seed, (almost surely) other text
    a = model.generate(prompt[0], 20, temperature=1.0, top_k=10, seed=1)
    b = model.generate(prompt[0], 20, temperature=1.0, top_k=10, seed=1)
    c = model.generate(prompt[0], 20, temperature=1.0, top_k=10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (26,)
    with pytest.raises(ValueError, match="exceeds max_len=40"):
        model.generate(prompt, max_new_tokens=40)


def test_save_and_load_round_trip_and_mismatch(tmp_path):
    model = tiny("hyperglu").float()
    model.save(str(tmp_path / "ck"))
    loaded = LanguageModel.load(str(tmp_path / "ck"))
    x = ids()
    torch.testing.assert_close(loaded(x), model(x))
    # a config that does not match the weights is refused with a clear message
    import json

    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["d_model"] = 48
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match its config"):
        LanguageModel.load(str(tmp_path / "ck"))
    with pytest.raises(FileNotFoundError, match="missing"):
        LanguageModel.load(str(tmp_path / "nothing"))


def test_tied_embeddings_and_param_count():
    tied = LanguageModel(ModelConfig(vocab_size=37, d_model=32, mixer="softmax"))
    untied = LanguageModel(ModelConfig(vocab_size=37, d_model=32, mixer="softmax", tie_embeddings=False))
    assert tied.head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == 37 * 32


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(mixer="transformer"), "unknown mixer 'transformer'"),
        (dict(mixer=["softmax"], n_layers=2), "mixer lists 1 layers but n_layers=2"),
        (dict(mixer_args={"qk_rnak": 8}), r"mixer_args \['qk_rnak'\] are not accepted"),
        (dict(mixer="softmax", mixer_args={"mix1": False}), r"mixer_args \['mix1'\] are not accepted"),
        (dict(d_model=0), "d_model must be a positive integer"),
        (dict(mixer_args={"d_model": 8}), "set d_model on the model"),
    ],
)
def test_invalid_model_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LanguageModel(ModelConfig(vocab_size=10, **kwargs))


def test_bad_token_ids():
    model = tiny("softmax")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 37\)"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="shape \\(batch, seq_len\\)"):
        model(torch.tensor([1, 2]))

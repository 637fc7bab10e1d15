"""The transformers model: registration, the same function and weights as LanguageModel, the
standard forward arguments, save / load round trips and clear errors for bad folders."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from hypermlp.hf import HFCheckpointError, HyperMLPCache, HyperMLPConfig, HyperMLPForCausalLM, HyperMLPModel
from hypermlp.hf.modeling import to_hf_state_dict
from hypermlp.models import LanguageModel

from .helpers import MIXER_CONFIGS, hf_model, model_config


def ids(b=2, t=20, vocab=64, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def test_import_hypermlp_does_not_import_transformers():
    code = ("import sys, hypermlp, hypermlp.models, hypermlp.cli; hypermlp.cli.build_parser(); "
            "assert 'transformers' not in sys.modules, 'transformers imported'; "
            "assert 'hypermlp.hf' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_with_the_auto_classes():
    cfg = AutoConfig.for_model("hypermlp", vocab_size=64, d_model=32, n_layers=1, max_len=32)
    assert type(cfg) is HyperMLPConfig and cfg.model_type == "hypermlp"
    assert cfg.hidden_size == 32 and cfg.num_hidden_layers == 1 and cfg.max_position_embeddings == 32
    assert type(AutoModelForCausalLM.from_config(cfg)) is HyperMLPForCausalLM
    assert type(AutoModel.from_config(cfg)) is HyperMLPModel
    assert issubclass(HyperMLPForCausalLM, GenerationMixin)


@pytest.mark.parametrize("name", sorted(MIXER_CONFIGS))
def test_same_seed_same_weights_same_logits_as_language_model(name):
    mc = model_config(name)
    torch.manual_seed(0)
    lm = LanguageModel(mc).eval()
    hf = hf_model(name, seed=0)
    assert hf.state_dict().keys() == to_hf_state_dict(lm.state_dict()).keys()
    for k, v in to_hf_state_dict(lm.state_dict()).items():
        assert torch.equal(hf.state_dict()[k], v), k
    x = ids()
    out = hf(x)
    assert isinstance(out, CausalLMOutputWithPast)
    assert torch.equal(out.logits, lm(x))
    assert torch.equal(hf(x, attention_mask=torch.ones_like(x)).logits, lm(x))
    back = hf.to_language_model()
    assert torch.equal(back(x), lm(x))


def test_from_language_model_copies_the_weights():
    torch.manual_seed(3)
    lm = LanguageModel(model_config("hyperglu", tie_embeddings=False)).eval()
    hf = HyperMLPForCausalLM.from_language_model(lm).eval()
    assert hf.config.tie_word_embeddings is False
    x = ids()
    assert torch.equal(hf(x).logits, lm(x))


def test_labels_give_the_shifted_loss_of_language_model():
    hf = hf_model("hybrid")
    lm = hf.to_language_model().eval()
    x = ids(t=16)
    labels = x.clone()
    labels[0, :5] = -100
    out = hf(x, labels=labels)
    _, want = lm(x[:, :-1], targets=labels[:, 1:])
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-6)
    n = int((labels[:, 1:] != -100).sum())
    summed = hf(x, labels=labels, num_items_in_batch=torch.tensor(2 * n)).loss
    torch.testing.assert_close(summed, want / 2, rtol=1e-6, atol=1e-6)


def test_logits_to_keep_hidden_states_tuples_and_the_base_model():
    hf = hf_model("hybrid")
    x = ids(t=12)
    full = hf(x).logits
    torch.testing.assert_close(hf(x, logits_to_keep=1).logits, full[:, -1:])  # the head on fewer rows
    torch.testing.assert_close(hf(x, logits_to_keep=torch.tensor([0, 5])).logits, full[:, [0, 5]])
    out = hf(x, output_hidden_states=True)
    assert len(out.hidden_states) == hf.config.n_layers + 1
    logits, = hf(x, use_cache=False, return_dict=False)
    assert torch.equal(logits, full)
    base = hf.model(x)
    assert isinstance(base, BaseModelOutputWithPast) and base.last_hidden_state.shape == (2, 12, 32)
    emb = hf.get_input_embeddings()(x)
    torch.testing.assert_close(hf(inputs_embeds=emb).logits, full)
    assert hf.get_output_embeddings() is hf.head
    assert hf.head.weight is hf.model.embed.weight  # tied


def test_forward_with_a_cache_continues_the_sequence():
    hf = hf_model("hybrid")
    x = ids(t=14)
    full = hf(x).logits
    first = hf(x[:, :9], use_cache=True)
    cache = first.past_key_values
    assert isinstance(cache, HyperMLPCache) and cache.get_seq_length() == 9
    rest = hf(x[:, 9:], past_key_values=cache, cache_position=torch.arange(9, 14)).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], 1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 14


def test_bad_forward_arguments_are_named():
    hf = hf_model("hyperglu")
    x = ids(t=6)
    with pytest.raises(ValueError, match="tuples"):
        hf(x, past_key_values=((torch.zeros(1), torch.zeros(1)),))
    used = DynamicCache()
    used.update(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), 0)
    with pytest.raises(ValueError, match="DynamicCache holding 3 tokens"):
        hf(x, past_key_values=used)
    assert isinstance(hf(x, past_key_values=DynamicCache()).past_key_values, HyperMLPCache)  # an empty one: replaced
    with pytest.raises(ValueError, match="attention_mask has shape"):
        hf(x, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="4-D"):
        hf(x, attention_mask=torch.ones(2, 1, 6, 6))
    with pytest.raises(ValueError, match="cache_position starts at 3"):
        hf(x, cache_position=torch.arange(3, 9))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        hf(x + 64)
    with pytest.raises(TypeError, match="unexpected argument"):
        hf(x, bogus=1)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        hf()
    with pytest.raises(ValueError, match="n_layers"):
        HyperMLPConfig(n_layers=0)
    with pytest.raises(ValueError, match="unknown mixer"):
        HyperMLPConfig(mixer="nope")


def test_gradient_checkpointing_gives_the_same_gradients():
    x = ids(t=10)
    grads = []
    for ckpt in (False, True):
        hf = hf_model("hybrid").train()
        if ckpt:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf(x, labels=x).loss.backward()
        grads.append({k: p.grad.clone() for k, p in hf.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, tie):
    hf = hf_model("hybrid", tie_embeddings=tie)
    hf.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_hypermlp.py"} <= files
    assert not any(f.endswith(".bin") for f in files)
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["model_type"] == "hypermlp" and cfg["mixer"] == ["hyperglu", "softmax"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_hypermlp.HyperMLPForCausalLM"
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is HyperMLPForCausalLM and again.config.tie_word_embeddings is tie
    assert again.config.to_model_config() == hf.config.to_model_config()
    x = ids()
    assert torch.equal(again(x).logits, hf(x).logits)
    assert (again.head.weight is again.model.embed.weight) is tie
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is HyperMLPModel
    assert torch.equal(base(x).last_hidden_state, hf.model(x).last_hidden_state)


def test_trust_remote_code_loads_in_a_process_that_never_imported_hypermlp(tmp_path):
    hf = hf_model("hybrid")
    hf.save_pretrained(tmp_path / "m")
    x = ids()
    torch.save({"x": x, "logits": hf(x).logits}, tmp_path / "ref.pt")
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM
assert "hypermlp" not in sys.modules
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True).eval()
ref = torch.load({str(tmp_path / 'ref.pt')!r})
assert type(m).__module__ == "hypermlp.hf.modeling", type(m)
assert torch.equal(m(ref["x"]).logits, ref["logits"])
m.save_pretrained({str(tmp_path / 'again')!r})
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    # a model loaded that way saves the same folder: the auto_map and the three-line shim, no copied source
    assert sorted(os.listdir(tmp_path / "again")) == sorted(os.listdir(tmp_path / "m"))


# ----------------------------------------------------------------------------- bad folders
def test_folders_of_the_wrong_kind_are_named(tmp_path):
    with pytest.raises(HFCheckpointError, match="no config.json"):
        HyperMLPForCausalLM.from_pretrained(tmp_path)
    run = tmp_path / "lib"
    LanguageModel(model_config("hyperglu")).save(str(run))
    with pytest.raises(HFCheckpointError, match="`hypermlp train` checkpoint.*export-hf"):
        HyperMLPForCausalLM.from_pretrained(run)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(HFCheckpointError, match="type 'llama', not 'hypermlp'"):
        HyperMLPForCausalLM.from_pretrained(other)
    with pytest.raises(HFCheckpointError, match="type 'llama'"):
        HyperMLPConfig.from_pretrained(other)


def test_missing_unexpected_and_mismatched_weights_are_named(tmp_path):
    hf = hf_model("hyperglu")
    hf.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors.pop("model.blocks.1.mlp.down.weight")
    tensors["model.blocks.9.extra"] = torch.zeros(2)
    save_file(tensors, weights, metadata={"format": "pt"})
    for loader in (HyperMLPForCausalLM, AutoModelForCausalLM):
        with pytest.raises(HFCheckpointError, match=r"missing keys \['model.blocks.1.mlp.down.weight'\].*"
                                                    r"unexpected keys \['model.blocks.9.extra'\]"):
            loader.from_pretrained(tmp_path / "m")

    hf.save_pretrained(tmp_path / "shape")
    cfg = json.load(open(tmp_path / "shape" / "config.json"))
    cfg["mlp_hidden"] = 2 * cfg["mlp_hidden"]
    (tmp_path / "shape" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFCheckpointError, match="mlp"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "shape")

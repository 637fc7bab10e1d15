"""``hypermlp export-hf``: a `hypermlp train` run (bytes and BPE) becomes a folder that
AutoModelForCausalLM and AutoTokenizer load, with the run's function and tokens; bad input is
one error line."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hypermlp.checkpoint import latest_checkpoint
from hypermlp.cli import main
from hypermlp.data.text import load_corpus
from hypermlp.hf import HyperMLPForCausalLM
from hypermlp.models import LanguageModel

from ..helpers import assert_one_line_error, snapshot
from .helpers import model_config


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_export_loads_and_generates_like_the_run(runs, kind, tmp_path):
    run, folder = runs[kind]
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_hypermlp.py", "tokenizer.json",
            "tokenizer_config.json"} <= files
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model) is HyperMLPForCausalLM
    lm = LanguageModel.load(latest_checkpoint(run)).eval()
    assert model.config.to_model_config() == lm.config
    assert tok.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id

    # the run's tokens: the BPE the run trained (same corpus, same cache key) or bytes
    corpus = load_corpus(runs["corpus"], tokenizer=kind, bpe_vocab_size=300, cache_dir=str(tmp_path / "c"))
    text = "def f12(x):\n    return x"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == corpus.encode(text).tolist()
    assert torch.equal(model(ids).logits, lm(ids))

    batch = tok(["def f3(", text], return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 8)
    assert torch.equal(out[1], lm.generate(ids[0], 8, temperature=0))
    assert tok.decode(out[1], skip_special_tokens=True).startswith(text)


def test_export_errors_are_one_line(runs, tmp_path, capsys):
    run, folder = runs["byte"]
    capsys.readouterr()
    before = snapshot(folder)
    assert_one_line_error(capsys, main(["export-hf", "--checkpoint", run, "--out", folder]), "already holds files", "--force")
    assert snapshot(folder) == before
    assert main(["export-hf", "--checkpoint", run, "--out", folder, "--force"]) == 0  # an earlier export: replaced
    assert "tokenizer: byte" in capsys.readouterr().out
    assert_one_line_error(capsys, main(["export-hf", "--checkpoint", folder, "--out", str(tmp_path / "x")]),
                          "already a Hugging Face folder")
    assert_one_line_error(capsys, main(["export-hf", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "y")]),
                          "no such checkpoint folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(capsys, main(["export-hf", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "z")]),
                          "holds no checkpoint")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_one_line_error(capsys, main(["export-hf", "--checkpoint", run, "--out", str(mine), "--force"]),
                          "not a hypermlp Hugging Face export")
    assert (mine / "notes.txt").read_text() == "keep me"
    damaged = tmp_path / "damaged"
    LanguageModel(model_config("hyperglu", vocab_size=256)).save(str(damaged))
    with open(damaged / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff\xff\xff")
    assert_one_line_error(capsys, main(["export-hf", "--checkpoint", str(damaged), "--out", str(tmp_path / "d")]),
                          str(damaged))
    assert not (tmp_path / "d").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp folders left


def test_a_model_without_text_exports_without_a_tokenizer(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    LanguageModel(model_config("hyperglu", vocab_size=16)).save(str(ckpt))
    assert main(["export-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert "tokenizer: none" in capsys.readouterr().out
    assert "tokenizer.json" not in os.listdir(tmp_path / "hf")
    cfg = json.load(open(tmp_path / "hf" / "config.json"))
    assert cfg["vocab_size"] == 16 and cfg["eos_token_id"] is None
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.vocab_size == 16


def test_help_lists_export_hf_and_eval(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "export-hf" in top and "eval" in top
    for cmd in ("export-hf", "eval"):
        assert main([cmd, "--help"]) == 0
        assert "--checkpoint" in capsys.readouterr().out

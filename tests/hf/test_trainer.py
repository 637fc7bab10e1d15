"""``transformers.Trainer`` (accelerate underneath) trains the HF model on the CPU, and the
``hypermlp.hf.finetune`` script the README launches with accelerate does the same end to end."""

import os

import torch
from transformers import AutoModelForCausalLM

from hypermlp.hf.finetune import build_trainer, main

from .helpers import hf_model


def patterned_windows(n=64, t=24, vocab=64, seed=0):
    """Sequences that count up from a random start modulo the vocabulary: learnable in a few steps."""
    start = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(t)) % vocab


def test_trainer_steps_reduce_the_loss(tmp_path):
    model = hf_model("hybrid").train()
    data = patterned_windows()
    probe = data[:16]
    with torch.no_grad():
        before = model.eval()(probe, labels=probe).loss.item()
    trainer = build_trainer(model.train(), data, str(tmp_path / "out"), steps=30, batch_size=8, lr=1e-2,
                            weight_decay=0.0, use_cpu=True, disable_tqdm=True, logging_steps=5)
    result = trainer.train()
    assert result.global_step == 30
    with torch.no_grad():
        after = model.eval()(probe, labels=probe).loss.item()
    assert after < 0.7 * before, (before, after)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged[-1] < logged[0]


def test_finetune_script_trains_and_saves_a_loadable_model(runs, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert main(["--model", runs["byte"][1], "--data", runs["corpus"], "--out", str(out), "--steps", "4",
                 "--batch-size", "4", "--seq-len", "32", "--cpu"]) == 0
    assert "finetune: 4 steps" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_hypermlp.py"} <= set(os.listdir(out))
    tuned = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(runs["byte"][1])
    assert not torch.equal(tuned.head.weight, base.head.weight)  # it trained

"""``hypermlp train --dry-run`` and hypermlp.dryrun: the paper configs' counts against the built
models, the memory formula's parts, and a dry run that writes nothing."""

import os
import pathlib
import re

import pytest
import torch
import yaml

from hypermlp.cli import main
from hypermlp.dryrun import estimate
from hypermlp.flops import forward_flops_per_token
from hypermlp.models import LanguageModel, ModelConfig
from hypermlp.train import TrainConfig

from ..helpers import assert_one_line_error

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def meta_count(section):
    with torch.device("meta"):
        return LanguageModel(ModelConfig.from_dict(section)).num_params()


@pytest.mark.parametrize("name, tokens_per_step", [("paper_340m", 524_288), ("paper_1p3b", 1_048_576)])
def test_paper_configs_dry_run_counts_match_the_built_models(tmp_path, monkeypatch, capsys, name, tokens_per_step):
    monkeypatch.chdir(tmp_path)  # the configs' out: is relative; nothing may appear here
    assert main(["train", "--config", str(CONFIGS / f"{name}.yaml"), "--dry-run", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert os.listdir(tmp_path) == []  # no run folder, no data read
    printed = {m.group(1): int(m.group(2).replace(",", ""))
               for m in re.finditer(r"^(\w+): .*\n  parameters\s+([\d,]+)", out, flags=re.M)}
    models = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["models"]
    assert set(printed) == set(models) == {"hyperglu", "softmax"}
    for model, section in models.items():
        built = meta_count(section)
        assert abs(printed[model] - built) <= 0.01 * built, (model, printed[model], built)
    # the matched baseline: within 1% of HyperGLU (the paper's budget rule)
    assert abs(printed["hyperglu"] - printed["softmax"]) <= 0.01 * printed["softmax"]
    assert out.count(f"tokens/step  {tokens_per_step:,}") == 2
    assert re.search(r"memory/GPU   ~[\d.]+ GiB = states", out) and "FLOPs/token" in out


def test_dry_run_of_one_model_picked_with_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--config", str(CONFIGS / "paper_340m.yaml"), "--dry-run", "--model", "softmax",
            "--world-size", "4", "--fsdp", "--activation-checkpointing", "--grad-accum", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "softmax: softmax d_model=1024" in out and "hyperglu:" not in out
    assert "sharded over 4 (FSDP)" in out and "(checkpointed)" in out and "grad_accum 8 x micro-batch 8" in out
    assert os.listdir(tmp_path) == []


def test_estimate_follows_its_formula():
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=3, mixer="hyperglu", mixer_args={"n_heads": 2}, max_len=128)
    base = TrainConfig(steps=10, batch_size=32, precision="bf16")
    e = estimate(cfg, base, seq_len=128, world_size=1, steps=10)
    params = meta_count(cfg.to_dict())
    assert e.params == params and e.state_bytes == 16 * params
    assert e.tokens_per_step == 32 * 128 and e.micro_batch == 32
    assert e.flops_per_token == pytest.approx(3 * forward_flops_per_token(cfg, 128))
    assert e.total_flops == pytest.approx(e.flops_per_token * 32 * 128 * 10)
    assert e.logits_bytes == 32 * 128 * 256 * (2 + 8)
    # FSDP over 4: a quarter of the states plus the largest block's gathered weights and gradient
    with torch.device("meta"):
        block = sum(p.numel() for p in LanguageModel(cfg).blocks[0].parameters())
    f = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="bf16", fsdp=True), 128, world_size=4)
    assert f.state_bytes == 16 * params / 4 + 12 * block and f.micro_batch == 8
    # grad_accum and activation checkpointing shrink the activations; fp32 doubles their 2-byte part
    a = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="bf16", grad_accum=4), 128)
    assert a.activation_bytes == pytest.approx(e.activation_bytes / 4)
    ckpt = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="bf16", activation_checkpointing=True), 128)
    assert ckpt.activation_bytes < e.activation_bytes / 2
    fp32 = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="fp32"), 128)
    assert e.activation_bytes < fp32.activation_bytes < 2 * e.activation_bytes


def test_dry_run_of_a_synthetic_task_asks_the_task(tmp_path, capsys):
    args = ["train", "--task", "mqar", "--data-arg", "num_train=256", "--data-arg", "num_test=32", "--epochs", "2",
            "--batch-size", "64", "--d-model", "32", "--dry-run", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vocab=8192" in out and "seq_len 64" in out and "8 steps = " in out  # 2 epochs x 256/64
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--fsdp"], "give --world-size N"),
    (["--world-size", "0"], "--world-size must be >= 1"),
    (["--world-size", "3"], "batch_size=256 is not divisible by 3 GPU(s) x grad_accum=4"),
    (["--resume"], "--dry-run trains nothing"),
    (["--model", "gpt"], "--model 'gpt' is not one of the models"),
])
def test_bad_dry_runs_are_one_line(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--config", str(CONFIGS / "paper_340m.yaml"), "--dry-run", *extra])
    assert_one_line_error(capsys, code, message)
    assert os.listdir(tmp_path) == []

"""``hypermlp train --dry-run`` and hypermlp.dryrun: the paper configs' counts against the built
models, the memory formula's parts, and a dry run that writes nothing."""

import os
import pathlib
import re
import weakref

import pytest
import torch
import yaml

from hypermlp.cli import main
from hypermlp.dryrun import block_saved_bytes, estimate
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
    # activations: the measured per-token and once-only bytes of each layer's block
    per_token, once = block_saved_bytes(cfg, "hyperglu", "bf16")
    assert per_token > 0 and e.activation_bytes == pytest.approx(3 * (32 * 128 * per_token + once))
    a = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="bf16", grad_accum=4), 128)
    assert a.activation_bytes == pytest.approx(3 * (8 * 128 * per_token + once))  # a micro-batch of 8
    ckpt = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="bf16", activation_checkpointing=True), 128)
    assert ckpt.activation_bytes == pytest.approx(32 * 128 * 4 * 64 * 3 + 32 * 128 * per_token + once)
    fp32 = estimate(cfg, TrainConfig(steps=10, batch_size=32, precision="fp32"), 128)
    assert e.activation_bytes < fp32.activation_bytes < 2 * e.activation_bytes


def saved_by_autograd(cfg, batch, seq_len, precision):
    """Bytes autograd saves in one forward + loss of the whole LanguageModel (its parameters aside)."""
    from contextlib import nullcontext

    from hypermlp.models.lm import token_cross_entropy

    torch.manual_seed(0)
    model = LanguageModel(cfg)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    packed = []

    def pack(t):
        packed.append(weakref.ref(t))  # what the graph still holds at the end is what backward needs
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = token_cross_entropy(model(x), x, reduction="sum")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (r() for r in packed)
                if t is not None}
    del loss
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("mixer, precision", [("hyperglu", "fp32"), ("softmax", "bf16")])
def test_activation_estimate_is_within_15_percent_of_what_autograd_saves(mixer, precision):
    # another batch, length and depth than the blocks were measured at (batch 1, 128 / 256 tokens)
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=3, mixer=mixer, mixer_args={"n_heads": 2}, max_len=384)
    e = estimate(cfg, TrainConfig(steps=1, batch_size=3, precision=precision), 384)
    saved = saved_by_autograd(cfg, 3, 384, precision)
    assert 0.85 < (e.activation_bytes + e.logits_bytes) / saved < 1.15, (e.activation_bytes + e.logits_bytes, saved)


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

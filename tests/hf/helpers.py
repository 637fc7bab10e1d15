"""Small models, text and command lines for the Hugging Face tests."""

import torch

from hypermlp.models import ModelConfig

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(300))

# one config per mixer family, and a hybrid; small enough that a forward takes milliseconds
MIXER_CONFIGS = {
    "hyperglu": dict(mixer="hyperglu"),
    "hypermlp": dict(mixer="hypermlp"),
    "relu": dict(mixer="relu"),
    "softmax": dict(mixer="softmax", mixer_args={"n_heads": 2}),
    "hybrid": dict(mixer=["hyperglu", "softmax"], mixer_args={"n_heads": 2, "seq_rank": 4}),
    "variant": dict(mixer="G-cg-q-1o"),
}


def model_config(name="hybrid", **over) -> ModelConfig:
    kw = dict(vocab_size=64, d_model=32, n_layers=2, max_len=48, **MIXER_CONFIGS[name])
    kw.update(over)
    return ModelConfig(**kw)


def hf_model(name="hybrid", seed=0, **over):
    from hypermlp.hf import HyperMLPConfig, HyperMLPForCausalLM

    torch.manual_seed(seed)
    return HyperMLPForCausalLM(HyperMLPConfig.from_model_config(model_config(name, **over))).eval()


def train_args(corpus, out, tokenizer="byte"):
    """A `hypermlp train` run of a few seconds on ``corpus``."""
    args = ["train", "--task", "lm", "--data", corpus, "--tokenizer", tokenizer, "--seq-len", "32", "--max-len", "64",
            "--d-model", "32", "--steps", "6", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1",
            "--out", str(out), "--data-arg", "eval_windows=2", "--no-progress"]
    if tokenizer == "bpe":
        args += ["--data-arg", "bpe_vocab_size=300"]
    return args

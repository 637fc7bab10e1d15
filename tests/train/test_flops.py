"""Estimated training FLOPs (hypermlp.flops) and the cost every evaluation record carries."""

import pytest

from hypermlp.flops import dense_params, sequence_flops_per_token, training_flops
from hypermlp.models import LanguageModel, ModelConfig
from hypermlp.train import TrainConfig, Trainer

from .helpers import recall_task, tiny_cfg


def cfg(mixer, tie=True, **mixer_args):
    return ModelConfig(vocab_size=256, d_model=64, n_layers=2, mixer=mixer, max_len=128, tie_embeddings=tie,
                       mixer_args={"n_heads": 2, **mixer_args})


def test_dense_params_count_every_matmul_weight_once_and_no_lookup_or_lag_table():
    for mixer in ("softmax", "relu", "hypermlp", "hyperglu"):
        lm = LanguageModel(cfg(mixer))
        tables = sum(p.numel() for n, p in lm.named_parameters() if ".seq_mix" in n)
        assert dense_params(lm) == lm.num_params() - tables  # tied: the embedding is the head's weight
        untied = LanguageModel(cfg(mixer, tie=False))
        assert dense_params(untied) == untied.num_params() - tables - 256 * 64  # the lookup table is not a matmul
    assert sum(p.numel() for n, p in LanguageModel(cfg("softmax")).named_parameters() if ".seq_mix" in n) == 0


def test_sequence_terms_by_hand():
    T, c = 128, (128 + 1) / 2
    # softmax: qk_rank = vo_rank = d = 64; scores + readout, two layers
    assert sequence_flops_per_token(cfg("softmax"), T) == 2 * (2 * c * 64 + 2 * c * 64)
    # ReLU attention: qk_rank = d/4 = 16, vo_rank = 64, no mixing
    assert sequence_flops_per_token(cfg("relu"), T) == 2 * (2 * c * 16 + 2 * c * 64)
    # HyperMLP: + R(1) on 2 score heads and R(2) on 2 readout heads, (4r + 2) c each, r = 16
    hyper = 2 * (2 * c * 16 + 2 * c * 64 + (2 + 2) * (4 * 16 + 2) * c)
    assert sequence_flops_per_token(cfg("hypermlp"), T) == hyper
    # HyperGLU: 4 score heads
    assert sequence_flops_per_token(cfg("hyperglu"), T) == 2 * (2 * c * 16 + 2 * c * 64 + (4 + 2) * (4 * 16 + 2) * c)
    assert sequence_flops_per_token(cfg("hypermlp", mix2=False, seq_rank=8), T) == \
        2 * (2 * c * 16 + 2 * c * 64 + 2 * (4 * 8 + 2) * c)
    # training = 3 x forward = 6 N tokens + 3 x sequence terms x tokens
    n = dense_params(LanguageModel(cfg("hypermlp")))
    assert training_flops(cfg("hypermlp"), 1000, T) == pytest.approx(6 * n * 1000 + 3 * hyper * 1000)
    assert training_flops(cfg("hypermlp"), 1000) == training_flops(cfg("hypermlp"), 1000, 128)  # max_len


def test_every_evaluation_record_says_what_training_cost_so_far():
    task = recall_task()
    trainer = Trainer(tiny_cfg(), task, TrainConfig(steps=8, batch_size=16, eval_every=4, device="cpu", progress=False))
    res = trainer.fit()
    mid, final = res["evals"]
    assert (mid["train_tokens"], final["train_tokens"]) == (4 * 16 * 32, 8 * 16 * 32)
    assert final["train_flops"] == training_flops(tiny_cfg(), 8 * 16 * 32, 32, dense_params(trainer.model))
    assert 0 < final["train_step_s"] <= final["train_wall_s"] and mid["train_wall_s"] <= final["train_wall_s"]
    assert final["train_tokens_per_s"] == pytest.approx(final["train_tokens"] / final["train_step_s"], rel=0.05)
    assert res["cost"]["train_tokens"] == final["train_tokens"] and res["cost"]["train_flops"] == final["train_flops"]

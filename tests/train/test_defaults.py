"""Training defaults: one home (hypermlp.defaults), the values every task kind trains with."""

import dataclasses

import pytest

from hypermlp.config import ConfigError
from hypermlp.defaults import MAD_PROTOCOL, MAD_QUICK, TRAIN, mad_protocol, train_defaults
from hypermlp.tasks import resolve_train
from hypermlp.train import TrainConfig


def test_train_config_reads_its_defaults_from_the_one_table():
    cfg = TrainConfig()
    assert [f.name for f in dataclasses.fields(TrainConfig)] == list(TRAIN)
    assert dataclasses.asdict(cfg) == TRAIN


def test_the_mad_protocol():
    assert MAD_PROTOCOL["batch_size"] == 128 and MAD_PROTOCOL["lrs"] == (1e-4, 5e-4, 1e-3)
    assert MAD_QUICK["batch_size"] == 64
    full = mad_protocol("full")
    assert full["grid"] == {"lr": [1e-4, 5e-4, 1e-3], "weight_decay": [0.0, 0.1]}
    assert full["train"] == dict(min_lr=1e-6, warmup_steps=0, lr_per_epoch=True, eval_each_epoch=True, epochs=200,
                                 batch_size=128, lr=1e-3, weight_decay=0.0, early_stop_at=0.999)
    with pytest.raises(ConfigError, match="quick or full"):
        mad_protocol("slow")


def test_each_task_kind_trains_with_the_same_values_as_before():
    assert resolve_train("lm", {}) == dict(steps=1000, batch_size=32, lr=1e-3, weight_decay=0.1, min_lr=1e-4,
                                           warmup_steps=100, eval_every=200)
    assert resolve_train("mqar", {}) == dict(epochs=16, batch_size=64, lr=1e-3, weight_decay=0.1, min_lr=1e-6,
                                             warmup_steps=0, lr_per_epoch=True, eval_each_epoch=True,
                                             early_stop_at=0.999)
    assert resolve_train("mad:memorization", {}) == dict(min_lr=1e-6, warmup_steps=0, lr_per_epoch=True,
                                                         eval_each_epoch=True, epochs=20, batch_size=64, lr=1e-3,
                                                         weight_decay=0.0, early_stop_at=0.999)
    # a user's steps replace the task's epochs; user values win
    assert resolve_train("mqar", {"steps": 5, "lr": 3e-3})["epochs"] is None
    assert resolve_train("mqar", {"steps": 5, "lr": 3e-3})["lr"] == 3e-3
    assert train_defaults("mad", "full") == mad_protocol("full")["train"]
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_train("mad:nonsense", {})

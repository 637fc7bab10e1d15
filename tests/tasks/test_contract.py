"""The task contract: the Trainer trains any model a task builds, through the task's methods only."""

import inspect
import json
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hypermlp.checkpoint
import hypermlp.train
from hypermlp.data import IGNORE_INDEX, make_task
from hypermlp.models import LanguageModel
from hypermlp.models.lm import token_cross_entropy
from hypermlp.tasks import CompressionTask, LMTask, Task, TokenTask, build_task
from hypermlp.train import TrainConfig, Trainer, latest_checkpoint

from ..train.helpers import tiny_cfg, train_losses


class Scaled(nn.Module):
    """A model the Trainer has never heard of: a LanguageModel whose logits are scaled."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.lm(x) * self.scale


class Interrupt(Exception):
    pass


class ScaledTask(TokenTask):
    """Every hook of the contract overridden, and counted; the loss can fail at a given call."""

    def __init__(self, data, fail_at=None):
        super().__init__(data, label="scaled")
        self.calls = {"loss": 0, "save": 0, "load": 0}
        self.fail_at = fail_at

    def build_model(self, model_cfg):
        return Scaled(LanguageModel(model_cfg))

    def loss(self, logits, targets):
        self.calls["loss"] += 1
        if self.calls["loss"] == self.fail_at:
            raise Interrupt()
        return super().loss(logits, targets)

    def language_model(self, model):
        return model.lm

    def save_extra_files(self, model, folder):
        self.calls["save"] += 1
        with open(os.path.join(folder, "scale.json"), "w") as f:
            json.dump(model.scale.item(), f)

    def load_extra_files(self, model, folder, device):
        self.calls["load"] += 1
        with open(os.path.join(folder, "scale.json")) as f:
            model.scale.data.fill_(json.load(f))


def scaled_task(fail_at=None):
    data = make_task("in_context_recall", vocab_size=16, seq_len=32, num_train=128, num_test=32, seed=0)
    return ScaledTask(data, fail_at)


def test_the_trainer_trains_checkpoints_and_resumes_any_model_through_the_contract(tmp_path):
    cfg = TrainConfig(steps=8, batch_size=16, lr=3e-3, ckpt_every=4, device="cpu")
    straight = Trainer(tiny_cfg(), scaled_task(), cfg, out_dir=str(tmp_path / "a"))
    straight.fit()
    assert straight.task.calls["loss"] == 8 + 2 and straight.task.calls["save"] == 2  # 8 steps, 1 val + 1 test batch
    ckpt = latest_checkpoint(str(tmp_path / "a"))
    assert sorted(os.listdir(ckpt)) == ["checksums.json", "config.json", "model.safetensors", "scale.json",
                                        "trainer_state.pt"]
    assert float(json.load(open(os.path.join(ckpt, "scale.json")))) == straight.model.scale.item()
    assert LanguageModel.load(ckpt).config == tiny_cfg()  # the task's language model is what is stored

    # die in step 6, resume from step 4: the extra file comes back and the curve is the same
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(), scaled_task(fail_at=6), cfg, out_dir=str(tmp_path / "b")).fit()
    resumed = Trainer(tiny_cfg(), scaled_task(), cfg, out_dir=str(tmp_path / "b"), resume=True)
    assert resumed.task.calls["load"] == 1 and resumed.step == 4
    resumed.fit()
    assert train_losses(tmp_path / "a" / "metrics.jsonl") == train_losses(tmp_path / "b" / "metrics.jsonl")
    assert resumed.model.scale.item() == straight.model.scale.item() != 1.0


def test_the_trainer_never_asks_what_kind_of_task_or_model_it_has():
    for module in (hypermlp.train, hypermlp.checkpoint):
        source = inspect.getsource(module)
        assert not re.search(r"isinstance\((self\.)?(model|train_model|task)\b", source), module.__name__
        for name in ("Compression", "LMTask", "TokenTask", "corpus", "encoder"):
            assert name not in source, (module.__name__, name)


def test_every_task_meets_the_contract(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 200)
    tasks = [
        build_task("lm", {"path": str(corpus), "seq_len": 16, "eval_windows": 2}, str(tmp_path))[0],
        build_task("mad:in_context_recall", {"seq_len": 16, "num_train": 32, "num_test": 8})[0],
        build_task("mad:compression", {"seq_len": 8, "num_train": 32, "num_test": 8})[0],
        build_task("mqar", {"vocab_size": 64, "num_train": 32, "num_test": 8})[0],
    ]
    assert [type(t) for t in tasks] == [LMTask, TokenTask, CompressionTask, TokenTask]
    hooks = ["build_model", "make_sampler", "steps_per_epoch", "forward", "loss", "evaluate", "language_model",
             "save_extra_files", "load_extra_files", "has_unused_parameters"]
    for task in tasks:
        assert isinstance(task, Task)
        assert all(callable(getattr(task, h)) for h in hooks)
        model = task.build_model(tiny_cfg(vocab=task.vocab_size, max_len=task.seq_len))
        assert isinstance(task.language_model(model), LanguageModel)
        x, y = task.make_sampler(4, seed=0).next_batch()
        logits = task.forward(model, x)
        assert logits.shape == (*y.shape, task.vocab_size)
        assert task.loss(logits, y).dim() == 0
    assert tasks[2].has_unused_parameters(tiny_cfg()) is False  # tied: the head is the embedding
    untied = tiny_cfg()
    untied.tie_embeddings = False
    assert tasks[2].has_unused_parameters(untied) and not tasks[1].has_unused_parameters(untied)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_cross_entropy_is_one_float32_function(dtype):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11).to(dtype)
    targets = torch.randint(0, 11, (3, 5))
    targets[0, :2] = IGNORE_INDEX
    want = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    got = token_cross_entropy(logits, targets, reduction="sum")
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(Task().loss(logits, targets), want)
    mean = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.equal(token_cross_entropy(logits, targets), mean)
    torch.testing.assert_close(mean, want / 13)  # the mean over the 13 kept targets
    model = LanguageModel(tiny_cfg(vocab=11))
    x = torch.randint(0, 11, (2, 6))
    out, loss = model(x, targets=x)
    assert torch.equal(loss, token_cross_entropy(out, x))

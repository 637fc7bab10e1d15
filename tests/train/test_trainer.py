"""Trainer: learning, exact resume after an interruption, NaN stop, schedule, DDP equivalence."""

import math
import os
import subprocess
import sys

import pytest
import torch

from hypermlp.config import ConfigError
from hypermlp.models import LanguageModel
from hypermlp.train import CosineSchedule, TrainConfig, Trainer, TrainingError, latest_checkpoint

from .helpers import FlakyTask, Interrupt, eval_records, recall_task, tiny_cfg, train_losses


def test_loss_falls_on_a_tiny_run():
    task = recall_task()
    res = Trainer(tiny_cfg(), task, TrainConfig(steps=60, batch_size=32, lr=3e-3, weight_decay=0.0)).fit()
    losses = [l for _, l in res["train_loss"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.2, (first, last)
    assert 0.0 <= res["final"]["acc"] <= 1.0 and "macro_acc" in res["final"]


def test_resume_after_interruption_is_bit_exact(tmp_path):
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, ckpt_every=5, eval_every=10, warmup_steps=3, device="cpu")
    straight = Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path / "a"))
    straight.fit()

    # the second run dies in step 13; its last checkpoint is step 10
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(), FlakyTask(recall_task(), 13, "raise"), cfg, out_dir=str(tmp_path / "b")).fit()
    assert latest_checkpoint(str(tmp_path / "b")).endswith("step-00000010")
    assert len(train_losses(tmp_path / "b" / "metrics.jsonl")) == 12  # logged past the checkpoint
    resumed = Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path / "b"), resume=True)
    assert resumed.step == 10
    resumed.fit()

    a, b = train_losses(tmp_path / "a" / "metrics.jsonl"), train_losses(tmp_path / "b" / "metrics.jsonl")
    assert [s for s, _ in a] == list(range(1, 21))
    assert a == b  # bit for bit, steps 1..20
    ea, eb = eval_records(tmp_path / "a" / "metrics.jsonl"), eval_records(tmp_path / "b" / "metrics.jsonl")
    assert ea == eb  # the metrics, and the tokens and FLOPs so far (carried across the resume)
    assert [r["train_tokens"] for r in ea] == [10 * 16 * 32, 20 * 16 * 32]
    for (n1, p1), (n2, p2) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-3, ckpt_every=4, device="cpu")
    trainer = Trainer(tiny_cfg(), FlakyTask(recall_task(), 7, "nan"), cfg, out_dir=str(tmp_path))
    with pytest.raises(TrainingError, match=r"loss became nan at step 7.*step-00000004"):
        trainer.fit()
    ckpt = latest_checkpoint(str(tmp_path))
    assert ckpt.endswith("step-00000004")
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=True)
    assert state["step"] == 4
    # the checkpoint still loads and has finite weights
    lm = LanguageModel.load(ckpt)
    assert all(torch.isfinite(p).all() for p in lm.parameters())


def test_cosine_schedule_warmup_and_epochs():
    s = CosineSchedule(lr=1.0, min_lr=0.1, warmup=4, total=104)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0
    assert math.isclose(s(54), 0.55)  # half way: mean of lr and min_lr
    assert math.isclose(s(103), 0.1, abs_tol=1e-3) and s(103) >= 0.1
    e = CosineSchedule(lr=1.0, min_lr=0.0, warmup=0, total=40, unit=10)  # 4 epochs of 10 steps
    assert len({e(i) for i in range(10)}) == 1  # constant within an epoch
    assert [round(e(10 * k), 6) for k in range(4)] == [1.0, round(0.5 * (1 + math.cos(math.pi / 4)), 6), 0.5,
                                                      round(0.5 * (1 + math.cos(3 * math.pi / 4)), 6)]


@pytest.mark.parametrize("grad_accum", ["1", "2"])  # 2: the first micro-batch's backward skips DDP's all-reduce
def test_ddp_two_processes_match_one(tmp_path, grad_accum):
    # noisy recall ignores noise targets, so the rows of a batch hold different numbers of
    # targets: the per-rank loss must be weighted by the global count to match one process
    args = ["train", "--task", "mad:noisy_in_context_recall", "--data-arg", "seq_len=32", "--data-arg", "num_train=128",
            "--data-arg", "num_test=32", "--d-model", "32", "--steps", "5", "--batch-size", "16", "--lr", "3e-3",
            "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    one = subprocess.run([sys.executable, "-m", "hypermlp", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "hypermlp", *args, "--grad-accum", grad_accum, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    a, b = train_losses(tmp_path / "one" / "metrics.jsonl"), train_losses(tmp_path / "two" / "metrics.jsonl")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5]
    for (_, la), (_, lb) in zip(a, b):
        assert math.isclose(la, lb, rel_tol=1e-5), (a, b)
    assert a[-1][1] < a[0][1]  # it trained, so agreement is not trivial
    wa = LanguageModel.load(latest_checkpoint(str(tmp_path / "one"))).state_dict()
    wb = LanguageModel.load(latest_checkpoint(str(tmp_path / "two"))).state_dict()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


class ScriptedTask:
    """A real task whose evaluation reports scripted validation and test accuracies per call."""

    def __init__(self, task, val, test):
        self._task, self._val, self._test, self.calls = task, val, test, 0

    def __getattr__(self, name):
        return getattr(self._task, name)

    def evaluate(self, model, final=False):
        i = min(self.calls, len(self._val) - 1)
        self.calls += 1
        return {"val_acc": self._val[i], "test_acc": self._test[i], "acc": self._test[i]}


def test_early_stopping_reads_the_validation_split_never_the_test_split():
    cfg = dict(epochs=6, batch_size=64, eval_each_epoch=True, early_stop_at=0.999, device="cpu", progress=False)
    # the test split reaches the threshold first: training goes on
    task = ScriptedTask(recall_task(), val=[0.2, 0.5, 0.7, 1.0], test=[1.0, 1.0, 1.0, 1.0])
    res = Trainer(tiny_cfg(), task, TrainConfig(**cfg)).fit()
    assert res["stopped_early"] and [r["step"] for r in res["evals"]] == [4, 8, 12, 16]  # 4 steps per epoch
    # validation reaches it while test never does: it stops all the same
    task = ScriptedTask(recall_task(), val=[1.0], test=[0.0])
    res = Trainer(tiny_cfg(), task, TrainConfig(**cfg)).fit()
    assert res["stopped_early"] and res["step"] == 4
    # a test metric (or its old name) cannot drive early stopping; old run.yaml names mean validation
    for bad in ("test_acc", "acc"):
        with pytest.raises(ConfigError, match="validation metric"):
            TrainConfig(**cfg, early_stop_metric=bad).validate()
    assert TrainConfig.from_dict({**cfg, "early_stop_metric": "acc"}).early_stop_metric == "val_acc"
    assert TrainConfig().early_stop_metric == "val_acc"
    with pytest.raises(ConfigError, match="val_nonsense.*val_acc"):
        Trainer(tiny_cfg(), recall_task(), TrainConfig(**cfg, early_stop_metric="val_nonsense")).fit()

"""The trainer's switches at scale: gradient accumulation, precision, activation checkpointing,
keeping the newest N checkpoints, and exact resume with each of them on."""

import math
import os

import pytest
import torch

from hypermlp.checkpoint import prune_checkpoints
from hypermlp.config import ConfigError
from hypermlp.data import make_task
from hypermlp.data.common import IGNORE_INDEX
from hypermlp.models import ModelConfig
from hypermlp.tasks import task_from_data
from hypermlp.train import TrainConfig, Trainer, latest_checkpoint

from .helpers import FlakyTask, Interrupt, eval_records, recall_task, tiny_cfg, train_losses


def noisy_task():
    # noise targets are ignored, so the rows (and micro-batches) hold different numbers of targets
    return task_from_data(make_task("noisy_in_context_recall", vocab_size=32, seq_len=32, num_train=256,
                                    num_test=64, seed=0))


def chunked_cfg(mixer):
    # chunk_size 8: the lengths below are not multiples of the Hyper core's query block
    args = {"n_heads": 2, "chunk_size": 8} if mixer.startswith("hyper") else {"n_heads": 2}
    return ModelConfig(vocab_size=16, d_model=32, n_layers=2, mixer=mixer, mixer_args=args, max_len=32)


def grads(trainer):
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def awkward_batch(seq_len, rows=8, seed=0):
    """(rows, seq_len) ids and targets; rows 0 and 1 are all padding (no target), the others miss
    random targets, so every micro-batch holds a different number of them (one none at all)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (rows, seq_len), generator=g)
    y = torch.randint(0, 16, (rows, seq_len), generator=g)
    y[torch.rand(rows, seq_len, generator=g) < 0.3] = IGNORE_INDEX
    y[:2] = IGNORE_INDEX
    y[-1, -1] = 3  # at least one target
    return x, y


# ----------------------------------------------------------------------------- grad accumulation
@pytest.mark.parametrize("mixer", ["hyperglu", "softmax"])
@pytest.mark.parametrize("seq_len", [1, 13, 32])
def test_grad_accum_gives_the_gradient_of_the_one_big_batch(mixer, seq_len):
    x, y = awkward_batch(seq_len)
    one = Trainer(chunked_cfg(mixer), recall_task(), TrainConfig(steps=1, batch_size=8, device="cpu"))
    loss = one.backward(x, y)
    want = grads(one)
    assert want and any(g.abs().sum() > 0 for g in want.values())
    for n in (2, 4, 8):  # micro-batches of 4, 2 and 1 rows: the first ones hold no target at all
        acc = Trainer(chunked_cfg(mixer), recall_task(), TrainConfig(steps=1, batch_size=8, grad_accum=n, device="cpu"))
        assert math.isclose(acc.backward(x, y), loss, rel_tol=1e-6)
        got = grads(acc)
        assert got.keys() == want.keys()
        # the sums run in another order: float rounding, on the scale of the largest gradient
        # (at T=1 some are 0 in exact arithmetic, e.g. q's: one key, nothing to choose)
        scale = max(float(g.abs().max()) for g in want.values())
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6 * scale, msg=f"{name}, grad_accum={n}")


def test_grad_accum_trains_like_the_one_big_batch():
    runs = {}
    for n in (1, 4):
        cfg = TrainConfig(steps=8, batch_size=16, grad_accum=n, lr=1e-3, warmup_steps=2, device="cpu", progress=False)
        trainer = Trainer(tiny_cfg(vocab=32), noisy_task(), cfg)
        res = trainer.fit()
        runs[n] = ([l for _, l in res["train_loss"]], trainer.model.state_dict(), res["cost"]["train_tokens"])
    (l1, w1, t1), (l4, w4, t4) = runs[1], runs[4]
    assert l1[-1] < l1[0]  # it trained, so agreement is not trivial
    # the rounding of the first step grows step by step (HyperGLU's ReLU selection flips on tiny
    # changes; at lr 3e-3 the gap reaches 5e-4 by step 8, at 1e-3 about 1e-6), so: a low lr
    for a, b in zip(l1, l4):
        assert math.isclose(a, b, rel_tol=1e-5), (l1, l4)
    for name in w1:
        # atol: a tenth of what 8 AdamW steps of lr 1e-3 move a weight (~8e-3); the largest gap is ~8e-5
        torch.testing.assert_close(w4[name], w1[name], rtol=1e-4, atol=2e-4)
    assert t1 == t4 == 8 * 16 * 32  # tokens count the whole batch, however it is cut


# ----------------------------------------------------------------------------- precision
class DtypeTask:
    """Wraps a task and records the dtype of the training logits."""

    def __init__(self, task):
        self._task, self.dtypes = task, set()

    def __getattr__(self, name):
        return getattr(self._task, name)

    def forward(self, model, x):
        out = self._task.forward(model, x)
        if model.training:
            self.dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32), ("auto", torch.float32)])
def test_precision_on_cpu(precision, dtype):
    task = DtypeTask(recall_task())
    trainer = Trainer(tiny_cfg(), task, TrainConfig(steps=30, batch_size=32, lr=3e-3, weight_decay=0.0,
                                                    precision=precision, device="cpu", progress=False))
    assert trainer.precision == ("fp32" if precision == "auto" else precision)  # auto: fp32 on CPU, as before
    res = trainer.fit()
    assert task.dtypes == {dtype}  # bf16 really autocasts on CPU
    losses = [l for _, l in res["train_loss"]]
    assert all(math.isfinite(l) for l in losses) and sum(losses[-5:]) < sum(losses[:5]) - 1.0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay fp32


def test_fp16_needs_a_gpu():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Trainer(tiny_cfg(), recall_task(), TrainConfig(steps=1, precision="fp16", device="cpu"))


# ----------------------------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_keeps_less_and_gives_the_same_gradients():
    x, y = awkward_batch(32, seed=1)
    out = {}
    for ac in (False, True):
        trainer = Trainer(chunked_cfg("hyperglu"), recall_task(),
                          TrainConfig(steps=1, batch_size=8, activation_checkpointing=ac, device="cpu"))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = trainer.backward(x, y)
        out[ac] = (loss, grads(trainer), sum(saved))
    assert out[True][0] == out[False][0]
    for name, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], g, rtol=1e-6, atol=1e-8, msg=name)
    # the recomputation's own saved tensors are counted too, yet far fewer are held at once
    assert out[True][2] < out[False][2]


# ----------------------------------------------------------------------------- exact resume, each switch on
SWITCHES = [
    {"grad_accum": 2},
    {"activation_checkpointing": True},
    {"keep_checkpoints": 3},
    {"precision": "bf16", "grad_accum": 4, "activation_checkpointing": True},
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(f"{k}={v}" for k, v in s.items()))
def test_resume_is_bit_exact_with_each_switch(tmp_path, switches):
    cfg = TrainConfig(steps=12, batch_size=16, lr=3e-3, ckpt_every=3, eval_every=6, warmup_steps=2, device="cpu",
                      progress=False, **switches)
    straight = Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path / "a"))
    straight.fit()
    # the second run dies in step 8 (forward calls: grad_accum per step); its last checkpoint is step 6
    calls = 7 * cfg.grad_accum + 1
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(), FlakyTask(recall_task(), calls, "raise"), cfg, out_dir=str(tmp_path / "b")).fit()
    assert latest_checkpoint(str(tmp_path / "b")).endswith("step-00000006")
    resumed = Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path / "b"), resume=True)
    assert resumed.step == 6 and resumed.resume_changes == {}
    resumed.fit()
    a, b = train_losses(tmp_path / "a" / "metrics.jsonl"), train_losses(tmp_path / "b" / "metrics.jsonl")
    assert [s for s, _ in a] == list(range(1, 13)) and a == b  # bit for bit
    assert eval_records(tmp_path / "a" / "metrics.jsonl") == eval_records(tmp_path / "b" / "metrics.jsonl")
    for (n1, p1), (n2, p2) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    kept = sorted(d for d in os.listdir(tmp_path / "b" / "checkpoints") if d.startswith("step-"))
    assert kept == [f"step-{s:08d}" for s in ((6, 9, 12) if cfg.keep_checkpoints == 3 else (12,))]


def test_resume_applies_and_records_a_new_precision_or_grad_accum(tmp_path):
    base = dict(steps=4, batch_size=16, ckpt_every=2, device="cpu", progress=False)
    Trainer(tiny_cfg(), recall_task(), TrainConfig(**base), out_dir=str(tmp_path)).fit()
    later = TrainConfig(**{**base, "steps": 6}, precision="bf16", grad_accum=2, log_every=1, keep_checkpoints=2)
    resumed = Trainer(tiny_cfg(), recall_task(), later, out_dir=str(tmp_path), resume=True)
    # how a step is computed is recorded; how the run is shown and what it keeps is not
    assert resumed.resume_changes == {"steps": [4, 6], "grad_accum": [1, 2], "precision": ["auto", "bf16"]}
    assert resumed.precision == "bf16"
    resumed.fit()


# ----------------------------------------------------------------------------- keep the newest N
def test_keep_checkpoints_keeps_the_newest_n_and_nothing_else_is_touched(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    (root / "mine").mkdir()
    cfg = TrainConfig(steps=10, batch_size=16, ckpt_every=2, keep_checkpoints=3, device="cpu", progress=False)
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path)).fit()
    assert sorted(os.listdir(root)) == ["latest", "mine", "notes.txt", "step-00000006", "step-00000008",
                                        "step-00000010"]
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000010")
    # 0 keeps them all
    cfg = TrainConfig(steps=6, batch_size=16, ckpt_every=2, keep_checkpoints=0, device="cpu", progress=False)
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path / "all")).fit()
    assert sorted(os.listdir(tmp_path / "all" / "checkpoints")) == ["latest", "step-00000002", "step-00000004",
                                                                  "step-00000006"]


def test_prune_drops_the_steps_after_the_newest_and_the_oldest(tmp_path):
    # a run resumed from step 4 after a crash that had also left step 8 (never pointed at)
    for name in ("step-00000002", "step-00000004", "step-00000004-1", "step-00000006", "step-00000008", ".tmp-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-00000001.txt").write_text("not a checkpoint")
    prune_checkpoints(str(tmp_path), "step-00000006", keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step-00000001.txt", "step-00000004-1", "step-00000006"]


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("options, message", [
    ({"grad_accum": 0}, "grad_accum must be a positive integer"),
    ({"grad_accum": 2.0}, "grad_accum must be a positive integer"),
    ({"batch_size": 10, "grad_accum": 4}, "batch_size=10 is not divisible by grad_accum=4"),
    ({"precision": "fp8"}, "precision must be one of auto, fp32, bf16, fp16"),
    ({"keep_checkpoints": -1}, "keep_checkpoints must be an integer >= 0"),
    ({"log_every": 1.5}, "log_every must be an integer >= 0"),
    ({"compile": "yes"}, "compile must be true or false"),
    ({"fsdp": 1}, "fsdp must be true or false"),
])
def test_bad_scale_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(steps=1, **options).validate()


def test_fsdp_needs_several_processes():
    with pytest.raises(ConfigError, match="torchrun"):
        Trainer(tiny_cfg(), recall_task(), TrainConfig(steps=1, fsdp=True, device="cpu"))

"""Task adapters: what the Trainer needs to know about a task, one class per kind.

Every task gives the Trainer the same five things:

* ``vocab_size`` and ``seq_len`` (the longest input the model must take),
* ``build_model(model_cfg)``: the trainable module,
* ``make_sampler(batch_size, seed)``: a resumable sampler of *global* batches (every DDP rank
  draws the same global batch and keeps its own rows, so N processes see what one would),
* ``forward(model, x)`` -> logits aligned with the targets (-100 = ignored),
* ``evaluate(model)`` -> a dict of metrics, deterministic.

Kinds:

* ``LMTask``: next-token prediction on a text corpus; random training windows, eval = loss and
  bits per byte on the first deterministic validation windows.
* ``TokenTask``: supervised token tasks (MAD, MQAR) from a ``TaskData``; loss on targets != -100,
  eval = plain and macro accuracy on the scored positions (``score_predictions``).
* ``CompressionTask``: MAD compression. The LanguageModel is the *encoder* (its
  ``hidden_states``); a small decoder head rebuilds all T input tokens from the hidden state
  at the last position alone: for slot t, ``h_last + query[t]`` (a learned per-slot query)
  goes through RMSNorm -> Linear(d, 2d) -> GELU -> Linear(2d, vocab). The head is identical for
  every mixer, so it does not disturb the budget matching (its size is reported separately).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError
from .data.common import IGNORE_INDEX, TaskData, score_predictions
from .models import LanguageModel, ModelConfig
from .models.lm import RMSNorm

__all__ = [
    "WindowSampler",
    "EpochSampler",
    "LMTask",
    "TokenTask",
    "CompressionTask",
    "CompressionModel",
    "language_model_of",
    "task_from_data",
    "build_task",
    "parse_task_name",
    "train_defaults",
    "resolve_train",
    "mad_protocol",
    "default_cache_dir",
]


# ----------------------------------------------------------------------------- samplers
class WindowSampler:
    """Random windows of a token stream, drawn with a private torch.Generator."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int):
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        from .data.text import get_batch

        return get_batch(self.ids, self.batch_size, self.seq_len, self.gen)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class EpochSampler:
    """Shuffled passes over a fixed training set; the last partial batch of a pass is dropped
    so every step has the same global batch size."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int):
        if batch_size > inputs.shape[0]:
            raise ConfigError(f"batch_size={batch_size} exceeds the {inputs.shape[0]} training examples")
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self.perm = torch.randperm(inputs.shape[0], generator=self.gen)

    @property
    def steps_per_epoch(self) -> int:
        return self.inputs.shape[0] // self.batch_size

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch_size > self.perm.numel():
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = torch.randperm(self.inputs.shape[0], generator=self.gen)
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.inputs[idx], self.targets[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.epoch, self.pos = state["perm"].clone(), int(state["epoch"]), int(state["pos"])


# ----------------------------------------------------------------------------- helpers
def language_model_of(model: nn.Module) -> LanguageModel:
    """The LanguageModel inside a trainable module (itself, or a compression encoder)."""
    return model.encoder if isinstance(model, CompressionModel) else model


@torch.no_grad()
def _batched_logits(task, model: nn.Module, inputs: torch.Tensor, batch_size: int):
    """Yield (start, logits) over ``inputs`` in eval mode, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, inputs.shape[0], batch_size):
            yield i, task.forward(model, inputs[i : i + batch_size].to(device)).float()
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- LM on text
class LMTask:
    kind = "lm"

    def __init__(self, corpus, seq_len: int = 256, eval_windows: int = 64, eval_batch_size: int = 16):
        from .data.text import eval_windows as make_eval_windows

        self.corpus = corpus
        self.name = "lm"
        self.vocab_size = corpus.vocab_size
        self.seq_len = seq_len
        self.eval_batch_size = eval_batch_size
        self.eval_x, self.eval_y = make_eval_windows(corpus.val, seq_len, max_windows=eval_windows)
        # bytes per validation token, to turn nats/token into bits/byte (exact for the byte tokenizer)
        self.bytes_per_token = corpus.n_bytes_val / max(1, corpus.val.numel())

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        return LanguageModel(model_cfg)

    def make_sampler(self, batch_size: int, seed: int) -> WindowSampler:
        return WindowSampler(self.corpus.train, batch_size, self.seq_len, seed)

    def steps_per_epoch(self, batch_size: int) -> Optional[int]:
        return None  # random windows: no epochs

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        from .data.text import bits_per_byte

        total, n = 0.0, 0
        for i, logits in _batched_logits(self, model, self.eval_x, self.eval_batch_size):
            y = self.eval_y[i : i + logits.shape[0]].to(logits.device)
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            n += y.numel()
        loss = total / n
        return {"val_loss": loss, "val_bpb": bits_per_byte(loss, n, max(1, round(n * self.bytes_per_token)))}


# ----------------------------------------------------------------------------- MAD / MQAR
class TokenTask:
    kind = "tokens"

    def __init__(self, data: TaskData, eval_batch_size: int = 256, label: Optional[str] = None):
        self.data = data.validate()
        self.name = label or data.name
        self.vocab_size = data.vocab_size
        self.seq_len = data.seq_len
        self.eval_batch_size = eval_batch_size

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        return LanguageModel(model_cfg)

    def make_sampler(self, batch_size: int, seed: int) -> EpochSampler:
        return EpochSampler(self.data.train_inputs, self.data.train_targets, batch_size, seed)

    def steps_per_epoch(self, batch_size: int) -> Optional[int]:
        return max(1, self.data.num_train // batch_size)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        preds, loss_sum, count = [], 0.0, 0
        targets = self.data.test_targets
        for i, logits in _batched_logits(self, model, self.data.test_inputs, self.eval_batch_size):
            y = targets[i : i + logits.shape[0]].to(logits.device)
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((y != IGNORE_INDEX).sum())
            preds.append(logits.argmax(-1).cpu())
        scores = score_predictions(torch.cat(preds), targets)
        return {"test_loss": loss_sum / max(1, count), "acc": scores["acc"], "macro_acc": scores["macro_acc"]}


# ----------------------------------------------------------------------------- compression
class CompressionModel(nn.Module):
    """Encoder (a LanguageModel's hidden_states) + a decoder head reading only the last position."""

    def __init__(self, encoder: LanguageModel, seq_len: int):
        super().__init__()
        d, vocab = encoder.config.d_model, encoder.config.vocab_size
        self.encoder = encoder
        self.seq_len = seq_len
        self.query = nn.Parameter(torch.randn(seq_len, d) * 0.02)  # one learned query per output slot
        self.norm = RMSNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, vocab)

    def decoder_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("encoder."))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        last = self.encoder.hidden_states(idx)[:, -1]  # (B, d): everything the decoder may use
        t = idx.shape[1]
        h = last[:, None, :] + self.query[None, :t]
        return self.out(F.gelu(self.fc(self.norm(h))))


class CompressionTask(TokenTask):
    kind = "compression"

    def __init__(self, data: TaskData, eval_batch_size: int = 256, label: Optional[str] = None):
        if data.settings.get("readout") != "last_position":
            raise ValueError(f"{data.name}: CompressionTask needs settings['readout'] == 'last_position'")
        super().__init__(data, eval_batch_size, label)

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        return CompressionModel(LanguageModel(model_cfg), self.seq_len)


def task_from_data(data: TaskData, label: Optional[str] = None):
    """The adapter for a synthetic TaskData (compression gets the encoder-decoder)."""
    if data.settings.get("readout") == "last_position":
        return CompressionTask(data, label=label)
    return TokenTask(data, label=label)


# ----------------------------------------------------------------------------- task specs
TASK_HELP = "mad:<name> (one of the six MAD tasks), mqar, or lm"

# Training defaults per kind of task; flags and YAML override them. MAD follows its protocol
# (per-epoch cosine to 1e-6, no warmup, early stop at 0.999), quick preset unless asked for full.
_MAD_COMMON = dict(min_lr=1e-6, warmup_steps=0, lr_per_epoch=True, eval_each_epoch=True)
MQAR_TRAIN_DEFAULTS = dict(epochs=16, batch_size=64, lr=1e-3, weight_decay=0.1, min_lr=1e-6,
                           warmup_steps=0, lr_per_epoch=True, eval_each_epoch=True, early_stop_at=0.999)
LM_TRAIN_DEFAULTS = dict(steps=1000, batch_size=32, lr=1e-3, weight_decay=0.1, min_lr=1e-4,
                         warmup_steps=100, eval_every=200)
LM_DATA_DEFAULTS = dict(path=None, tokenizer="byte", seq_len=256, eval_windows=64, max_bytes=None,
                        bpe_vocab_size=4096, val_fraction=0.05, seed=0)
MQAR_DATA_DEFAULTS = dict(seq_len=64, num_pairs=4, vocab_size=8192, num_train=20_000, num_test=1_000,
                          power_a=0.01, seed=0)


def default_cache_dir() -> str:
    return os.environ.get("HYPERMLP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hypermlp")


def parse_task_name(task: str) -> Tuple[str, Optional[str]]:
    """'mad:in_context_recall' -> ('mad', 'in_context_recall'); 'lm' -> ('lm', None)."""
    from .data.mad import MAD_TASKS

    if not isinstance(task, str):
        raise ConfigError(f"task must be a string ({TASK_HELP}), got {task!r}")
    if task in ("lm", "mqar"):
        return task, None
    if task.startswith("mad:") and task[4:] in MAD_TASKS:
        return "mad", task[4:]
    raise ConfigError(f"unknown task {task!r}; choose {TASK_HELP}: MAD tasks are {sorted(MAD_TASKS)}")


def mad_protocol(preset: str = "quick") -> dict:
    """MAD_QUICK or MAD_PROTOCOL (from hypermlp.data.mad) as training defaults + lr x wd grid."""
    from .defaults import MAD_PROTOCOL, MAD_QUICK

    if preset not in ("quick", "full"):
        raise ConfigError(f"preset must be quick or full, got {preset!r}")
    p = MAD_QUICK if preset == "quick" else MAD_PROTOCOL
    train = dict(_MAD_COMMON, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lrs"][-1],
                 weight_decay=p["weight_decays"][0], early_stop_at=p["early_stop_acc"])
    return {"train": train, "grid": {"lr": list(p["lrs"]), "weight_decay": list(p["weight_decays"])}}


def train_defaults(task: str, preset: str = "quick") -> dict:
    kind, _ = parse_task_name(task)
    if kind == "mad":
        return mad_protocol(preset)["train"]
    return dict(MQAR_TRAIN_DEFAULTS if kind == "mqar" else LM_TRAIN_DEFAULTS)


def resolve_train(task: str, user: dict, preset: str = "quick") -> dict:
    """Task defaults overridden by ``user``; a user ``steps`` without ``epochs`` means steps."""
    train = {**train_defaults(task, preset), **user}
    if user.get("steps") is not None and user.get("epochs") is None:
        train["epochs"] = None
    return train


def _merge_known(defaults: dict, overrides: dict, what: str) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **overrides}


def build_task(task: str, data: Optional[dict] = None, cache_dir: Optional[str] = None):
    """Task adapter for a task name and its data settings.

    ``data`` overrides the task's defaults: the MAD baseline (``mad_settings(name)[0]``), the
    first MQAR sweep point, or for ``lm``: path, tokenizer, seq_len, eval_windows, max_bytes,
    bpe_vocab_size, val_fraction, seed. Returns (adapter, resolved settings).
    """
    from .data import make_task
    from .data.mad import mad_settings

    kind, name = parse_task_name(task)
    data = dict(data or {})
    if kind == "lm":
        from .data.text import load_corpus

        s = _merge_known(LM_DATA_DEFAULTS, data, "lm data")
        corpus = load_corpus(
            s["path"], tokenizer=s["tokenizer"], bpe_vocab_size=s["bpe_vocab_size"],
            val_fraction=s["val_fraction"], cache_dir=cache_dir or default_cache_dir(),
            seed=s["seed"], max_bytes=s["max_bytes"],
        )
        s["source"] = corpus.source
        s["vocab_size"] = corpus.vocab_size
        return LMTask(corpus, seq_len=s["seq_len"], eval_windows=s["eval_windows"]), s
    if kind == "mqar":
        s = _merge_known(MQAR_DATA_DEFAULTS, data, "mqar data")
        return TokenTask(make_task("mqar", cache_dir, **s), label="mqar"), s
    base = mad_settings(name, "quick", seed=int(data.get("seed", 0)))[0]
    s = _merge_known(base, data, f"{name} data")
    if name == "fuzzy_in_context_recall" and "vocab_size" in data and "num_keys" not in data:
        s["num_keys"] = (s["vocab_size"] - 1) // 2  # keys follow the vocabulary, as in MAD
    try:
        task_data = make_task(name, cache_dir, **s)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None
    return task_from_data(task_data, label=name), s

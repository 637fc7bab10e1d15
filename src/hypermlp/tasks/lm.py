"""The ``lm`` task: next-token prediction on a text corpus.

Training draws random windows of the train split. Evaluation scores the validation split in
non-overlapping windows (``hypermlp.data.text.eval_windows``):

* ``eval_windows=None``: every evaluation scores the whole split, every target once;
* ``eval_windows=N``: evaluations during training score N windows spread evenly over the whole
  split (cheaper), and the final evaluation the whole split.

Each record says what it scored: ``val_scope`` (``"full"`` or ``"sample"``), ``val_windows``,
``val_tokens`` (targets scored), ``val_bytes`` (the UTF-8 bytes behind them) and
``val_coverage`` (``val_tokens`` over the split's ``len(val) - 1`` targets). ``val_loss`` is
nats per scored token and ``val_bpb`` = total nats / (ln 2 x ``val_bytes``): bits per byte of
exactly the bytes scored, whatever the tokenizer.

The corpus may be a prepared folder (``hypermlp prepare``) whose splits are np.memmaps: the
windows are read batch by batch where they lie, so neither split is ever loaded whole.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Optional

import torch.nn as nn

from ..config import ConfigError
from ..data.common import IGNORE_INDEX, DataError
from ..data.text import Corpus, bits_per_byte, eval_window_plan, plan_windows
from ..defaults import LM_DATA
from .base import Task, batched_logits
from .samplers import WindowSampler

__all__ = ["LMTask"]


class LMTask(Task):
    def __init__(self, corpus: Corpus, seq_len: int = LM_DATA["seq_len"],
                 eval_windows: Optional[int] = LM_DATA["eval_windows"], eval_batch_size: int = 32):
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
        if eval_windows is not None and (isinstance(eval_windows, bool) or not isinstance(eval_windows, int)
                                         or eval_windows < 1):
            raise ConfigError(f"eval_windows must be a positive integer (or null: the whole split), got {eval_windows!r}")
        self.corpus = corpus
        self.name = "lm"
        self.vocab_size = corpus.vocab_size
        self.seq_len = seq_len
        self.eval_batch_size = eval_batch_size
        self.token_bytes = corpus.token_bytes()  # (V,): bytes behind each id, for val_bpb
        n_val = len(corpus.val)
        if n_val < seq_len + 1:
            raise DataError(f"the validation split has {n_val} tokens, too few for seq_len={seq_len} "
                            f"(it needs {seq_len + 1})")
        self.val_targets = n_val - 1  # what the whole split scores
        # where the windows lie ((W,) starts and skipped targets), read batch by batch
        self.full_plan = eval_window_plan(n_val, seq_len)
        self.sample_plan = None
        if eval_windows is not None and eval_windows < self.full_plan[0].numel():
            self.sample_plan = eval_window_plan(n_val, seq_len, max_windows=eval_windows)

    @property
    def full(self):
        """Inputs and targets ``(W, T)`` of the whole-split evaluation (-100 = not scored)."""
        return plan_windows(self.corpus.val, self.seq_len, *self.full_plan)

    @property
    def sample(self):
        """Inputs and targets of the evaluations during training, or None (the whole split)."""
        return None if self.sample_plan is None else plan_windows(self.corpus.val, self.seq_len, *self.sample_plan)

    @property
    def final_eval_differs(self) -> bool:
        return self.sample_plan is not None

    def make_sampler(self, batch_size: int, seed: int) -> WindowSampler:
        return WindowSampler(self.corpus.train, batch_size, self.seq_len, seed)

    def evaluate(self, model: nn.Module, final: bool = False) -> Dict[str, float]:
        scope = "sample" if (self.sample_plan is not None and not final) else "full"
        starts, skip = self.sample_plan if scope == "sample" else self.full_plan
        total, tokens, n_bytes = 0.0, 0, 0
        for j in range(0, starts.numel(), self.eval_batch_size):
            # (b, T) each, read from the split only now
            inputs, targets = plan_windows(self.corpus.val, self.seq_len, starts[j : j + self.eval_batch_size],
                                           skip[j : j + self.eval_batch_size])
            for i, logits in batched_logits(self, model, inputs, self.eval_batch_size):
                y = targets[i : i + logits.shape[0]]
                total += float(self.loss(logits, y.to(logits.device)))
                kept = y[y != IGNORE_INDEX]
                tokens += kept.numel()
                n_bytes += int(self.token_bytes[kept].sum())
        return {
            "val_loss": total / tokens,
            "val_bpb": bits_per_byte(total / tokens, tokens, n_bytes),
            "val_tokens": tokens,
            "val_bytes": n_bytes,
            "val_windows": int(starts.numel()),
            "val_coverage": tokens / max(1, self.val_targets),
            "val_scope": scope,
        }

    def save_extra_files(self, model: nn.Module, folder: str) -> None:
        # a BPE model is unreadable without its tokenizer, so the tokenizer travels with it
        if self.corpus.tokenizer == "bpe" and self.corpus.tokenizer_path:
            shutil.copyfile(self.corpus.tokenizer_path, os.path.join(folder, "tokenizer.json"))

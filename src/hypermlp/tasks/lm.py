"""The ``lm`` task: next-token prediction on a text corpus.

Training draws random windows of the train split; evaluation is the mean loss and the bits per
byte over the first deterministic windows of the validation split.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict

import torch.nn as nn

from ..data.text import Corpus, bits_per_byte
from ..data.text import eval_windows as validation_windows
from ..defaults import LM_DATA
from .base import Task, batched_logits
from .samplers import WindowSampler

__all__ = ["LMTask"]


class LMTask(Task):
    def __init__(self, corpus: Corpus, seq_len: int = LM_DATA["seq_len"], eval_windows: int = LM_DATA["eval_windows"],
                 eval_batch_size: int = 16):
        self.corpus = corpus
        self.name = "lm"
        self.vocab_size = corpus.vocab_size
        self.seq_len = seq_len
        self.eval_batch_size = eval_batch_size
        self.eval_x, self.eval_y = validation_windows(corpus.val, seq_len, max_windows=eval_windows)  # (W, T) each
        # bytes per validation token, to turn nats/token into bits/byte (exact for the byte tokenizer)
        self.bytes_per_token = corpus.n_bytes_val / max(1, corpus.val.numel())

    def make_sampler(self, batch_size: int, seed: int) -> WindowSampler:
        return WindowSampler(self.corpus.train, batch_size, self.seq_len, seed)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        total, n = 0.0, 0
        for i, logits in batched_logits(self, model, self.eval_x, self.eval_batch_size):
            y = self.eval_y[i : i + logits.shape[0]].to(logits.device)
            total += float(self.loss(logits, y))
            n += y.numel()
        loss = total / n
        return {"val_loss": loss, "val_bpb": bits_per_byte(loss, n, max(1, round(n * self.bytes_per_token)))}

    def save_extra_files(self, model: nn.Module, folder: str) -> None:
        # a BPE model is unreadable without its tokenizer, so the tokenizer travels with it
        if self.corpus.tokenizer == "bpe" and self.corpus.tokenizer_path:
            shutil.copyfile(self.corpus.tokenizer_path, os.path.join(folder, "tokenizer.json"))

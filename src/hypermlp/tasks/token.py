"""Supervised token tasks (the MAD tasks, MQAR) and MAD compression's encoder-decoder.

* ``TokenTask``: a ``TaskData``'s fixed train / validation / test splits; the loss covers
  targets != -100, evaluation is plain and macro accuracy on the scored positions
  (``score_predictions``) of the validation split (``val_loss``, ``val_acc``,
  ``val_macro_acc``: what early stopping and selection read) and of the test split
  (``test_loss``, ``test_acc``, ``test_macro_acc``: reported only). ``acc`` and ``macro_acc``
  are the old names of the test metrics, kept while ``compare`` still reads them.
* ``CompressionTask``: MAD compression. The LanguageModel is the *encoder* (its
  ``hidden_states``); a small decoder head rebuilds all T input tokens from the hidden state at
  the last position alone: for slot t, ``h_last + query[t]`` (a learned per-slot query) goes
  through RMSNorm -> Linear(d, 2d) -> GELU -> Linear(2d, vocab). The head is the same for every
  mixer, so it does not disturb the budget matching.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.common import IGNORE_INDEX, TaskData, score_predictions
from ..models import LanguageModel, ModelConfig
from ..models.lm import RMSNorm
from .base import Task, batched_logits
from .samplers import EpochSampler

__all__ = ["TokenTask", "CompressionTask", "CompressionModel", "task_from_data"]


class TokenTask(Task):
    def __init__(self, data: TaskData, eval_batch_size: int = 256, label: Optional[str] = None):
        self.data = data.validate()
        if data.val_inputs is None:
            raise ValueError(f"{data.name}: the data has no validation split (early stopping and selection need one)")
        self.name = label or data.name
        self.vocab_size = data.vocab_size
        self.seq_len = data.seq_len
        self.eval_batch_size = eval_batch_size

    def make_sampler(self, batch_size: int, seed: int) -> EpochSampler:
        return EpochSampler(self.data.train_inputs, self.data.train_targets, batch_size, seed)

    def steps_per_epoch(self, batch_size: int) -> Optional[int]:
        return max(1, self.data.num_train // batch_size)

    def evaluate(self, model: nn.Module, final: bool = False) -> Dict[str, float]:
        val = self._score(model, self.data.val_inputs, self.data.val_targets)
        test = self._score(model, self.data.test_inputs, self.data.test_targets)
        out = {f"val_{k}": v for k, v in val.items()}
        out.update({f"test_{k}": v for k, v in test.items()})
        out.update(acc=test["acc"], macro_acc=test["macro_acc"])  # old names of the test metrics
        return out

    def _score(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
        """Mean loss over the scored targets (-100 = not scored), plain and macro accuracy."""
        preds, loss_sum, count = [], 0.0, 0
        for i, logits in batched_logits(self, model, inputs, self.eval_batch_size):
            y = targets[i : i + logits.shape[0]].to(logits.device)
            loss_sum += float(self.loss(logits, y))
            count += int((y != IGNORE_INDEX).sum())
            preds.append(logits.argmax(-1).cpu())
        scores = score_predictions(torch.cat(preds), targets)
        return {"loss": loss_sum / max(1, count), "acc": scores["acc"], "macro_acc": scores["macro_acc"]}


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

    def head_state_dict(self) -> Dict[str, torch.Tensor]:
        """The decoder head's weights (everything but the encoder)."""
        return {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        last = self.encoder.hidden_states(idx)[:, -1]  # (B, d): everything the decoder may use
        t = idx.shape[1]
        h = last[:, None, :] + self.query[None, :t]  # (B, T, d)
        return self.out(F.gelu(self.fc(self.norm(h))))  # (B, T, vocab)


class CompressionTask(TokenTask):
    """A TokenTask whose model is a CompressionModel; its checkpoints add decoder.safetensors."""

    def __init__(self, data: TaskData, eval_batch_size: int = 256, label: Optional[str] = None):
        if data.settings.get("readout") != "last_position":
            raise ValueError(f"{data.name}: CompressionTask needs settings['readout'] == 'last_position'")
        super().__init__(data, eval_batch_size, label)

    def build_model(self, model_cfg: ModelConfig) -> CompressionModel:
        return CompressionModel(LanguageModel(model_cfg), self.seq_len)

    def has_unused_parameters(self, model_cfg: ModelConfig) -> bool:
        return not model_cfg.tie_embeddings  # the decoder never reads the encoder's own output head

    def language_model(self, model: CompressionModel) -> LanguageModel:
        return model.encoder

    def save_extra_files(self, model: CompressionModel, folder: str) -> None:
        from safetensors.torch import save_file

        save_file(model.head_state_dict(), os.path.join(folder, "decoder.safetensors"))

    def load_extra_files(self, model: CompressionModel, folder: str, device) -> None:
        from safetensors.torch import load_file

        head = load_file(os.path.join(folder, "decoder.safetensors"), device=str(device))
        encoder = {"encoder." + k: v for k, v in model.encoder.state_dict().items()}
        model.load_state_dict({**encoder, **head}, strict=True)  # strict: the head must be complete


def task_from_data(data: TaskData, label: Optional[str] = None) -> TokenTask:
    """The task for a synthetic TaskData (compression gets the encoder-decoder)."""
    if data.settings.get("readout") == "last_position":
        return CompressionTask(data, label=label)
    return TokenTask(data, label=label)

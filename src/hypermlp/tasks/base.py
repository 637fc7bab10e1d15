"""The task contract: everything the Trainer asks of a task, with the answers most tasks share.

The Trainer never asks what kind of task or model it has; it only calls these:

* ``name``, ``vocab_size``, ``seq_len`` (the longest input the model must take);
* ``build_model(model_cfg)`` -> the trainable module;
* ``make_sampler(batch_size, seed)`` -> a resumable sampler of *global* batches (every DDP rank
  draws the same global batch and keeps its own rows, so N processes see what one would);
* ``steps_per_epoch(batch_size)`` -> steps in one pass over the training set, None = no epochs;
* ``forward(model, x)`` -> (B, T, V) logits aligned with the (B, T) targets (-100 = ignored);
* ``loss(logits, targets)`` -> the *summed* float32 cross-entropy over the kept targets;
* ``evaluate(model, final=False)`` -> a dict of metrics, deterministic. Metrics named ``val_*``
  come from a validation split held apart from train and test: early stopping and
  hyperparameter selection read only those; ``test_*`` metrics are for reporting. ``final``
  is set on the last evaluation of a run, which may score more than the ones during training
  (``final_eval_differs`` says whether it does, so the Trainer knows to repeat an evaluation
  that ended a run early);
* ``language_model(model)`` -> the LanguageModel a checkpoint stores (model.safetensors + config.json);
* ``save_extra_files(model, folder)`` / ``load_extra_files(model, folder, device)``: whatever
  else the task's checkpoints hold;
* ``has_unused_parameters(model_cfg)`` -> whether DDP must look for parameters the loss never reaches.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn

from ..models import LanguageModel, ModelConfig
from ..models.lm import token_cross_entropy

__all__ = ["Task", "batched_logits"]


class Task:
    """Base class of the tasks: a plain LanguageModel trained on next-token cross-entropy.
    Subclasses give the data (``make_sampler``, ``evaluate``) and override what differs."""

    name: str
    vocab_size: int
    seq_len: int

    # -- model -------------------------------------------------------------------------------
    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        return LanguageModel(model_cfg)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_cross_entropy(logits, targets, reduction="sum")

    def has_unused_parameters(self, model_cfg: ModelConfig) -> bool:
        return False

    # -- data --------------------------------------------------------------------------------
    def make_sampler(self, batch_size: int, seed: int):
        raise NotImplementedError

    def steps_per_epoch(self, batch_size: int) -> Optional[int]:
        return None

    def evaluate(self, model: nn.Module, final: bool = False) -> Dict[str, float]:
        raise NotImplementedError

    @property
    def final_eval_differs(self) -> bool:
        return False

    # -- checkpoints -------------------------------------------------------------------------
    def language_model(self, model: nn.Module) -> LanguageModel:
        return model

    def save_extra_files(self, model: nn.Module, folder: str) -> None:
        pass

    def load_extra_files(self, model: nn.Module, folder: str, device) -> None:
        pass


@torch.no_grad()
def batched_logits(task: Task, model: nn.Module, inputs: torch.Tensor, batch_size: int) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield (start row, float32 logits) over ``inputs`` in eval mode, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, inputs.shape[0], batch_size):
            yield i, task.forward(model, inputs[i : i + batch_size].to(device)).float()
    finally:
        model.train(was_training)

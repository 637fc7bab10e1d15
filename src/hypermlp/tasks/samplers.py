"""Resumable samplers of global training batches, each drawing from a private torch.Generator
(so the global RNG, which seeds the model init, is never touched)."""

from __future__ import annotations

from typing import Tuple

import torch

from ..config import ConfigError
from ..data.text import get_batch

__all__ = ["WindowSampler", "EpochSampler"]


class WindowSampler:
    """Random windows of a token stream (the ``lm`` task): a tensor, or a prepared split's
    read-only np.memmap, read only where the windows lie (the same draws give the same windows)."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int):
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.ids, self.batch_size, self.seq_len, self.gen)  # (B, T), (B, T)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class EpochSampler:
    """Shuffled passes over a fixed training set (MAD, MQAR); the last partial batch of a pass is
    dropped so every step has the same global batch size."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int):
        if batch_size > inputs.shape[0]:
            raise ConfigError(f"batch_size={batch_size} exceeds the {inputs.shape[0]} training examples")
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self.perm = torch.randperm(inputs.shape[0], generator=self.gen)

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch_size > self.perm.numel():
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = torch.randperm(self.inputs.shape[0], generator=self.gen)
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.inputs[idx], self.targets[idx]  # (B, T), (B, T)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.epoch, self.pos = state["perm"].clone(), int(state["epoch"]), int(state["pos"])

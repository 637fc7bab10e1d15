"""The decoding cache of one mixer layer (docs/math.md §4)."""

from __future__ import annotations

from typing import Optional

import torch


class LayerCache:
    """Decoding state of one mixer layer: keys and values of all past tokens (after conv and
    projection; RoPE already applied), which of them are real tokens, and the last kernel-1
    inputs of each conv. Buffers are allocated once, at max_len, on the first call."""

    def __init__(self, batch_size: int, max_len: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None
        self.key_valid: Optional[torch.Tensor] = None
        self.has_padding = False
        self.real_count: Optional[torch.Tensor] = None  # (B,) real tokens seen, for RoPE positions
        # last kernel-1 inputs of the causal convs on the K and V inputs, (B, kernel-1, d_model)
        self.conv_k: Optional[torch.Tensor] = None
        self.conv_v: Optional[torch.Tensor] = None
        # (B,) bool: a key or value seen so far was NaN or inf (every later output is NaN)
        self.saw_non_finite: Optional[torch.Tensor] = None

    def check_batch(self, x: torch.Tensor) -> None:
        if x.shape[0] != self.batch_size:
            raise ValueError(f"cache was made for batch size {self.batch_size}, input has batch size {x.shape[0]}")

    def append(self, k: torch.Tensor, v: torch.Tensor, valid: Optional[torch.Tensor]):
        """Store the new keys/values (B, heads, T, dim) and return everything seen so far."""
        start, t = self.length, k.shape[2]
        if self.key_valid is None:
            self.key_valid = torch.ones(self.batch_size, self.max_len, dtype=torch.bool, device=k.device)
        if k.requires_grad or v.requires_grad or (self.k is not None and self.k.requires_grad):
            # training through the cache: grow by concatenation, so that every earlier call's
            # graph stays valid (writing into a preallocated buffer would change tensors that
            # autograd saved, e.g. the keys SDPA keeps for its backward)
            self.k = k if start == 0 else torch.cat([self.k[:, :, :start], k], dim=2)
            self.v = v if start == 0 else torch.cat([self.v[:, :, :start], v], dim=2)
        else:
            if self.k is None or self.k.shape[2] < self.max_len:  # first call, or after a grown cache
                old_k, old_v = self.k, self.v
                self.k = k.new_zeros(self.batch_size, k.shape[1], self.max_len, k.shape[3])
                self.v = v.new_zeros(self.batch_size, v.shape[1], self.max_len, v.shape[3])
                if start:
                    self.k[:, :, :start], self.v[:, :, :start] = old_k[:, :, :start], old_v[:, :, :start]
            self.k[:, :, start : start + t] = k
            self.v[:, :, start : start + t] = v
        if valid is not None:
            self.key_valid[:, start : start + t] = valid
            self.has_padding = self.has_padding or not bool(valid.all())
        self.length = start + t
        n_real = valid.sum(1) if valid is not None else torch.full((self.batch_size,), t, device=k.device)
        self.real_count = n_real if self.real_count is None else self.real_count + n_real
        key_valid = self.key_valid[:, : self.length] if self.has_padding else None
        return self.k[:, :, : self.length], self.v[:, :, : self.length], key_valid

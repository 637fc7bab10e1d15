"""Pieces every mixer is built from: input checks, the causal depthwise conv, RoPE and its
positions, head splitting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch
import torch.nn as nn

if TYPE_CHECKING:  # annotation only: the cache module does not need these pieces
    from .cache import LayerCache


def check_input(
    x: torch.Tensor, d_model: int, max_len: int, offset: int, mask: Optional[torch.Tensor], param_dtype: torch.dtype
):
    """Raise an error that names the problem for any malformed mixer input."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"input must have shape (batch, seq_len, d_model={d_model}), got {tuple(x.shape)}")
    if x.shape[-1] != d_model:
        raise ValueError(f"input width {x.shape[-1]} does not match d_model={d_model} (shape {tuple(x.shape)})")
    if x.shape[0] < 1:
        raise ValueError(f"input has an empty batch (batch size 0, shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dtype != param_dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"input dtype {x.dtype} does not match the layer's parameters ({param_dtype}): convert one "
            "(layer.to(dtype) or x.to(dtype)) or run under torch.autocast"
        )
    if x.shape[1] < 1:
        raise ValueError("input has no tokens (seq_len = 0)")
    if offset + x.shape[1] > max_len:
        if offset:
            raise ValueError(
                f"sequence too long: {offset} cached + {x.shape[1]} new tokens = {offset + x.shape[1]} "
                f"exceeds max_len={max_len}"
            )
        raise ValueError(f"sequence length {x.shape[1]} exceeds max_len={max_len}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a boolean tensor of shape (batch, seq_len); True = real token")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match input (batch, seq_len) = {tuple(x.shape[:2])}")


def token_positions(x: torch.Tensor, offset: int, mask: Optional[torch.Tensor], cache: Optional["LayerCache"]):
    """Positions for RoPE. Without padding: offset .. offset+T-1. With padding they count real
    tokens only (per row), so a left-padded row is rotated exactly as the same row unpadded
    (this matters once a per-dimension gate follows RoPE: then only relative rotation is exact)."""
    padded = mask is not None or (cache is not None and cache.has_padding)
    if not padded:
        return torch.arange(offset, offset + x.shape[1], device=x.device)
    real = mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    before = cache.real_count if (cache is not None and cache.real_count is not None) else 0
    return (real.long().cumsum(1) - 1 + (before[:, None] if torch.is_tensor(before) else before)).clamp(min=0)


class CausalDepthwiseConv(nn.Module):
    """Depthwise causal Conv1d over time, no bias; left padding of kernel-1 (or the cached
    inputs when decoding)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # as nn.Conv1d

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C); state: the previous kernel-1 inputs (B, kernel-1, C) or None (zeros)."""
        if state is None:
            state = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
        xt = torch.cat([state, x], dim=1)
        # y[t] = sum_i w[i] * xt[t + i] (the cross-correlation of F.conv1d), as kernel_size
        # shifted multiply-adds in the (B, T, C) layout: on CPU the depthwise conv1d needs two
        # transposed copies and its backward is ~20x slower than this.
        t, w = x.shape[1], self.weight[:, 0, :]  # (C, K)
        if t == 1:  # one decoded token: a single weighted sum over the window
            y = (xt * w.t()).sum(1, keepdim=True)
        else:
            y = xt[:, :t] * w[:, 0]
            for i in range(1, self.kernel_size):
                y = torch.addcmul(y, xt[:, i : i + t], w[:, i])
        return y, xt[:, xt.shape[1] - (self.kernel_size - 1) :]


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention) at absolute positions.

    The angles are computed in float64 for the positions at hand (cheap: T x head_dim/2), so
    they stay exact at long positions and under any module dtype conversion."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, heads, T, head_dim); positions: (T,) or (B, T) integer positions."""
        angles = positions.to(torch.float64)[..., None] * self.inv_freq.to(x.device)
        if angles.dim() == 3:  # per-row positions: broadcast over heads
            angles = angles[:, None]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads*dim) -> (B, heads, T, dim), head-major."""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, dim) -> (B, T, heads*dim)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)

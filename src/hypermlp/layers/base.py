"""What every mixer of the library shares: the feature side of a head (docs/math.md §2.1-§2.3,
§2.8) and the opening and closing steps of ``forward``.

Softmax attention and the Hyper layers differ only in their core, the step that turns queries,
keys and values into the per-head readout; ``ProjectedMixer`` holds everything around it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .cache import LayerCache
from .common import CausalDepthwiseConv, Rotary, check_input, merge_heads, split_heads, token_positions


class ProjectedMixer(nn.Module):
    """Q/K/V/O projections (no bias), the causal depthwise convs on the K and V inputs, the
    sigmoid gates on q and on the readout, and RoPE; a switch that is off adds no module.

    ``cfg`` is a ``HyperConfig`` or an ``AttentionConfig``; ``qk_heads`` the number of score
    heads (``n_heads`` readout heads, twice that for HyperGLU)."""

    def __init__(self, cfg, qk_heads: int):
        super().__init__()
        d = cfg.d_model
        self.config = cfg
        self.n_heads = cfg.n_heads  # readout heads H
        self.qk_heads = qk_heads  # score heads Hq
        self.q_proj = nn.Linear(d, cfg.qk_rank, bias=False)
        self.k_proj = nn.Linear(d, cfg.qk_rank, bias=False)
        self.v_proj = nn.Linear(d, cfg.vo_rank, bias=False)
        self.o_proj = nn.Linear(cfg.vo_rank, d, bias=False)
        self.conv_k = CausalDepthwiseConv(d, cfg.conv_size) if cfg.conv_size else None
        self.conv_v = CausalDepthwiseConv(d, cfg.conv_size) if cfg.conv_size else None
        self.q_gate = nn.Linear(d, cfg.qk_rank) if cfg.qk_gate else None
        self.out_gate = nn.Linear(d, cfg.vo_rank) if cfg.out_gate else None
        self.rotary = Rotary(cfg.qk_rank // qk_heads, cfg.rope_base) if cfg.rope else None

    def new_cache(self, batch_size: int) -> LayerCache:
        """An empty decoding cache; pass it as ``cache=`` to feed tokens incrementally."""
        return LayerCache(batch_size, self.config.max_len)

    # -- the steps of forward, in order ----------------------------------------------------------
    def begin(self, x: torch.Tensor, cache: Optional[LayerCache], mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, int]:
        """Check the input (before any work) and zero padded rows, which must not leak into later
        positions through the convs. Returns (x, offset = number of tokens already cached)."""
        offset = cache.length if cache is not None else 0
        check_input(x, self.config.d_model, self.config.max_len, offset, mask, self.o_proj.weight.dtype)
        if cache is not None:
            cache.check_batch(x)
        if mask is not None:  # where, not a product: a NaN or inf at a padded position must not leak
            x = x.masked_fill(~mask[..., None], 0)
        return x, offset

    def project(self, x: torch.Tensor, offset: int, cache: Optional[LayerCache], mask: Optional[torch.Tensor]):
        """x (B, T, d) -> q, k (B, Hq, T, dk) and v (B, H, T, dv) of the new tokens: convs on the
        K and V inputs (their last inputs carried in the cache), projections, RoPE, q gate."""
        xk, xv = x, x
        if self.conv_k is not None:
            xk, conv_k_state = self.conv_k(x, cache.conv_k if cache is not None else None)
            xv, conv_v_state = self.conv_v(x, cache.conv_v if cache is not None else None)
            if cache is not None:
                cache.conv_k, cache.conv_v = conv_k_state, conv_v_state
        q = split_heads(self.q_proj(x), self.qk_heads)
        k = split_heads(self.k_proj(xk), self.qk_heads)
        v = split_heads(self.v_proj(xv), self.n_heads)
        if self.rotary is not None:
            pos = token_positions(x, offset, mask, cache)
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        if self.q_gate is not None:  # after RoPE, as the authors do
            q = q * torch.sigmoid(split_heads(self.q_gate(x), self.qk_heads))
        return q, k, v

    @staticmethod
    def all_keys(k: torch.Tensor, v: torch.Tensor, cache: Optional[LayerCache], mask: Optional[torch.Tensor]):
        """Keys and values of every token so far, (B, Hq, S, dk) and (B, H, S, dv) with
        S = offset + T; which of them are real tokens, (B, S) bool or None when all are; and which
        of the new positions see a non-finite key or value, (B, T) bool.

        A NaN or inf in the key or value of position j must reach only the outputs at positions
        >= j (docs/math.md §10): in a block matmul an earlier query would meet it as 0 * NaN. So a
        non-finite key or value row is stored as zeros, and ``finish`` writes NaN into the outputs
        of every position at or after it (no host sync: all of it is tensor masks)."""
        bad = ~(torch.isfinite(k).all(-1).all(1) & torch.isfinite(v).all(-1).all(1))  # (B, T)
        k = k.masked_fill(bad[:, None, :, None], 0)
        v = v.masked_fill(bad[:, None, :, None], 0)
        sees_bad = bad.cumsum(1) > 0  # (B, T): at or after a non-finite position of this call
        if cache is not None:
            if cache.saw_non_finite is not None:
                sees_bad = sees_bad | cache.saw_non_finite[:, None]
            cache.saw_non_finite = sees_bad[:, -1]
            return (*cache.append(k, v, mask), sees_bad)
        # an all-True mask needs no key padding; finding that out is a host sync, which a compiled
        # graph skips (a mask of ones gives the same result, through the padded path)
        all_real = mask is None or (not torch.compiler.is_compiling() and bool(mask.all()))
        key_valid = None if all_real else mask
        return k, v, key_valid, sees_bad

    def finish(self, o: torch.Tensor, x: torch.Tensor, mask: Optional[torch.Tensor], sees_bad: torch.Tensor) -> torch.Tensor:
        """Per-head readout (B, H, T, dv) -> output (B, T, d): heads concatenated, output gate,
        W_o; NaN at the positions that see a non-finite key or value (``all_keys``), zero at
        padded positions."""
        o = merge_heads(o)
        if self.out_gate is not None:
            o = o * torch.sigmoid(self.out_gate(x))
        out = self.o_proj(o).masked_fill(sees_bad[..., None], float("nan"))
        if mask is not None:
            out = out.masked_fill(~mask[..., None], 0)
        return out

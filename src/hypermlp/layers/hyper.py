"""HyperMLP, HyperGLU and ReLU attention layers (SPEC.md §2-§4).

All three share one module: projections, the short causal convs on the key and value inputs, the
feature gates, the two DPLR sequence mixings and the decoding cache. What differs is the core:
HyperMLP uses ReLU(z / rho(z)); HyperGLU pairs score heads into a gate branch (normalised, ReLU)
and a scale branch (softplus); ReLU attention is HyperMLP with R(1) = R(2) = I.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import ConfigError, HyperConfig, build_config, score_heads
from ..ops import hyper_core_chunked, hyper_core_reference
from .common import LayerCache, add_feature_layers, apply_conv, check_input, merge_heads, split_heads, token_positions


class DPLRTables(nn.Module):
    """Lag-indexed tables of one diagonal-plus-low-rank sequence mixing, one set per head:
    z' = z + z*p + ((z A) * s) B^T, with row l of A, B, p used for lag l."""

    def __init__(self, heads: int, max_len: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(heads, max_len, rank) * 0.02)
        self.B = nn.Parameter(torch.randn(heads, max_len, rank) * 0.02)
        self.p = nn.Parameter(torch.zeros(heads, max_len))

    def tables(self):
        return (self.A, self.B, self.p)


class _HyperBase(nn.Module):
    config_cls = HyperConfig
    glu = False

    def __init__(self, config: Optional[HyperConfig] = None, **kwargs):
        super().__init__()
        cfg = build_config(HyperConfig, config, kwargs).validate(glu=self.glu)
        self.config = cfg
        d, h, r, L = cfg.d_model, cfg.n_heads, cfg.seq_rank, cfg.max_len
        self.n_heads = h
        self.qk_heads = score_heads(h, self.glu)
        add_feature_layers(self, cfg, qk_heads=self.qk_heads)
        if cfg.mix1:
            self.mix1_gate = nn.Linear(d, self.qk_heads * r)
            self.seq_mix1 = DPLRTables(self.qk_heads, L, r)
        if cfg.mix2:
            self.mix2_gate = nn.Linear(d, h * r)
            self.seq_mix2 = DPLRTables(h, L, r)

    def new_cache(self, batch_size: int) -> LayerCache:
        """An empty decoding cache; pass it as ``cache=`` to feed tokens incrementally."""
        return LayerCache(batch_size, self.config.max_len)

    def forward(
        self,
        x: torch.Tensor,
        cache: Optional[LayerCache] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model).

        cache: from ``new_cache``; x then holds the tokens that follow those already cached.
        mask: optional (B, T) bool, False at (left-)padding positions, which take no part in any
        output (their own outputs are zero).
        """
        cfg = self.config
        offset = cache.length if cache is not None else 0
        check_input(x, cfg.d_model, cfg.max_len, offset, mask)
        if cache is not None:
            cache.check_batch(x)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)  # padded inputs must not leak through the convs

        xk = apply_conv(self, "conv_k", x, cache)
        xv = apply_conv(self, "conv_v", x, cache)
        q = split_heads(self.q_proj(x), self.qk_heads)
        k = split_heads(self.k_proj(xk), self.qk_heads)
        v = split_heads(self.v_proj(xv), self.n_heads)
        if cfg.rope:
            pos = token_positions(x, offset, mask, cache)
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        if cfg.qk_gate:
            q = q * torch.sigmoid(split_heads(self.q_gate(x), self.qk_heads))
        s1 = torch.sigmoid(split_heads(self.mix1_gate(x), self.qk_heads)) if cfg.mix1 else None
        s2 = torch.sigmoid(split_heads(self.mix2_gate(x), self.n_heads)) if cfg.mix2 else None

        if cache is not None:
            k, v, key_valid = cache.append(k, v, mask)
        else:
            key_valid = mask if (mask is not None and not bool(mask.all())) else None

        mix1 = self.seq_mix1.tables() if cfg.mix1 else None
        mix2 = self.seq_mix2.tables() if cfg.mix2 else None
        common = dict(glu=self.glu, layout=cfg.layout, offset=offset, eps=cfg.norm_eps, key_valid=key_valid)
        if cfg.impl == "reference":
            o = hyper_core_reference(q, k, v, s1, s2, mix1, mix2, **common)
        else:
            o = hyper_core_chunked(q, k, v, s1, s2, mix1, mix2, chunk_size=cfg.chunk_size, **common)

        o = merge_heads(o)
        if cfg.out_gate:
            o = o * torch.sigmoid(self.out_gate(x))
        out = self.o_proj(o)
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        return out

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"d_model={c.d_model}, n_heads={c.n_heads}, qk_rank={c.qk_rank}, vo_rank={c.vo_rank}, "
            f"seq_rank={c.seq_rank}, max_len={c.max_len}, layout={c.layout}, impl={c.impl}"
        )


class HyperMLP(_HyperBase):
    """HyperMLP: a_t = ReLU(z'_t / rho(z'_t)) between the two sequence mixings."""

    glu = False


class HyperGLU(_HyperBase):
    """HyperGLU: 2 score heads per readout head; a_t = softplus(z'_scale) * ReLU(z'_gate / rho)."""

    glu = True


class ReLUAttention(HyperMLP):
    """ReLU attention: ReLU(L2Norm(q . k)) readout, i.e. HyperMLP with R(1) = R(2) = I.
    Takes the HyperMLP arguments except seq_rank, mix1, mix2 and layout."""

    fixed_args = ("seq_rank", "mix1", "mix2", "layout")

    def __init__(self, config: Optional[HyperConfig] = None, **kwargs):
        bad = [k for k in self.fixed_args if k in kwargs]
        if bad:
            raise ConfigError(f"ReLUAttention does not take {bad}: it has no sequence mixing")
        if config is not None:
            if config.mix1 or config.mix2:
                raise ConfigError("ReLUAttention needs a config with mix1=False and mix2=False")
        else:
            kwargs.update(mix1=False, mix2=False)
        super().__init__(config, **kwargs)

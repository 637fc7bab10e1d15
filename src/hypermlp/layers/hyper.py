"""HyperMLP, HyperGLU and ReLU attention layers (docs/math.md §2, §5).

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
from ..ops import Tables, hyper_core
from .base import ProjectedMixer
from .cache import LayerCache
from .common import split_heads


class DPLRTables(nn.Module):
    """Lag-indexed tables of one diagonal-plus-low-rank sequence mixing, one set per head:
    z' = z + z*p + ((z A) * s) B^T, with row l of A, B, p used for lag l."""

    def __init__(self, heads: int, max_len: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(heads, max_len, rank) * 0.02)
        self.B = nn.Parameter(torch.randn(heads, max_len, rank) * 0.02)
        self.p = nn.Parameter(torch.zeros(heads, max_len))

    def tables(self) -> Tables:
        return Tables(self.A, self.B, self.p)


class _HyperBase(ProjectedMixer):
    config_cls = HyperConfig
    glu = False

    def __init__(self, config: Optional[HyperConfig] = None, **kwargs):
        cfg = build_config(HyperConfig, config, kwargs).validate(glu=self.glu)
        d, h, r, L = cfg.d_model, cfg.n_heads, cfg.seq_rank, cfg.max_len
        hq = score_heads(h, self.glu)
        super().__init__(cfg, qk_heads=hq)  # projections, convs, feature gates, RoPE
        # R(1) on the scores of each score head, R(2) on the activated scores of each readout head
        self.mix1_gate = nn.Linear(d, hq * r) if cfg.mix1 else None  # s1(x), (Hq, r) per token
        self.seq_mix1 = DPLRTables(hq, L, r) if cfg.mix1 else None
        self.mix2_gate = nn.Linear(d, h * r) if cfg.mix2 else None  # s2(x), (H, r) per token
        self.seq_mix2 = DPLRTables(h, L, r) if cfg.mix2 else None

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
        x, offset = self.begin(x, cache, mask)  # checked; padded rows zeroed
        q, k, v, s1, s2, key_valid, sees_bad = self.core_inputs(x, offset, cache, mask)
        o = hyper_core(  # (B, H, T, dv), already divided by rho
            q, k, v, s1, s2,
            self.seq_mix1.tables() if cfg.mix1 else None,
            self.seq_mix2.tables() if cfg.mix2 else None,
            glu=self.glu, layout=cfg.layout, offset=offset, eps=cfg.rho_eps, key_valid=key_valid,
            impl=cfg.impl, chunk_size=cfg.chunk_for(x.device),
        )
        return self.finish(o, x, mask, sees_bad)  # (B, T, d)

    def core_inputs(self, x: torch.Tensor, offset: int, cache: Optional[LayerCache], mask: Optional[torch.Tensor]):
        """The core's tensor inputs from ``begin``'s x (also what ``hypermlp.inspect`` probes):
        q (B, Hq, T, dk), k (B, Hq, S, dk), v (B, H, S, dv), the gates s1 (B, Hq, T, r) and
        s2 (B, H, T, r) or None, key_valid (B, S) | None and sees_bad (B, T) (``all_keys``)."""
        cfg = self.config
        q, k, v = self.project(x, offset, cache, mask)  # (B, Hq, T, dk), (B, Hq, T, dk), (B, H, T, dv)
        s1 = torch.sigmoid(split_heads(self.mix1_gate(x), self.qk_heads)) if cfg.mix1 else None  # (B, Hq, T, r)
        s2 = torch.sigmoid(split_heads(self.mix2_gate(x), self.n_heads)) if cfg.mix2 else None  # (B, H, T, r)
        k, v, key_valid, sees_bad = self.all_keys(k, v, cache, mask)  # (B, Hq, S, dk), (B, H, S, dv), (B, S) | None
        return q, k, v, s1, s2, key_valid, sees_bad

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

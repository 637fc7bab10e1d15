"""Softmax attention baseline: causal multi-head attention through scaled_dot_product_attention,
RoPE on by default, with the same conv / gate switches as the Hyper layers (off by default)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import AttentionConfig, build_config
from .base import ProjectedMixer
from .cache import LayerCache


class SoftmaxAttention(ProjectedMixer):
    """Causal multi-head softmax attention (``n_heads`` heads of ``qk_rank / n_heads``)."""

    config_cls = AttentionConfig

    def __init__(self, config: Optional[AttentionConfig] = None, **kwargs):
        cfg = build_config(AttentionConfig, config, kwargs).validate()
        super().__init__(cfg, qk_heads=cfg.n_heads)  # projections, convs, feature gates, RoPE

    def forward(self, x: torch.Tensor, cache: Optional[LayerCache] = None, mask: Optional[torch.Tensor] = None):
        """x: (B, T, d_model) -> (B, T, d_model); ``cache`` and ``mask`` as for the Hyper layers."""
        x, offset = self.begin(x, cache, mask)  # checked; padded rows zeroed
        q, k, v = self.project(x, offset, cache, mask)  # (B, H, T, dk), (B, H, T, dk), (B, H, T, dv)
        k, v, key_valid, sees_bad = self.all_keys(k, v, cache, mask)  # (B, H, S, dk), (B, H, S, dv), (B, S) | None
        if offset == 0 and key_valid is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # after a prompt, or with padding: an explicit (B, 1, T, S) mask
            t, s = x.shape[1], k.shape[2]
            pos = torch.arange(offset, offset + t, device=x.device)[:, None]
            allowed = (torch.arange(s, device=x.device)[None, :] <= pos)[None, None]
            if key_valid is not None:
                allowed = allowed & key_valid[:, None, None, :]
                # a padded query may see no real key at all: open its row (its output is zeroed)
                allowed = allowed | ~allowed.any(-1, keepdim=True)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.finish(o, x, mask, sees_bad)  # (B, T, d)

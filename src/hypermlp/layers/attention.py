"""Softmax attention baseline: causal multi-head attention through scaled_dot_product_attention,
RoPE on by default, with the same conv / gate switches as the Hyper layers (off by default)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import AttentionConfig, build_config
from .common import LayerCache, add_feature_layers, apply_conv, check_input, merge_heads, split_heads, token_positions


class SoftmaxAttention(nn.Module):
    config_cls = AttentionConfig
    def __init__(self, config: Optional[AttentionConfig] = None, **kwargs):
        super().__init__()
        cfg = build_config(AttentionConfig, config, kwargs).validate()
        self.config = cfg
        h = cfg.n_heads
        self.n_heads = h
        add_feature_layers(self, cfg, qk_heads=h)

    def new_cache(self, batch_size: int) -> LayerCache:
        return LayerCache(batch_size, self.config.max_len)

    def forward(self, x: torch.Tensor, cache: Optional[LayerCache] = None, mask: Optional[torch.Tensor] = None):
        cfg = self.config
        offset = cache.length if cache is not None else 0
        check_input(x, cfg.d_model, cfg.max_len, offset, mask)
        if cache is not None:
            cache.check_batch(x)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        t = x.shape[1]
        q = split_heads(self.q_proj(x), self.n_heads)
        k = split_heads(self.k_proj(apply_conv(self, "conv_k", x, cache)), self.n_heads)
        v = split_heads(self.v_proj(apply_conv(self, "conv_v", x, cache)), self.n_heads)
        if cfg.rope:
            pos = token_positions(x, offset, mask, cache)
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        if cfg.qk_gate:
            q = q * torch.sigmoid(split_heads(self.q_gate(x), self.n_heads))
        if cache is not None:
            k, v, key_valid = cache.append(k, v, mask)
        else:
            key_valid = mask if (mask is not None and not bool(mask.all())) else None

        if offset == 0 and key_valid is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = k.shape[2]
            pos = torch.arange(offset, offset + t, device=x.device)[:, None]
            allowed = (torch.arange(s, device=x.device)[None, :] <= pos)[None, None]
            if key_valid is not None:
                allowed = allowed & key_valid[:, None, None, :]
                # a padded query may see no real key at all: open its row (its output is zeroed)
                allowed = allowed | ~allowed.any(-1, keepdim=True)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        o = merge_heads(o)
        if cfg.out_gate:
            o = o * torch.sigmoid(self.out_gate(x))
        out = self.o_proj(o)
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        return out

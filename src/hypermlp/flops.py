"""Estimated training FLOPs of a LanguageModel (docs/math.md §6).

``training_flops(model_cfg, tokens, seq_len)`` = ``3 x forward`` (the backward pass costs about
twice the forward), with the forward per token

    2 N  +  sum over layers of the mixer's sequence terms at the mean causal context c

* ``N``, the *dense* parameters: every weight a token is multiplied by (projections, gates,
  convs, SwiGLU, norms, the output head; ``dense_params``). Not the embedding table (a lookup)
  and not the lag-indexed tables of the Hyper mixings, whose use is a sequence term. With tied
  embeddings the head's ``V x d`` counts once. So the dense part is the usual ``6 N tokens``.
* The sequence terms, per token and layer, for a query that sees ``c`` keys (``c = t + 1`` at
  position ``t``; averaged over a window of ``T`` positions, ``c = (T + 1) / 2``; the causal
  mask is honoured, masked-out work is not counted):
  - scores and readout (every mixer): ``2 c d_qk + 2 c d_vo`` (``d_qk = qk_rank``, ``d_vo =
    vo_rank``, summed over heads);
  - each DPLR mixing ``R(1)`` (per score head) and ``R(2)`` (per readout head): the two thin
    products with the ``c x r`` lag tables, ``2 c r`` each, plus the diagonal, ``2 c``:
    ``(4 r + 2) c`` per head (HyperMLP: ``Hq = H``; HyperGLU: ``Hq = 2H``; ReLU attention: none).
  Softmax, ReLU(L2Norm) and softplus cost ``O(c)`` per head and are left out, as are norms'
  and activations' elementwise work; it is an estimate of matmul FLOPs, good for comparing
  mixers and runs, not a measurement.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

__all__ = ["dense_params", "sequence_flops_per_token", "forward_flops_per_token", "training_flops"]


def _meta_model(model_cfg) -> nn.Module:
    from .models import LanguageModel

    with torch.device("meta"):
        return LanguageModel(model_cfg)


def dense_params(model: nn.Module) -> int:
    """Parameters of ``model`` that multiply every token: all of them but embedding tables
    (unless tied to a linear layer, which then counts them once) and the Hyper layers'
    lag-indexed tables (``DPLRTables``)."""
    from .layers.hyper import DPLRTables

    skip = set()
    for module in model.modules():
        if isinstance(module, DPLRTables):
            skip.update(id(p) for p in module.parameters())
        elif isinstance(module, nn.Embedding):
            skip.add(id(module.weight))
    for module in model.modules():  # a tied head: the table is a matmul weight after all
        if isinstance(module, nn.Linear):
            skip.discard(id(module.weight))
    seen, total = set(), 0
    for p in model.parameters():  # shared parameters once
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            total += p.numel()
    return total


def sequence_flops_per_token(model_cfg, seq_len: int) -> float:
    """Forward FLOPs per token of every layer's sequence terms (module docstring), at the mean
    causal context ``(seq_len + 1) / 2`` of a length-``seq_len`` window."""
    c = (seq_len + 1) / 2
    total = 0.0
    for block in _meta_model(model_cfg).blocks:
        mixer = block.mixer
        cfg = mixer.config
        total += 2 * c * cfg.qk_rank + 2 * c * cfg.vo_rank
        r = getattr(cfg, "seq_rank", 0)
        if getattr(mixer, "seq_mix1", None) is not None:
            total += mixer.qk_heads * (4 * r + 2) * c
        if getattr(mixer, "seq_mix2", None) is not None:
            total += mixer.n_heads * (4 * r + 2) * c
    return total


def forward_flops_per_token(model_cfg, seq_len: int, n_dense: Optional[int] = None) -> float:
    """``2 N + sequence terms``: forward FLOPs per token."""
    if n_dense is None:
        n_dense = dense_params(_meta_model(model_cfg))
    return 2.0 * n_dense + sequence_flops_per_token(model_cfg, seq_len)


def training_flops(model_cfg, tokens: int, seq_len: Optional[int] = None, n_dense: Optional[int] = None) -> float:
    """Estimated FLOPs of training on ``tokens`` tokens in windows of ``seq_len`` (default the
    model's ``max_len``): ``3 x forward = 6 N tokens + 3 x sequence terms x tokens``.

    ``n_dense`` replaces the LanguageModel's own dense count when the trained module is more
    than the LanguageModel (MAD compression's decoder head: ``dense_params(module)``)."""
    seq_len = model_cfg.max_len if seq_len is None else seq_len
    return 3.0 * forward_flops_per_token(model_cfg, seq_len, n_dense) * tokens

"""Probing: the per-token intermediates of each mixer's core for a given input (docs/math.md §2).

``probe(model, tokens)`` runs the model once with a forward pre-hook on each chosen mixer, which
records the mixer's input; each recorded input is then sent again through the layer's own steps
(``begin``, ``core_inputs`` / ``project`` + ``all_keys``) and through the readable core,
``hyper_core_trace`` (the loop of ``hyper_core_reference``) for the Hyper layers and a direct
softmax for softmax attention. The fast paths run unchanged; the hooks exist only inside
``probe`` and are removed when it returns.

Every slot tensor is laid out by lag, (b, heads, T, S) with entry [..., t, l] the slot of key
t - l, NaN where no slot exists (``CoreTrace``); ``flip_layout`` turns it into the key layout
(entry [..., t, j] = key j) and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers import HyperGLU, ReLUAttention, SoftmaxAttention
from ..layers.hyper import _HyperBase
from ..ops import Tables
from ..ops.hyper.layout import table_rows
from ..ops.hyper.precision import compute_dtype
from ..ops.hyper.reference import CoreTrace, hyper_core_trace

__all__ = [
    "InspectError",
    "AttentionTrace",
    "LayerProbe",
    "probe",
    "flip_layout",
    "active_fraction",
    "mixing_operator",
    "mixer_kind",
]


class InspectError(ValueError):
    """A request the probe or the ``inspect`` command cannot serve (unknown layer or head, an
    input too long, a checkpoint it cannot read): the message names the problem."""


class AttentionTrace(NamedTuple):
    """Softmax attention of one layer (docs/math.md §5), laid out by lag like ``CoreTrace``."""

    scores: torch.Tensor  # (b, H, T, S) q . k / sqrt(dk)
    weights: torch.Tensor  # (b, H, T, S) softmax over the visible real keys
    valid: torch.Tensor  # (b, 1, T, S) bool: the slot exists and is a real token
    out: torch.Tensor  # (b, H, T, dv) weights . v


@dataclass
class LayerProbe:
    """What ``probe`` returns for one layer.

    ``heads`` are the readout heads kept, in the order of the trace's head axis; for HyperGLU the
    score tensors (``z``, ``z_mixed``, ``gates[0]``, ``tables[0]``) hold their gate branches
    first, then their scale branches (score heads ``h`` and ``H + h``). ``gates`` are s1, s2
    (b, heads, T, r) and ``tables`` R(1), R(2)'s lag tables, None where a mixing is off (always
    for ReLU and softmax attention). ``x``, ``mask`` and ``sees_bad`` are what the layer's
    ``finish`` needs to turn a full-head ``trace.out`` into the layer's output."""

    layer: int
    kind: str  # "hyperglu", "hypermlp", "relu" or "softmax"
    heads: List[int]
    trace: Union[CoreTrace, AttentionTrace]
    gates: Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]
    tables: Tuple[Optional[Tables], Optional[Tables]]
    layout: str
    x: torch.Tensor
    mask: Optional[torch.Tensor]
    sees_bad: torch.Tensor


def mixer_kind(mixer: nn.Module) -> str:
    """The probe's name for a mixer's family, or an InspectError for a module it cannot probe."""
    if isinstance(mixer, SoftmaxAttention):
        return "softmax"
    if isinstance(mixer, ReLUAttention):
        return "relu"
    if isinstance(mixer, HyperGLU):
        return "hyperglu"
    if isinstance(mixer, _HyperBase):
        return "hypermlp"
    raise InspectError(f"cannot probe a {type(mixer).__name__} mixer (only the library's HyperGLU, HyperMLP, "
                       f"ReLUAttention and SoftmaxAttention)")


# ----------------------------------------------------------------------------- layouts, counts
def flip_layout(x: torch.Tensor, offset: int = 0, fill=float("nan")) -> torch.Tensor:
    """Lag layout <-> key layout of (..., T, S) slot tensors whose rows are the queries at
    positions offset .. offset+T-1: out[..., t, i] = x[..., t, offset + t - i] (key j = t - l and
    lag l = t - j are the same map), ``fill`` where that index is negative (no slot)."""
    t, s = x.shape[-2:]
    pos = torch.arange(offset, offset + t, device=x.device)[:, None]
    idx = pos - torch.arange(s, device=x.device)[None, :]  # (T, S)
    exists = idx >= 0
    out = x.gather(-1, idx.clamp(min=0).expand(x.shape))
    return out.masked_fill(~exists, fill)


def active_fraction(trace: Union[CoreTrace, AttentionTrace]) -> torch.Tensor:
    """(b, H, T): the fraction of a query's real slots that are active (a > 0; for softmax
    attention every weight is positive, so 1). Rows without a real slot give NaN."""
    a = trace.a if isinstance(trace, CoreTrace) else trace.weights
    valid = trace.valid
    active = ((a > 0) & valid).sum(-1)
    return active.to(torch.float32) / valid.sum(-1).to(torch.float32)


def mixing_operator(tables: Tables, gate: torch.Tensor, head: int, n: int, layout: str = "lag") -> Tuple[torch.Tensor, torch.Tensor]:
    """(p (n,), M (n, n)) of one head's mixing over the first n lags for the gate s (r,):
    z' = z + z * p + z M with M = A diag(s) B^T (docs/math.md §2.5), so M[l, l'] is how much the
    score at lag l adds to the one at lag l'. ``layout`` "left" uses its rows for a length-n input."""
    rows = table_rows(layout, n, n)
    a, b, p = (t[head, rows].detach().float() for t in tables)
    return p, (a * gate.float()[None, :]) @ b.T


# ----------------------------------------------------------------------------- the probe
def _check_selection(name: str, chosen: Optional[Sequence[int]], available: int, what: str) -> List[int]:
    if chosen is None:
        return list(range(available))
    chosen = list(chosen)
    bad = [c for c in chosen if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < available]
    if bad:
        raise InspectError(f"unknown {name} {bad[0]!r}: {what} has {available} ({name}s 0-{available - 1})")
    if not chosen or len(set(chosen)) != len(chosen):
        raise InspectError(f"give each {name} once, at least one; got {chosen}")
    return chosen


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise InspectError(f"cannot probe a {type(model).__name__}: expected a LanguageModel (its .blocks[i].mixer)")
    return blocks


def _attention_trace(q, k, v, key_valid, offset: int) -> AttentionTrace:
    """Causal softmax attention computed directly (in float32 for half inputs), by lag."""
    dtype = compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    t, s = q.shape[2], k.shape[2]
    pos = torch.arange(offset, offset + t, device=q.device)[:, None]
    allowed = (torch.arange(s, device=q.device)[None, :] <= pos)[None, None]  # (1, 1, T, S)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # a (padded) query that sees no real key
    out = torch.einsum("bhts,bhsd->bhtd", weights, v)
    valid = allowed.expand(q.shape[0], 1, t, s)
    return AttentionTrace(
        scores=flip_layout(scores.masked_fill(~allowed, 0.0), offset), weights=flip_layout(weights, offset),
        valid=flip_layout(valid, offset, fill=False), out=out,
    )


def _select(trace, kind: str, heads: List[int], n_heads: int):
    """The trace restricted to ``heads`` (readout heads; HyperGLU's score heads h and H + h)."""
    score_heads = heads + [n_heads + h for h in heads] if kind == "hyperglu" else heads
    if isinstance(trace, AttentionTrace):
        picked = trace._replace(scores=trace.scores[:, heads], weights=trace.weights[:, heads], out=trace.out[:, heads])
        return picked, heads
    picked = {f: getattr(trace, f) for f in trace._fields}
    for f in ("z", "z_mixed"):
        picked[f] = picked[f][:, score_heads]
    for f in ("rho", "routed", "magnitude", "a", "weights", "out"):
        if picked[f] is not None:
            picked[f] = picked[f][:, heads]
    return CoreTrace(**picked), score_heads


@torch.no_grad()
def probe(
    model: nn.Module,
    tokens: torch.Tensor,
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    mask: Optional[torch.Tensor] = None,
) -> Dict[int, LayerProbe]:
    """The core's intermediates of ``layers`` (default all) and readout ``heads`` (default all)
    of a LanguageModel for ``tokens`` (B, T), computed by the readable reference path.

    Returns {layer index: ``LayerProbe``}. An unknown layer or head, or an input longer than the
    model's ``max_len``, is an ``InspectError`` raised before any work."""
    blocks = _blocks(model)
    layers = _check_selection("layer", layers, len(blocks), "the model")
    mixers = {i: blocks[i].mixer for i in layers}
    kinds = {i: mixer_kind(m) for i, m in mixers.items()}
    chosen_heads = {i: _check_selection("head", heads, m.n_heads, f"layer {i} ({kinds[i]})") for i, m in mixers.items()}
    if tokens.dim() != 2:
        raise InspectError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}")
    max_len = getattr(getattr(model, "config", None), "max_len", None)
    if max_len is not None and tokens.shape[1] > max_len:
        raise InspectError(f"the input has {tokens.shape[1]} tokens but the model's max_len is {max_len}")

    inputs: Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    def recorder(i):
        def hook(module, args, kwargs):  # the Block calls mixer(x, cache=..., mask=...)
            inputs[i] = (args[0] if args else kwargs["x"], kwargs.get("mask"))
        return hook

    handles = [m.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, m in mixers.items()]
    was_training = model.training
    model.eval()
    try:
        model(tokens, mask=mask)  # no cache: every mixer sees the whole input at offset 0
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    out = {}
    for i, mixer in mixers.items():
        x, layer_mask = inputs[i]
        kind, cfg = kinds[i], mixer.config
        x, offset = mixer.begin(x, None, layer_mask)  # offset 0: no cache
        if kind == "softmax":
            q, k, v = mixer.project(x, offset, None, layer_mask)
            k, v, key_valid, sees_bad = mixer.all_keys(k, v, None, layer_mask)
            trace = _attention_trace(q, k, v, key_valid, offset)
            gates, tables, layout = (None, None), (None, None), "lag"
        else:
            q, k, v, s1, s2, key_valid, sees_bad = mixer.core_inputs(x, offset, None, layer_mask)
            tables = (mixer.seq_mix1.tables() if cfg.mix1 else None, mixer.seq_mix2.tables() if cfg.mix2 else None)
            trace = hyper_core_trace(q, k, v, s1, s2, *tables, glu=mixer.glu, layout=cfg.layout, offset=offset,
                                     eps=cfg.rho_eps, key_valid=key_valid)
            gates, layout = (s1, s2), cfg.layout
        trace_heads = chosen_heads[i]
        trace, score_heads = _select(trace, kind, trace_heads, mixer.n_heads)
        gates = (None if gates[0] is None else gates[0][:, score_heads], None if gates[1] is None else gates[1][:, trace_heads])
        tables = (None if tables[0] is None else Tables(*(t[score_heads] for t in tables[0])),
                  None if tables[1] is None else Tables(*(t[trace_heads] for t in tables[1])))
        out[i] = LayerProbe(layer=i, kind=kind, heads=trace_heads, trace=trace, gates=gates, tables=tables,
                            layout=layout, x=x, mask=layer_mask, sees_bad=sees_bad)
    return out

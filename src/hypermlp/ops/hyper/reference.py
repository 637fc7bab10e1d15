"""Readable reference of the HyperMLP / HyperGLU core (docs/math.md §2.4 - §2.8).

One query position at a time, scores laid out by lag (newest key first), exactly as the math
writes it. Slow (a Python loop over positions) but the ground truth every fast path is tested
against (``chunked.py``, ``decode.py``).

Shapes (``b`` batch, ``Hq`` score heads, ``H`` readout heads; ``Hq = 2H`` for HyperGLU, ``H``
for HyperMLP; ``L`` table rows, ``r`` the rank of a mixing):
    q: (b, Hq, T, dk)   queries at absolute positions offset .. offset+T-1
    k: (b, Hq, S, dk)   keys at positions 0 .. S-1, S = offset + T
    v: (b, H, S, dv)
    s1: (b, Hq, T, r) or None   input-conditioned gate of R(1)
    s2: (b, H, T, r) or None    input-conditioned gate of R(2)
    mix1 / mix2: ``Tables`` (or a plain (A, B, p) tuple) of R(1) / R(2), or None (identity)
    key_valid: (b, S) bool or None (False = padding: the key takes no part in any output)
Returns the per-head readout (b, H, T, dv), already normalised by rho, in q's dtype.
``hyper_core_trace`` runs the same loop and keeps every intermediate (``CoreTrace``).

float16 / bfloat16 inputs are computed in float32 (``precision.py``), like the fast paths.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .layout import check_layout, table_rows
from .precision import autocast_off, compute_dtype


class Tables(NamedTuple):
    """The lag-indexed tables of one DPLR mixing, one set per head (docs/math.md §2.5):
    z' = z + z * p + ((z A) * s) B^T, with row l of A, B and p used for lag l."""

    A: torch.Tensor  # (heads, L, r)
    B: torch.Tensor  # (heads, L, r)
    p: torch.Tensor  # (heads, L)


def dplr_mix(z: torch.Tensor, tables: Tables, gate: torch.Tensor) -> torch.Tensor:
    """z' = z + z * p + ((z A) * s) B^T for z (b, heads, n), tables already sliced to the n rows
    of z's lags and the gate s (b, heads, r)."""
    low_rank = torch.einsum("bhl,hlr->bhr", z, tables.A) * gate  # (b, heads, r)
    return z + z * tables.p + torch.einsum("bhr,hlr->bhl", low_rank, tables.B)


def hyper_core_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s1: Optional[torch.Tensor],
    s2: Optional[torch.Tensor],
    mix1: Optional[Tables],
    mix2: Optional[Tables],
    *,
    glu: bool,
    layout: str = "lag",
    offset: int = 0,
    eps: float = 1e-12,
    key_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The Hyper core, one query at a time; arguments and result as in the module docstring.

    ``layout`` "lag" (the paper's) or "left" (ablation: tables indexed from the end of the
    sequence, see ``layout.table_rows``); ``eps`` inside rho = sqrt(|z|^2 + eps)."""
    check_layout(layout)
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    with autocast_off(q.device):
        q, k, v, s1, s2 = (None if x is None else x.to(dtype) for x in (q, k, v, s1, s2))
        mix1, mix2 = (None if m is None else Tables(*(t.to(dtype) for t in m)) for m in (mix1, mix2))
        return _reference(q, k, v, s1, s2, mix1, mix2, glu, layout, offset, eps, key_valid).to(out_dtype)


class CoreTrace(NamedTuple):
    """Every intermediate of the core for each query, as ``hyper_core_trace`` returns it.

    Slot tensors are (b, heads, T, S) in lag layout: entry [..., t, l] is the slot of lag l
    (key offset + t - l) for the query at position offset + t; lags beyond that position hold no
    slot and are NaN. Padded keys hold the core's zeros; ``valid`` says which slots are real.
    Everything is in the compute dtype (float32 for half inputs, ``precision.py``)."""

    z: torch.Tensor  # (b, Hq, T, S) scores q . k (§2.4)
    z_mixed: torch.Tensor  # (b, Hq, T, S) after R(1) (§2.5); z itself when R(1) is off
    rho: torch.Tensor  # (b, H, T) the L2 norm of the (gate) scores (§2.6)
    routed: torch.Tensor  # (b, H, T, S) ReLU(z' / rho) of the (gate) branch: which slots fire
    magnitude: Optional[torch.Tensor]  # (b, H, T, S) softplus(z') of the scale branch (HyperGLU), else None
    a: torch.Tensor  # (b, H, T, S) activated slots: routed (HyperMLP) or magnitude * routed (HyperGLU)
    weights: torch.Tensor  # (b, H, T, S) final slot weights after R(2) (§2.7); a when R(2) is off
    valid: torch.Tensor  # (b, 1, T, S) bool: the slot exists and is a real token
    out: torch.Tensor  # (b, H, T, dv) the readout, equal to hyper_core_reference's (§2.8)


def hyper_core_trace(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s1: Optional[torch.Tensor],
    s2: Optional[torch.Tensor],
    mix1: Optional[Tables],
    mix2: Optional[Tables],
    *,
    glu: bool,
    layout: str = "lag",
    offset: int = 0,
    eps: float = 1e-12,
    key_valid: Optional[torch.Tensor] = None,
) -> CoreTrace:
    """``hyper_core_reference`` with every intermediate kept (a ``CoreTrace``): the same loop,
    so ``trace.out`` is the reference readout bit for bit. For looking inside a layer
    (``hypermlp.inspect``); arguments as for ``hyper_core_reference``."""
    check_layout(layout)
    dtype = compute_dtype(q.dtype)
    total_len = k.shape[2]
    with autocast_off(q.device):
        q, k, v, s1, s2 = (None if x is None else x.to(dtype) for x in (q, k, v, s1, s2))
        mix1, mix2 = (None if m is None else Tables(*(t.to(dtype) for t in m)) for m in (mix1, mix2))
        steps = list(_steps(q, k, v, s1, s2, mix1, mix2, glu, layout, offset, eps, key_valid))

    def slots(field: str, fill=float("nan")):  # T tensors (b, h, n_t) -> (b, h, T, S), the missing lags filled
        rows = [getattr(step, field) for step in steps]
        return torch.stack([F.pad(x, (0, total_len - x.shape[-1]), value=fill) for x in rows], dim=2)

    return CoreTrace(
        z=slots("z"), z_mixed=slots("z_mixed"),
        rho=torch.stack([step.rho[..., 0] for step in steps], dim=2),
        routed=slots("routed"), magnitude=slots("magnitude") if glu else None, a=slots("a"),
        weights=slots("weights"), valid=slots("valid", fill=0.0) > 0,
        out=torch.stack([step.out for step in steps], dim=2),
    )


class _Step(NamedTuple):
    """The intermediates of one query at position t that sees n = t + 1 keys, by lag."""

    z: torch.Tensor  # (b, Hq, n)
    z_mixed: torch.Tensor  # (b, Hq, n)
    rho: torch.Tensor  # (b, H, 1)
    routed: torch.Tensor  # (b, H, n)
    magnitude: Optional[torch.Tensor]  # (b, H, n) or None
    a: torch.Tensor  # (b, H, n)
    weights: torch.Tensor  # (b, H, n)
    out: torch.Tensor  # (b, H, dv)
    valid: torch.Tensor  # (b, 1, n), 1 at real keys


def _reference(q, k, v, s1, s2, mix1, mix2, glu, layout, offset, eps, key_valid) -> torch.Tensor:
    """The loop of ``hyper_core_reference``, every input already in the compute dtype."""
    steps = _steps(q, k, v, s1, s2, mix1, mix2, glu, layout, offset, eps, key_valid)
    return torch.stack([step.out for step in steps], dim=2)


def _steps(q, k, v, s1, s2, mix1, mix2, glu, layout, offset, eps, key_valid) -> Iterator[_Step]:
    """One query at a time, the math as written: the single loop behind the reference and the
    trace. Yields each query's ``_Step``."""
    batch, _, n_queries, _ = q.shape
    n_heads = v.shape[1]
    total_len = k.shape[2]
    for t in range(n_queries):
        pos = offset + t
        n = pos + 1
        keys = k[:, :, :n].flip(2)  # (b, Hq, n, dk), index = lag
        values = v[:, :, :n].flip(2)  # (b, H, n, dv)
        if key_valid is None:
            valid = torch.ones(batch, 1, n, dtype=q.dtype, device=q.device)
        else:
            valid = key_valid[:, :n].flip(1)[:, None, :].to(q.dtype)  # (b, 1, n)
        rows = table_rows(layout, n, total_len)

        # §2.4 scores by lag
        z = torch.einsum("bhd,bhld->bhl", q[:, :, t], keys) * valid  # (b, Hq, n)
        # §2.5 R(1), then the causal (and padding) mask
        z_mixed = z
        if mix1 is not None:
            z_mixed = dplr_mix(z, Tables(*(tab[:, rows] for tab in mix1)), s1[:, :, t]) * valid
        # §2.6 activation, L2 normalisation over the valid lags
        if glu:
            gate, scale = z_mixed[:, :n_heads], z_mixed[:, n_heads:]
            rho = torch.sqrt((gate * gate).sum(-1, keepdim=True) + eps)
            routed, magnitude = F.relu(gate / rho), F.softplus(scale)
            a = magnitude * routed
        else:
            rho = torch.sqrt((z_mixed * z_mixed).sum(-1, keepdim=True) + eps)
            routed, magnitude = F.relu(z_mixed / rho), None
            a = routed
        a = a * valid  # (b, H, n)
        # §2.7 R(2)
        weights = a
        if mix2 is not None:
            weights = dplr_mix(a, Tables(*(tab[:, rows] for tab in mix2)), s2[:, :, t]) * valid
        # §2.8 readout
        out = torch.einsum("bhl,bhld->bhd", weights, values)  # (b, H, dv)
        yield _Step(z, z_mixed, rho, routed, magnitude, a, weights, out, valid)

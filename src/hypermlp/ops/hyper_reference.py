"""Readable reference of the HyperMLP / HyperGLU core (SPEC.md §2 steps 4-8).

One query position at a time, scores laid out by lag (newest key first), exactly as the spec
writes it. Slow (a Python loop over positions) but the ground truth every fast path is tested
against.

Shapes (``Hq`` score heads, ``H`` readout heads; ``Hq = 2H`` for HyperGLU, ``H`` for HyperMLP):
    q: (B, Hq, T, dk)  queries at absolute positions offset .. offset+T-1
    k: (B, Hq, S, dk)  keys at positions 0 .. S-1, S = offset + T
    v: (B, H, S, dv)
    s1: (B, Hq, T, r) or None   input-conditioned gate of R(1)
    s2: (B, H, T, r) or None    input-conditioned gate of R(2)
    mix1 / mix2: (A, Bm, p) with A, Bm of shape (heads, L, r) and p (heads, L), row = lag; or None
    key_valid: (B, S) bool or None (False = padding: the key takes no part in any output)
Returns the per-head readout (B, H, T, dv), already normalised by rho.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

Tables = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def table_rows(layout: str, n: int, total_len: int) -> slice:
    """Rows of the (lag-indexed) tables used by a query that sees ``n`` keys, in lag order.

    lag layout: lag l uses row l, so the query at position t uses rows 0..t whatever the
    sequence length (Thm 2.3: the operator at length t is the top-left block of any longer one).
    left layout (ablation, ours): the tables are indexed by key position counted back from the
    end of the *current sequence*: key j uses row total_len-1-j. In lag order (key j = t - l) that
    is rows total_len-n .. total_len-1. It depends on the sequence length, which is why it breaks
    truncation invariance and cached decoding; at the last position both layouts coincide.
    """
    if layout == "lag":
        return slice(0, n)
    return slice(total_len - n, total_len)


def dplr_mix(z: torch.Tensor, tables: Tables, gate: torch.Tensor) -> torch.Tensor:
    """z' = z + z * p + ((z A) * s) B^T  for z (B, h, n) and tables already sliced to n rows."""
    a, b, p = tables
    low_rank = torch.einsum("bhl,hlr->bhr", z, a) * gate
    return z + z * p + torch.einsum("bhr,hlr->bhl", low_rank, b)


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
    batch, _, n_queries, _ = q.shape
    n_heads = v.shape[1]
    total_len = k.shape[2]
    outputs = []
    for t in range(n_queries):
        pos = offset + t
        n = pos + 1
        keys = k[:, :, :n].flip(2)  # (B, Hq, n, dk), index = lag
        values = v[:, :, :n].flip(2)  # (B, H, n, dv)
        if key_valid is None:
            valid = torch.ones(batch, 1, n, dtype=q.dtype, device=q.device)
        else:
            valid = key_valid[:, :n].flip(1)[:, None, :].to(q.dtype)
        rows = table_rows(layout, n, total_len)

        # step 4: scores by lag
        z = torch.einsum("bhd,bhld->bhl", q[:, :, t], keys) * valid
        # step 5: R(1), then the causal (and padding) mask
        if mix1 is not None:
            z = dplr_mix(z, tuple(tab[:, rows] for tab in mix1), s1[:, :, t]) * valid
        # step 6: activation, L2 normalisation over the valid lags
        if glu:
            gate, scale = z[:, :n_heads], z[:, n_heads:]
            rho = torch.sqrt((gate * gate).sum(-1, keepdim=True) + eps)
            a = F.softplus(scale) * F.relu(gate / rho)
        else:
            rho = torch.sqrt((z * z).sum(-1, keepdim=True) + eps)
            a = F.relu(z / rho)
        a = a * valid
        # step 7: R(2)
        if mix2 is not None:
            a = dplr_mix(a, tuple(tab[:, rows] for tab in mix2), s2[:, :, t]) * valid
        # step 8: readout
        outputs.append(torch.einsum("bhl,bhld->bhd", a, values))
    return torch.stack(outputs, dim=2)

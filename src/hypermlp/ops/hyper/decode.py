"""One decoded token: the Hyper core for a single query at the end of the keys (docs/math.md §4).

With a cache, each new token is one query at position S-1 against all S cached keys. For a
single query there is nothing to skew: its key layout is its lag layout read backwards. So the
step computes the S scores in key order, reverses only those (heads, b, S) score vectors (never
the cached keys or values), mixes them against the tables as they are (row = lag, no flipped
copies), and reverses them back for the readout. Both layouts use table rows 0..S-1 here: for
the left layout the query is the last position of its sequence (``layout.table_rows``).

float16 / bfloat16 inputs (a half-precision cache) are computed in float32 (``precision.py``):
the step reads q, k and v through one float32 copy and casts its output back.

The readable twin is ``reference.hyper_core_reference`` with T = 1, offset = S-1;
tests/ops/test_hyper_decode.py checks the two against each other. No autograd: ``hyper_core``
sends only no-grad calls here.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .layout import check_layout
from .precision import autocast_off, compute_dtype
from .reference import Tables


def _mix(z: torch.Tensor, tables: Tables, gate: torch.Tensor) -> torch.Tensor:
    """DPLR mixing of one query's scores, lag order (newest first): z (heads, b, n), gate
    (b, heads, 1, r) -> z + z * p + ((z A) * s) B^T (heads, b, n).

    The tables and the gate are sliced to rows 0..n-1 and cast to z's dtype (the compute dtype;
    under autocast the tables arrive in float32 and the gates in half)."""
    n = z.shape[-1]
    A, B, p = (t[:, :n].to(z.dtype) for t in tables)  # (heads, n, r), (heads, n, r), (heads, n)
    us = torch.bmm(z, A).mul_(gate[:, :, 0].transpose(0, 1).to(z.dtype))  # (heads, b, r)
    return torch.addcmul(z, z, p[:, None, :]).baddbmm_(us, B.transpose(1, 2))


def hyper_core_decode(
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
    offset: Optional[int] = None,
    eps: float = 1e-12,
    key_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The core for one query at position S-1, no autograd: q (b, Hq, 1, dk), k (b, Hq, S, dk),
    v (b, H, S, dv), s1 (b, Hq, 1, r), s2 (b, H, 1, r), key_valid (b, S) -> (b, H, 1, dv).

    Arguments as in ``hyper_core_reference``; ``offset`` (if given) must be S-1, and ``layout``
    does not change the result (both layouts coincide at the last position)."""
    check_layout(layout)
    h, s = v.shape[1], k.shape[2]
    if q.shape[2] != 1 or (offset is not None and offset != s - 1):
        raise ValueError(f"decode takes one query at position S-1 = {s - 1}, got T = {q.shape[2]}, offset = {offset}")
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    with torch.no_grad(), autocast_off(q.device):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        z = torch.matmul(q, k.transpose(-1, -2))[:, :, 0].transpose(0, 1).flip(-1)  # (Hq, b, S), lag order
        valid = None if key_valid is None else key_valid[:, :s].flip(-1).to(z.dtype)  # (b, S), lag order
        if valid is not None:
            z.mul_(valid)
        if mix1 is not None:
            z = _mix(z, mix1, s1)
            if valid is not None:
                z.mul_(valid)
        if glu:
            g = z[:h]  # gate branch (H, b, S)
            a = F.softplus(z[h:]).mul_(g).clamp_min_(0)  # softplus(c) * relu(g): softplus > 0
        else:
            g = z
            a = torch.relu(z)
        # normalise now rather than the readout: R(2) and the readout are linear (docs/math.md §2.6)
        a.mul_(torch.linalg.vector_norm(g, dim=-1, keepdim=True).square_().add_(eps).rsqrt_())
        if mix2 is not None:
            a = _mix(a, mix2, s2)
            if valid is not None:
                a.mul_(valid)
        return torch.matmul(a.flip(-1).transpose(0, 1)[:, :, None, :], v).to(out_dtype)  # (b, H, 1, dv)

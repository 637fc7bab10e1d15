"""The Hyper core (HyperMLP / HyperGLU, docs/math.md §2.4 - §2.8): one dispatcher over three twins.

    reference.py  hyper_core_reference  the math as written, one query at a time (ground truth)
    chunked.py    hyper_core_chunked    query blocks with a hand-derived backward (training)
    decode.py     hyper_core_decode     one query at the end of the keys, no grad (cached decoding)
    layout.py     skew / unskew, table_rows: the key and lag layouts both fast paths rely on
    custom_op.py  the chunked core and the decode step as torch.library ops (torch.compile)

README.md in this folder derives the chunked algorithm and its backward.
"""

from __future__ import annotations

from typing import Optional

import torch

from .chunked import hyper_core_chunked
from .custom_op import chunked_op, decode_op
from .decode import hyper_core_decode
from .layout import check_layout, skew, table_rows, unskew
from .reference import Tables, hyper_core_reference

IMPLS = ("reference", "chunked")

__all__ = [
    "IMPLS",
    "Tables",
    "hyper_core",
    "hyper_core_chunked",
    "hyper_core_decode",
    "hyper_core_reference",
    "skew",
    "table_rows",
    "unskew",
]


def _is_decode_step(q, k, offset, tensors) -> bool:
    """One query at the end of the keys (position S-1) that no gradient flows through."""
    if q.shape[2] != 1 or offset != k.shape[2] - 1:
        return False
    return not (torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors))


def hyper_core(
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
    impl: str = "chunked",
    chunk_size: int = 64,
) -> torch.Tensor:
    """The Hyper core: per-head readout (b, H, T, dv), already normalised by rho.

    q (b, Hq, T, dk) at positions offset .. offset+T-1; k (b, Hq, S, dk), v (b, H, S, dv) at
    positions 0 .. S-1 (S = offset + T); s1 (b, Hq, T, r) / s2 (b, H, T, r) the gates and mix1 /
    mix2 the (A, B, p) tables (heads, L, r), (heads, L, r), (heads, L) of R(1) / R(2), or None;
    key_valid (b, S) bool or None (False = padding). ``Hq`` is 2H for HyperGLU (``glu``), H for
    HyperMLP. ``layout`` "lag" or "left" (ablation); ``eps`` inside rho.

    impl="reference": the readable loop (``hyper_core_reference``), whatever the inputs.
    impl="chunked": ``hyper_core_decode`` for one query at the end of the keys when no gradient
    is needed (a cached decoding step), else ``hyper_core_chunked`` in blocks of ``chunk_size``;
    both through their custom ops (``custom_op.py``: one opaque op each for torch.compile).
    """
    check_layout(layout)
    common = dict(glu=glu, layout=layout, offset=offset, eps=eps, key_valid=key_valid)
    if impl == "reference":
        return hyper_core_reference(q, k, v, s1, s2, mix1, mix2, **common)
    if impl != "chunked":
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if _is_decode_step(q, k, offset, (q, k, v, s1, s2, *(mix1 or ()), *(mix2 or ()))):
        return decode_op(q, k, v, s1, s2, mix1, mix2, **common)
    return chunked_op(q, k, v, s1, s2, mix1, mix2, chunk_size=chunk_size, **common)

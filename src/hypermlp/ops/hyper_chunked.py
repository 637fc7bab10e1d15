"""Chunked HyperMLP / HyperGLU core: query blocks, each against its causal prefix only.

Per block of C queries (absolute positions W-C .. W-1) against the W keys before them:

    scores (key layout) --skew--> lag layout --R(1)--> activation --R(2)--> --unskew--> readout

In the lag layout every DPLR mixing is two thin matmuls against the lag-indexed tables, so no
(C, W, r) gather is ever built. The skew is a pad + reshape (each row shifted by its position),
the standard trick of relative-position attention. The activation's normalisation is applied to
the readout (ReLU is positively homogeneous and R(2) and the readout are linear: SPEC §2.6).

Autograd: ``_HyperChunkedFn`` keeps only its inputs; the backward recomputes one block at a time
and back-propagates through it, so training memory grows like T*C, not T^2.
Same argument conventions as ``hyper_reference.hyper_core_reference``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .hyper_reference import Tables, table_rows


def skew(x: torch.Tensor) -> torch.Tensor:
    """Key layout -> reversed-lag layout for a block whose last query sees all W columns.

    out[..., i, m] = x[..., i, m - (C-1-i)] (zero where the index is negative), i.e. column m of
    row i is lag W-1-m (oldest first); keys after the row's own position fall off the end.
    """
    c, w = x.shape[-2:]
    flat = F.pad(x, (c, 0)).flatten(-2)  # rows of width W+C, C zeros in front of each
    flat = F.pad(flat, (0, c + 1))
    return flat[..., 1 : 1 + c * (w + c + 1)].unflatten(-1, (c, w + c + 1))[..., :w]


def unskew(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``skew`` on entries that are zero for lags beyond the row's position."""
    c, w = x.shape[-2:]
    flat = F.pad(x, (0, c)).flatten(-2)  # rows of width W+C
    return flat[..., c - 1 : c - 1 + c * (w + c - 1)].unflatten(-1, (c, w + c - 1))[..., :w]


def _dplr(z: torch.Tensor, tables: Sequence[torch.Tensor], gate: torch.Tensor) -> torch.Tensor:
    a, b, p = tables  # (h, W, r), (h, W, r), (h, W), rows = columns of z
    return z + z * p[:, None, :] + ((z @ a) * gate) @ b.transpose(-1, -2)


def hyper_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s1: Optional[torch.Tensor],
    s2: Optional[torch.Tensor],
    mix1: Optional[Sequence[torch.Tensor]],
    mix2: Optional[Sequence[torch.Tensor]],
    key_valid: Optional[torch.Tensor],
    glu: bool,
    layout: str,
    eps: float,
) -> torch.Tensor:
    """One query block. q: (B, Hq, C, dk) for the last C of W positions; k, v: the W keys/values.

    Tables must be given in this block's mixing orientation: column m of the mixing layout uses
    row m (see ``_block_tables``).
    """
    c, w = q.shape[-2], k.shape[-2]
    rows = torch.arange(c, device=q.device)[:, None]
    cols = torch.arange(w, device=q.device)[None, :]
    mask = (cols <= rows + (w - c))[None, None]  # causal, key layout
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]
    mask = mask.to(q.dtype)

    z = (q @ k.transpose(-1, -2)) * mask
    if layout == "lag":
        z, mask = skew(z), skew(mask)
    if mix1 is not None:
        z = _dplr(z, mix1, s1) * mask
    n_heads = v.shape[1]
    if glu:
        gate, scale = z[:, :n_heads], z[:, n_heads:]
        act = F.softplus(scale) * F.relu(gate)  # zero wherever the gate is masked
    else:
        gate = z
        act = F.relu(z)
    inv_rho = torch.rsqrt((gate * gate).sum(-1, keepdim=True) + eps)
    if mix2 is not None:
        act = _dplr(act, mix2, s2) * mask
    if layout == "lag":
        act = unskew(act)
    return (act @ v) * inv_rho


# ----------------------------------------------------------------------------------------------
# block slicing shared by the forward and the recomputing backward

# positions in the flat input list
Q, K, V, S1, S2, A1, B1, P1, A2, B2, P2 = range(11)


def _block_slices(inputs: List[Optional[torch.Tensor]], t0: int, t1: int, w: int, rows: slice):
    """Views of every input that block [t0, t1) reads (W = number of keys it sees)."""
    out = []
    for idx, x in enumerate(inputs):
        if x is None:
            out.append(None)
        elif idx in (Q, S1, S2):
            out.append(x[:, :, t0:t1])
        elif idx in (K, V):
            out.append(x[:, :, :w])
        else:  # tables, rows along dim 1
            out.append(x[:, rows])
    return out


def _block_tables(tabs):
    # both layouts use the tables with rows reversed: lag layout columns are oldest-lag first,
    # left layout columns are key positions and key j uses row S-1-j.
    return None if tabs[0] is None else tuple(t.flip(1) for t in tabs)


def _run_block(sl, key_valid_w, glu, layout, eps):
    return hyper_block(
        sl[Q], sl[K], sl[V], sl[S1], sl[S2],
        _block_tables(sl[A1:P1 + 1]), _block_tables(sl[A2:P2 + 1]),
        key_valid_w, glu, layout, eps,
    )


def _blocks(n_queries: int, offset: int, total_len: int, chunk_size: int, layout: str):
    for t0 in range(0, n_queries, chunk_size):
        t1 = min(n_queries, t0 + chunk_size)
        w = offset + t1
        yield t0, t1, w, table_rows(layout, w, total_len)


def _forward_no_grad(inputs, key_valid, offset, chunk_size, glu, layout, eps):
    q, v = inputs[Q], inputs[V]
    batch, _, n_queries, _ = q.shape
    out = q.new_empty(batch, v.shape[1], n_queries, v.shape[-1])
    total_len = inputs[K].shape[2]
    for t0, t1, w, rows in _blocks(n_queries, offset, total_len, chunk_size, layout):
        sl = _block_slices(inputs, t0, t1, w, rows)
        kv = None if key_valid is None else key_valid[:, :w]
        out[:, :, t0:t1] = _run_block(sl, kv, glu, layout, eps)
    return out


class _HyperChunkedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, key_valid, meta, *inputs):
        offset, chunk_size, glu, layout, eps = meta
        ctx.meta = meta
        ctx.key_valid = key_valid
        ctx.none_mask = [x is None for x in inputs]
        ctx.save_for_backward(*[x for x in inputs if x is not None])
        with torch.no_grad():
            return _forward_no_grad(list(inputs), key_valid, offset, chunk_size, glu, layout, eps)

    @staticmethod
    def backward(ctx, grad_out):
        offset, chunk_size, glu, layout, eps = ctx.meta
        saved = iter(ctx.saved_tensors)
        inputs = [None if none else next(saved) for none in ctx.none_mask]
        needs = ctx.needs_input_grad[2:]
        grads = [torch.zeros_like(x) if (x is not None and need) else None for x, need in zip(inputs, needs)]
        total_len = inputs[K].shape[2]
        n_queries = inputs[Q].shape[2]
        for t0, t1, w, rows in _blocks(n_queries, offset, total_len, chunk_size, layout):
            views = _block_slices(inputs, t0, t1, w, rows)
            leaves = [None if x is None else x.detach().requires_grad_(need) for x, need in zip(views, needs)]
            kv = None if ctx.key_valid is None else ctx.key_valid[:, :w]
            with torch.enable_grad():
                out = _run_block(leaves, kv, glu, layout, eps)
                wanted = [i for i, x in enumerate(leaves) if x is not None and x.requires_grad]
                block_grads = torch.autograd.grad(out, [leaves[i] for i in wanted], grad_out[:, :, t0:t1])
            for i, g in zip(wanted, block_grads):
                _block_slices_of(grads, i, t0, t1, w, rows).add_(g)
        return (None, None, *grads)


def _block_slices_of(tensors, idx, t0, t1, w, rows):
    one = [None] * len(tensors)
    one[idx] = tensors[idx]
    return _block_slices(one, t0, t1, w, rows)[idx]


def hyper_core_chunked(
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
    chunk_size: int = 64,
) -> torch.Tensor:
    m1 = (None, None, None) if mix1 is None else tuple(mix1)
    m2 = (None, None, None) if mix2 is None else tuple(mix2)
    inputs = [q, k, v, s1, s2, *m1, *m2]
    if mix1 is None:
        inputs[S1] = None
    if mix2 is None:
        inputs[S2] = None
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    meta = (offset, chunk_size, glu, layout, eps)
    if needs_grad:
        return _HyperChunkedFn.apply(key_valid, meta, *inputs)
    return _forward_no_grad(inputs, key_valid, offset, chunk_size, glu, layout, eps)

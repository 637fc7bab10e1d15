"""Chunked HyperMLP / HyperGLU core: query blocks, each against its causal prefix only.

Per block of C queries (absolute positions W-C .. W-1) against the W keys before them:

    scores --skew--> lag layout --R(1)--> activation --R(2)--> --unskew--> readout, * 1/rho

The derivation, with pictures, is in README.md next to this file; in short:

* In the lag layout every DPLR mixing is two thin matmuls against a slice of the tables, so no
  (C, W, r) gather is ever built (``layout.table_cols``). The tables are reversed once per call.
* The skew and the unskew cost nothing: they are strided views (``layout.skew_view``,
  ``layout.unskew_view``) of buffers arranged so that the spare entries they read are zero.
* The normalisation 1/rho is applied to the readout, not the scores: ReLU is positively
  homogeneous and R(2) and the readout are linear (docs/math.md §2.6).
* Everything is head-major, (heads, b, rows, cols), so a mixing is one batched matmul per head
  against that head's table, with no broadcast copy of the tables.
* Masks are ``masked_fill_`` of the C*(C-1)/2 triangle, not a multiply by a full mask, unless
  key padding is given; HyperGLU masks only its gate branch (the scale branch is multiplied by
  relu(gate)); softplus(c) * relu(g) is max(softplus(c) * g, 0), computed in place.
* A block lives in a handful of (heads, b, C, W) buffers: intermediates are overwritten or freed
  as soon as they are dead, so the allocator hands the same buffers round again.

Autograd (``_HyperChunked``): the forward saves the head-major inputs, the reversed tables, the
raw readout, 1/rho and z A of each mixing (all linear in T). The backward recomputes one block at
a time and applies a hand-derived gradient of every step (README.md, "The backward"): nothing of
size T^2 is stored and autograd never sees a block.

Precision (``precision.py``, README.md "Precision"): float16 / bfloat16 inputs are cast to float32
once per call (``_prepare``), everything above runs in float32, and the output and the gradients
are cast back to the inputs' dtypes; float32 and float64 run as they are.

The readable twin is ``reference.hyper_core_reference``; tests/ops/test_hyper_chunked.py checks
outputs and every gradient against it in float64 and runs ``gradcheck`` on this backward.
Shapes: ``b`` batch, ``Hq`` score heads, ``H`` readout heads, ``heads`` either, ``T`` queries,
``S`` keys, ``C`` queries and ``W`` keys of a block, ``r`` the rank of a mixing. The *mixing
layout* of a block is the lag layout for layout="lag" and the key layout for "left" (whose tables
are indexed by key position, so it needs no skew).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .layout import (
    check_layout,
    clear_for_unskew,
    lag_block,
    pad_rows,
    skew,
    skew_view,
    table_cols,
    unskew_view,
    zero_future_keys,
    zero_future_lags,
)
from .precision import autocast_off, compute_dtype
from .reference import Tables

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# what one call works with


def _tables_or_none(A, B, p) -> Optional[Tables]:
    return None if A is None else Tables(A, B, p)


class CoreArgs(NamedTuple):
    """The differentiable operands of the core in the public order, or anything with their
    structure (their gradients, their ``requires_grad`` flags). ``flat`` / ``from_flat`` are the
    one place that knows the order autograd sees them in."""

    q: Tensor  # (b, Hq, T, dk)
    k: Tensor  # (b, Hq, S, dk)
    v: Tensor  # (b, H, S, dv)
    s1: Optional[Tensor]  # (b, Hq, T, r)
    s2: Optional[Tensor]  # (b, H, T, r)
    mix1: Optional[Tables]  # (Hq, L, r), (Hq, L, r), (Hq, L)
    mix2: Optional[Tables]  # (H, L, r), (H, L, r), (H, L)

    def flat(self) -> tuple:
        none3 = (None, None, None)
        return (self.q, self.k, self.v, self.s1, self.s2, *(self.mix1 or none3), *(self.mix2 or none3))

    @classmethod
    def from_flat(cls, xs) -> "CoreArgs":
        q, k, v, s1, s2, A1, B1, p1, A2, B2, p2 = xs
        return cls(q, k, v, s1, s2, _tables_or_none(A1, B1, p1), _tables_or_none(A2, B2, p2))


@dataclass(frozen=True)
class Settings:
    """The non-tensor arguments of one call."""

    glu: bool
    layout: str  # "lag" or "left"
    offset: int  # absolute position of the first query
    eps: float  # inside rho = sqrt(|z|^2 + eps)
    chunk: int  # queries per block

    @property
    def lag(self) -> bool:
        return self.layout == "lag"

    @property
    def pad(self) -> int:
        """Zero rows in front of the keys and values: C-1 for the largest block in the lag layout,
        so that every block's score matmul is the zero-padded block ``skew_view`` reads."""
        return self.chunk - 1 if self.lag else 0


class Mixing(NamedTuple):
    """One DPLR mixing made ready for the blocks: head-major, the tables reversed once per call
    (row x of a reversed table is row S-1-x of the table, see ``layout.table_cols``)."""

    tables: Tables  # reversed: (heads, S, r), (heads, S, r), (heads, S)
    one_plus_p: Tensor  # (heads, 1, 1, S): the diagonal as one factor, broadcast over a block
    gate: Tensor  # s: (heads, b, T, r)


class Operands(NamedTuple):
    """One call's inputs made ready for the blocks: head-major copies in the compute dtype of the
    queries' dtype (``precision.compute_dtype``: float32 for half inputs; under autocast the
    tables arrive in float32, the projections in half)."""

    q: Tensor  # (Hq, b, T, dk)
    k_pad: Tensor  # (Hq, b, pad+S, dk): the keys behind ``Settings.pad`` zero rows
    v_pad: Tensor  # (H, b, pad+S, dv): the values likewise (the gradient's skew needs them)
    mix1: Optional[Mixing]
    mix2: Optional[Mixing]
    key_valid: Optional[Tensor]  # (b, S) bool
    pad: int

    @property
    def k(self) -> Tensor:  # (Hq, b, S, dk)
        return self.k_pad[:, :, self.pad :]

    @property
    def v(self) -> Tensor:  # (H, b, S, dv)
        return self.v_pad[:, :, self.pad :]


def _mixing(tables: Optional[Tables], gate: Optional[Tensor], total: int, dtype) -> Optional[Mixing]:
    """Public tables (heads, L, r) x2, (heads, L) and gate (b, heads, T, r) -> ``Mixing``."""
    if tables is None:
        return None
    rev = Tables(*(t[:, :total].flip(1).to(dtype).contiguous() for t in tables))
    return Mixing(rev, (rev.p + 1)[:, None, None, :], gate.transpose(0, 1).to(dtype).contiguous())


def _prepare(args: CoreArgs, key_valid: Optional[Tensor], st: Settings) -> Operands:
    """Public (b, heads, ., .) inputs -> ``Operands`` (one copy of each, in the compute dtype)."""
    dtype, total = compute_dtype(args.q.dtype), args.k.shape[2]
    return Operands(
        q=args.q.transpose(0, 1).to(dtype).contiguous(),
        k_pad=pad_rows(args.k.transpose(0, 1), st.pad, dtype),
        v_pad=pad_rows(args.v.transpose(0, 1), st.pad, dtype),
        mix1=_mixing(args.mix1, args.s1, total, dtype),
        mix2=_mixing(args.mix2, args.s2, total, dtype),
        key_valid=key_valid,
        pad=st.pad,
    )


class Block(NamedTuple):
    """One block of queries: t0 .. t1-1 of the call, against keys 0 .. w-1."""

    t0: int
    t1: int
    w: int  # = offset + t1: the keys the block's last query sees
    cols: slice  # rows of the reversed tables its W columns use

    @property
    def c(self) -> int:
        return self.t1 - self.t0


def _blocks(st: Settings, n_queries: int, total: int) -> Iterator[Block]:
    """The call's T = n_queries queries in blocks of ``st.chunk`` (the last one may be shorter),
    against S = total keys."""
    for t0 in range(0, n_queries, st.chunk):
        t1 = min(n_queries, t0 + st.chunk)
        w = st.offset + t1
        yield Block(t0, t1, w, table_cols(st.layout, w, total))


# ----------------------------------------------------------------------------------------------
# layout-aware pieces of a block: the lag layout skews, the left layout mixes in the key layout


def _scores(x: Tensor, keys_pad: Tensor, blk: Block, st: Settings) -> Tensor:
    """x (n, b, C, d) against the block's W keys (``keys_pad`` (n, b, pad+S, d)) -> the mixing
    layout (n, b, C, W), entries beyond each row's position zero.

    Lag layout: the matmul against the C-1 zero rows before the keys and the W keys is the
    zero-padded key-layout block (C, C-1+W), which ``skew_view`` reads as the lag layout: the
    skew is free and the zero rows already zero the lags beyond each row's position."""
    c, w = blk.c, blk.w
    if not st.lag:
        z = torch.matmul(x, keys_pad[:, :, :w].transpose(-1, -2))
        zero_future_keys(z)
        return z
    start = st.pad - (c - 1)
    return skew_view(torch.matmul(x, keys_pad[:, :, start : start + w + c - 1].transpose(-1, -2)))


def _new_block(like: Tensor, heads: int, st: Settings) -> Tensor:
    """An uninitialised mixing-layout block (heads, b, C, W) like ``like`` (n, b, C, W) that
    ``_key_view`` can read: in the lag layout a ``layout.lag_block``."""
    shape = (heads, *like.shape[1:])
    return lag_block(like, shape) if st.lag else like.new_empty(shape)


def _zero_invalid(z: Tensor, st: Settings, for_readout: bool = False) -> None:
    """In place, z (heads, b, C, W): zero the entries beyond each row's position; with
    ``for_readout`` also what ``_key_view`` reads besides them (z from ``_new_block``)."""
    if not st.lag:
        zero_future_keys(z)
    elif for_readout:
        clear_for_unskew(z)
    else:
        zero_future_lags(z)


def _key_view(z: Tensor, st: Settings) -> Tensor:
    """Mixing layout (heads, b, C, W) -> key layout, a view; z must be from ``_new_block`` and
    cleared by ``_zero_invalid(for_readout=True)``. The unskew is free."""
    return unskew_view(z) if st.lag else z


def _padding_mask(ops: Operands, blk: Block, st: Settings) -> Optional[Tensor]:
    """Key padding in the mixing layout, (1, b, C, W) of 0/1 with the future zero too, or None."""
    if ops.key_valid is None:
        return None
    batch, c, w = ops.q.shape[1], blk.c, blk.w
    kv = ops.key_valid[:, :w].to(ops.q.dtype)[:, None, :].expand(batch, c, w)[None]  # key layout
    if st.lag:
        return skew(kv.contiguous())
    mask = kv.clone()
    zero_future_keys(mask)
    return mask


def _mask(z: Tensor, mask: Optional[Tensor], st: Settings, for_readout: bool = False) -> None:
    """In place: the causal mask (``_zero_invalid``), then the key padding."""
    _zero_invalid(z, st, for_readout)
    if mask is not None:
        z.mul_(mask)


# ----------------------------------------------------------------------------------------------
# block matmuls against the tables


def _rows(x: Tensor) -> Tensor:
    """(heads, b, C, n) -> (heads, b*C, n), a view (for a tensor written in place)."""
    return x.view(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def _mergeable(x: Tensor) -> bool:
    """Whether (heads, b, C, n) can be viewed as (heads, b*C, n): not for ``skew_view`` results."""
    return x.stride(1) == x.shape[2] * x.stride(2)


def _times_table(z: Tensor, table: Tensor) -> Tensor:
    """z (heads, b, C, W) @ table (heads, W, r) -> (heads, b*C, r), one matmul per head."""
    if _mergeable(z):
        return torch.bmm(_rows(z), table)
    heads, batch, c, _ = z.shape
    return torch.matmul(z, table[:, None]).view(heads, batch * c, -1)


def _table_grad(z: Tensor, g: Tensor) -> Tensor:
    """The sum over (b, C) of z^T g: z (heads, b, C, W), g (heads, b*C, r) -> (heads, W, r)."""
    if _mergeable(z):
        return torch.bmm(_rows(z).transpose(1, 2), g)
    heads, batch, c, _ = z.shape
    return torch.matmul(z.transpose(-1, -2), g.view(heads, batch, c, -1)).sum(1)


# ----------------------------------------------------------------------------------------------
# forward


class MixOut(NamedTuple):
    """A mixing's output and the two (., r) products its backward reads."""

    out: Tensor  # z' (heads, b, C, W)
    u: Tensor  # z A (heads, b, C, r)
    us: Tensor  # (z A) * s (heads, b*C, r)


def _mix_forward(z: Tensor, mix: Mixing, blk: Block, out: Tensor, u: Optional[Tensor] = None) -> MixOut:
    """DPLR mixing of a block in the mixing layout, not masked: z (heads, b, C, W) ->
    out = z * (1+p) + ((z A) * s) B^T, two thin matmuls against the tables' W rows.

    ``out`` may be ``z`` itself when that is mergeable (in place); ``u`` = z A (heads, b, C, r)
    when already known (saved by the forward, so the backward's recompute skips one matmul)."""
    A, B = mix.tables.A[:, blk.cols], mix.tables.B[:, blk.cols]  # (heads, W, r)
    gate = mix.gate[:, :, blk.t0 : blk.t1]  # (heads, b, C, r)
    if u is None:  # before z may be overwritten
        u = _times_table(z, A).view(gate.shape)
    us = _rows(u * gate)
    torch.mul(z, mix.one_plus_p[..., blk.cols], out=out)
    _rows(out).baddbmm_(us, B.transpose(1, 2))
    return MixOut(out, u, us)


def _inv_rho(g: Tensor, eps: float) -> Tensor:
    """1 / sqrt(|g|^2 + eps) over the lags: g (heads, b, C, W) -> (heads, b, C)."""
    return torch.linalg.vector_norm(g, dim=-1).square_().add_(eps).rsqrt_()


def _block_forward(ops: Operands, st: Settings, blk: Block, u1: Optional[Tensor], u2: Optional[Tensor]):
    """Raw readout (H, b, C, dv) and 1/rho (H, b, C) of one block. ``u1`` / ``u2``: buffers
    (heads, b, T, r) that receive z A of each mixing for the backward, or None."""
    h, t0, t1 = ops.v.shape[0], blk.t0, blk.t1
    mask = _padding_mask(ops, blk, st)
    z = _scores(ops.q[:, :, t0:t1], ops.k_pad, blk, st)  # (Hq, b, C, W), mixing layout
    if mask is not None:
        z.mul_(mask)
    if ops.mix1 is not None:
        # in place where z is a plain buffer (left layout); a skew_view result is not
        mixed = _mix_forward(z, ops.mix1, blk, out=z if _mergeable(z) else z.new_empty(z.shape))
        z = mixed.out
        if u1 is not None:
            u1[:, :, t0:t1] = mixed.u
        del mixed
        # GLU: only the gate branch needs the mask (the scale branch is multiplied by relu(gate))
        _mask(z[:h] if st.glu else z, mask, st)
    # y: R(2)'s output (or the activation when R(2) is off), read out through the key view
    y = _new_block(z, h, st)  # (H, b, C, W)
    act_out = y if ops.mix2 is None else None
    if st.glu:
        g = z[:h]
        act = F.softplus(z[h:])
        # softplus > 0, so softplus(c) * relu(g) = max(softplus(c) * g, 0): no relu temporary
        act = torch.mul(act, g, out=act if act_out is None else act_out).clamp_min_(0)
    else:
        g = z
        act = torch.relu(g) if act_out is None else torch.clamp_min(g, 0, out=act_out)
    inv_rho = _inv_rho(g, st.eps)
    del z, g
    if ops.mix2 is not None:
        u = _mix_forward(act, ops.mix2, blk, out=y).u
        if u2 is not None:
            u2[:, :, t0:t1] = u
        del act
        _mask(y, mask, st, for_readout=True)
    else:
        _zero_invalid(y, st, for_readout=True)
    return torch.matmul(_key_view(y, st), ops.v[:, :, : blk.w]), inv_rho


class ForwardOut(NamedTuple):
    """The forward of a whole call."""

    o_raw: Tensor  # (H, b, T, dv): the readout before 1/rho
    inv_rho: Tensor  # (H, b, T)
    u1: Optional[Tensor]  # z A of R(1) (Hq, b, T, r), when kept for the backward
    u2: Optional[Tensor]  # z A of R(2) (H, b, T, r)


def _forward(ops: Operands, st: Settings, keep_u: bool) -> ForwardOut:
    """All blocks, one after the other; ``keep_u``: keep z A of each mixing (for the backward)."""
    hq, batch, n_queries, _ = ops.q.shape
    h, _, _, dv = ops.v.shape
    o_raw = ops.v.new_empty(h, batch, n_queries, dv)
    inv_rho = ops.v.new_empty(h, batch, n_queries)

    def u_buffer(mix: Optional[Mixing], heads: int) -> Optional[Tensor]:
        return ops.q.new_empty(heads, batch, n_queries, mix.gate.shape[-1]) if keep_u and mix is not None else None

    u1, u2 = u_buffer(ops.mix1, hq), u_buffer(ops.mix2, h)
    for blk in _blocks(st, n_queries, ops.k.shape[2]):
        o_raw[:, :, blk.t0 : blk.t1], inv_rho[:, :, blk.t0 : blk.t1] = _block_forward(ops, st, blk, u1, u2)
    return ForwardOut(o_raw, inv_rho, u1, u2)


# ----------------------------------------------------------------------------------------------
# hand-derived backward of one block (README.md, "The backward"), recomputing its forward


def _mix_backward(d_out: Tensor, z_in: Tensor, mix_out: MixOut, mix: Mixing, blk: Block,
                  table_grads: Tables, out: Tensor, scratch: Tensor) -> Tensor:
    """Backward of z' = z * (1+p) + ((z A) * s) B^T, for upstream d_out = dL/dz' (heads, b, C, W),
    already masked. Adds the table gradients into ``table_grads`` (reversed coordinates, entries
    None when not needed):

        dp = sum_(b,C) dz' * z,   dB = sum_(b,C) dz'^T (u s),   dA = sum_(b,C) z^T ((dz' B) * s)

    writes dz = dz' * (1+p) + ((dz' B) * s) A^T into ``out`` (which may be z's buffer: z is read
    before) and returns ds = (dz' B) * u (heads, b, C, r). ``scratch`` is a free buffer shaped
    like d_out."""
    A, B = mix.tables.A[:, blk.cols], mix.tables.B[:, blk.cols]  # (heads, W, r)
    gate = mix.gate[:, :, blk.t0 : blk.t1]  # (heads, b, C, r)
    if table_grads.p is not None:
        table_grads.p[:, blk.cols].add_(torch.mul(d_out, z_in, out=scratch).sum(dim=(1, 2)))
    d_us = _times_table(d_out, B)  # dz' B (heads, b*C, r)
    if table_grads.B is not None:
        table_grads.B[:, blk.cols].add_(_table_grad(d_out, mix_out.us))
    d_us = d_us.view(gate.shape)
    d_u = _rows(d_us * gate)  # (heads, b*C, r)
    d_gate = d_us * mix_out.u
    if table_grads.A is not None:
        table_grads.A[:, blk.cols].add_(_table_grad(z_in, d_u))
    torch.mul(d_out, mix.one_plus_p[..., blk.cols], out=out)
    _rows(out).baddbmm_(d_u, A.transpose(1, 2))
    return d_gate


class Recomputed(NamedTuple):
    """A block's forward intermediates, as the backward needs them (mixing layout)."""

    z0: Tensor  # scores, masked (Hq, b, C, W)
    z1: Tensor  # R(1)'s output, masked (z0 when R(1) is off)
    mix1: Optional[MixOut]
    act: Tensor  # the activation before 1/rho (H, b, C, W)
    softplus: Optional[Tensor]  # GLU: softplus of the scale branch (H, b, C, W)
    y: Tensor  # R(2)'s output (act when R(2) is off), cleared for the key view
    mix2: Optional[MixOut]


def _recompute(ops: Operands, st: Settings, blk: Block, mask: Optional[Tensor],
               u1: Optional[Tensor], u2: Optional[Tensor]) -> Recomputed:
    """The block's forward again, keeping z0, z1, act and softplus in their own buffers (the
    forward overwrites them) and reusing the saved z A of each mixing."""
    h, t0, t1 = ops.v.shape[0], blk.t0, blk.t1
    z0 = _scores(ops.q[:, :, t0:t1], ops.k_pad, blk, st)
    if mask is not None:
        z0.mul_(mask)
    m1 = None
    z1 = z0
    if ops.mix1 is not None:
        m1 = _mix_forward(z0, ops.mix1, blk, out=z0.new_empty(z0.shape), u=u1[:, :, t0:t1])
        z1 = m1.out
        _mask(z1[:h] if st.glu else z1, mask, st)  # as in the forward
    y = _new_block(z1, h, st)
    act_out = None if ops.mix2 is not None else y
    sp = None
    if st.glu:
        sp = F.softplus(z1[h:])
        act = torch.mul(sp, z1[:h], out=act_out).clamp_min_(0)
    else:
        act = torch.relu(z1) if act_out is None else torch.clamp_min(z1, 0, out=act_out)
    m2 = None
    if ops.mix2 is not None:
        m2 = _mix_forward(act, ops.mix2, blk, out=y, u=u2[:, :, t0:t1])
        _mask(y, mask, st, for_readout=True)
    else:
        _zero_invalid(y, st, for_readout=True)
    return Recomputed(z0, z1, m1, act, sp, y, m2)


_threshold_bwd = torch.ops.aten.threshold_backward.grad_input  # grad * (x > threshold), with out=
_softplus_bwd = torch.ops.aten.softplus_backward.grad_input  # grad * sigmoid(x) below threshold


def _block_backward(ops: Operands, st: Settings, blk: Block, d_out: Tensor, o_raw: Tensor,
                    inv_rho: Tensor, u1: Optional[Tensor], u2: Optional[Tensor], grads: CoreArgs) -> None:
    """Adds this block's part of every gradient into ``grads`` (head-major buffers, tables in
    reversed coordinates, None where not needed). d_out, o_raw: (H, b, C, dv); inv_rho (H, b, C);
    u1, u2 as saved by the forward. The forward's steps in reverse; each dead buffer takes the
    next result."""
    h, hq, batch, c, w = ops.v.shape[0], ops.q.shape[0], ops.q.shape[1], blk.c, blk.w
    mask = _padding_mask(ops, blk, st)
    fw = _recompute(ops, st, blk, mask, u1, u2)
    z0, z1, sp, act, y = fw.z0, fw.z1, fw.softplus, fw.act, fw.y
    mix1_out, mix2_out = fw.mix1, fw.mix2
    del fw  # the locals are freed one by one as they die

    # -- readout: out = (unskew(y) @ v) * inv_rho
    d_inv = (d_out * o_raw).sum(-1)  # (H, b, C)
    d_o = d_out * inv_rho[..., None]  # gradient of the raw readout (H, b, C, dv)
    if grads.v is not None:  # dv += unskew(y)^T d_o
        y_key = _key_view(y, st)
        gv = grads.v[:, :, :w].view(h * batch, w, -1)
        gv.baddbmm_(y_key.reshape(h * batch, c, w).transpose(1, 2), d_o.reshape(h * batch, c, -1))
        del y_key
    # dy = skew(d_o v^T): the adjoint of the readout's unskew, free by the same matmul as the scores
    d_y = _scores(d_o, ops.v_pad, blk, st)  # (H, b, C, W)
    if mask is not None:
        d_y.mul_(mask)

    # -- R(2): y's buffer is free now; act's takes d_act once the table gradients have read act
    if ops.mix2 is not None:
        d_s2 = _mix_backward(d_y, act, mix2_out, ops.mix2, blk, grads.mix2, out=act, scratch=y)
        if grads.s2 is not None:
            grads.s2[:, :, blk.t0 : blk.t1] = d_s2
        d_act = act
    else:
        d_act = d_y
    del y, d_y, act, mix2_out

    # -- activation and 1/rho. out also depends on the gate branch g through
    # inv_rho = (|g|^2 + eps)^(-1/2), d inv_rho / d g = -inv_rho^3 g
    coef = (d_inv * inv_rho.pow(3)).neg_()[..., None]  # (H, b, C, 1)
    # without R(1), d_z1 is d_z0 itself, which is read through the key view
    d_z1 = z1.new_empty(z1.shape) if ops.mix1 is not None else _new_block(z1, hq, st)  # (Hq, b, C, W)
    g = z1[:h] if st.glu else z1
    if st.glu:  # act = softplus(sc) * relu(g)
        d_g = torch.mul(d_act, sp, out=d_z1[:h])
        _threshold_bwd(d_g, g, 0, grad_input=d_g)  # * (g > 0)
        d_g.addcmul_(g, coef)
        d_sc = torch.mul(d_act, g, out=d_z1[h:])
        _threshold_bwd(d_sc, g, 0, grad_input=d_sc)  # d_act * relu(g)
        _softplus_bwd(d_sc, z1[h:], 1, 20, grad_input=d_sc)  # * sigmoid(sc), F.softplus's threshold
        del d_sc
    else:  # act = relu(g)
        d_g = _threshold_bwd(d_act, g, 0, grad_input=d_z1)
        d_g.addcmul_(g, coef)
    # d_z1 is zero wherever z1 is masked: every term there carries a factor g or (g > 0)
    del d_act, sp, g, d_g
    if ops.mix1 is None:
        _zero_invalid(d_z1, st, for_readout=True)  # its spare column

    # -- R(1)
    if ops.mix1 is not None:
        d_z0 = _new_block(z1, hq, st)
        d_s1 = _mix_backward(d_z1, z0, mix1_out, ops.mix1, blk, grads.mix1, out=d_z0, scratch=z1)
        if grads.s1 is not None:
            grads.s1[:, :, blk.t0 : blk.t1] = d_s1
        _mask(d_z0, mask, st, for_readout=True)
    else:
        d_z0 = d_z1
    del z0, z1, d_z1, mix1_out
    d_s = _key_view(d_z0, st)  # (Hq, b, C, W): the unskew, adjoint of the scores' skew

    # -- scores = q k^T, key layout
    if grads.q is not None:
        grads.q[:, :, blk.t0 : blk.t1] = torch.matmul(d_s, ops.k[:, :, :w])
    if grads.k is not None:  # dk += d_s^T q
        gk = grads.k[:, :, :w].view(hq * batch, w, -1)
        gk.baddbmm_(d_s.reshape(hq * batch, c, w).transpose(1, 2), ops.q[:, :, blk.t0 : blk.t1].reshape(hq * batch, c, -1))


# ----------------------------------------------------------------------------------------------
# autograd


class _Saved(NamedTuple):
    """What the forward keeps for the backward, all linear in T (head-major, tables reversed)."""

    q: Tensor
    k_pad: Tensor
    v_pad: Tensor
    s1: Optional[Tensor]
    s2: Optional[Tensor]
    A1: Optional[Tensor]
    B1: Optional[Tensor]
    p1: Optional[Tensor]
    A2: Optional[Tensor]
    B2: Optional[Tensor]
    p2: Optional[Tensor]
    u1: Optional[Tensor]  # z A of each mixing (heads, b, T, r)
    u2: Optional[Tensor]
    o_raw: Tensor  # (H, b, T, dv)
    inv_rho: Tensor  # (H, b, T)


def _saved(ops: Operands, fwd: ForwardOut) -> _Saved:
    m1 = ops.mix1.tables if ops.mix1 is not None else (None, None, None)
    m2 = ops.mix2.tables if ops.mix2 is not None else (None, None, None)
    return _Saved(ops.q, ops.k_pad, ops.v_pad,
                  None if ops.mix1 is None else ops.mix1.gate, None if ops.mix2 is None else ops.mix2.gate,
                  *m1, *m2, fwd.u1, fwd.u2, fwd.o_raw, fwd.inv_rho)


def _operands_from(saved: _Saved, key_valid: Optional[Tensor], st: Settings) -> Operands:
    def mixing(A, B, p, gate):
        return None if A is None else Mixing(Tables(A, B, p), (p + 1)[:, None, None, :], gate)

    return Operands(saved.q, saved.k_pad, saved.v_pad, mixing(saved.A1, saved.B1, saved.p1, saved.s1),
                    mixing(saved.A2, saved.B2, saved.p2, saved.s2), key_valid, st.pad)


def _grad_buffers(ops: Operands, needs: CoreArgs) -> CoreArgs:
    """Head-major gradient buffers for the inputs that need one (else None). q and the gates are
    written block by block; k, v and the tables accumulate over blocks."""
    q = ops.q

    def table_grads(mix: Optional[Mixing], flags: Tables) -> Optional[Tables]:
        if mix is None:
            return None
        return Tables(*(q.new_zeros(t.shape) if need else None for t, need in zip(mix.tables, flags)))

    return CoreArgs(
        q=q.new_empty(q.shape) if needs.q else None,
        k=q.new_zeros(ops.k.shape) if needs.k else None,
        v=q.new_zeros(ops.v.shape) if needs.v else None,
        s1=q.new_empty(ops.mix1.gate.shape) if ops.mix1 is not None and needs.s1 else None,
        s2=q.new_empty(ops.mix2.gate.shape) if ops.mix2 is not None and needs.s2 else None,
        mix1=table_grads(ops.mix1, needs.mix1),
        mix2=table_grads(ops.mix2, needs.mix2),
    )


def _public_grads(grads: CoreArgs, specs: CoreArgs, total: int) -> CoreArgs:
    """Head-major gradients -> the inputs' layout and dtype; ``specs``: (shape, dtype) of each
    input. Table gradients go from reversed coordinates back to table rows, zero beyond the S
    rows this call used."""

    def tensor(g, spec):  # (heads, b, ., .) -> (b, heads, ., .)
        return None if g is None else g.transpose(0, 1).to(spec[1])

    def table(g, spec):
        if g is None:
            return None
        full = g.new_zeros(spec[0], dtype=spec[1])
        full[:, :total] = g.flip(1)
        return full

    def tables(gs, specs):
        return None if gs is None else Tables(*(table(g, sp) for g, sp in zip(gs, specs)))

    return CoreArgs(tensor(grads.q, specs.q), tensor(grads.k, specs.k), tensor(grads.v, specs.v),
                    tensor(grads.s1, specs.s1), tensor(grads.s2, specs.s2),
                    tables(grads.mix1, specs.mix1), tables(grads.mix2, specs.mix2))


class _HyperChunked(torch.autograd.Function):
    """The chunked core with its hand-derived backward; inputs: settings, key_valid, then
    ``CoreArgs.flat()`` (autograd tracks only direct tensor arguments)."""

    @staticmethod
    def forward(ctx, st: Settings, key_valid: Optional[Tensor], *flat: Optional[Tensor]) -> Tensor:
        ops = _prepare(CoreArgs.from_flat(flat), key_valid, st)
        fwd = _forward(ops, st, keep_u=True)
        ctx.settings, ctx.key_valid = st, key_valid
        ctx.specs = CoreArgs.from_flat([None if x is None else (x.shape, x.dtype) for x in flat])
        ctx.save_for_backward(*_saved(ops, fwd))
        return _output(fwd, flat[0].dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        with autocast_off(grad_out.device):
            return _HyperChunked._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        st = ctx.settings
        saved = _Saved(*ctx.saved_tensors)
        ops = _operands_from(saved, ctx.key_valid, st)
        fwd = ForwardOut(saved.o_raw, saved.inv_rho, saved.u1, saved.u2)
        grads = _backward(ops, st, fwd, grad_out, CoreArgs.from_flat(ctx.needs_input_grad[2:]), ctx.specs)
        return (None, None, *grads.flat())


def _output(fwd: ForwardOut, dtype: torch.dtype) -> Tensor:
    """The core's result (b, H, T, dv) in ``dtype``: the raw readout times 1/rho."""
    return (fwd.o_raw * fwd.inv_rho[..., None]).transpose(0, 1).to(dtype)


def _backward(ops: Operands, st: Settings, fwd: ForwardOut, grad_out: Tensor, needs: CoreArgs,
              specs: CoreArgs) -> CoreArgs:
    """Every block's backward: grad_out (b, H, T, dv) -> the gradients of the inputs ``needs``
    flags (else None) in their layout and dtype (``specs``: (shape, dtype) of each input).
    ``fwd`` is the forward's raw readout, 1/rho and z A of each mixing."""
    grads = _grad_buffers(ops, needs)
    d_out = grad_out.transpose(0, 1).to(ops.q.dtype)  # (H, b, T, dv)
    total = ops.k.shape[2]
    for blk in _blocks(st, ops.q.shape[2], total):
        sl = slice(blk.t0, blk.t1)
        _block_backward(ops, st, blk, d_out[:, :, sl], fwd.o_raw[:, :, sl], fwd.inv_rho[:, :, sl],
                        fwd.u1, fwd.u2, grads)
    return _public_grads(grads, specs, total)


# ----------------------------------------------------------------------------------------------


def hyper_core_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s1: Optional[Tensor],
    s2: Optional[Tensor],
    mix1: Optional[Tables],
    mix2: Optional[Tables],
    *,
    glu: bool,
    layout: str = "lag",
    offset: int = 0,
    eps: float = 1e-12,
    key_valid: Optional[Tensor] = None,
    chunk_size: int = 64,
) -> Tensor:
    """The Hyper core in query blocks of ``chunk_size``, with a hand-derived backward: same
    arguments and result (b, H, T, dv) as ``hyper_core_reference``. Any T, offset and layout
    (T = 1 included; ``hyper_core`` sends one no-grad query at the end of the keys to the decode
    step instead). float16 / bfloat16 inputs are computed in float32 (module docstring)."""
    check_layout(layout)
    args = CoreArgs(
        q, k, v,
        None if mix1 is None else s1,
        None if mix2 is None else s2,
        None if mix1 is None else Tables(*mix1),
        None if mix2 is None else Tables(*mix2),
    )
    st = Settings(glu=glu, layout=layout, offset=offset, eps=eps, chunk=max(1, int(chunk_size)))
    flat = args.flat()
    with autocast_off(q.device):
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in flat):
            return _HyperChunked.apply(st, key_valid, *flat)
        with torch.no_grad():
            fwd = _forward(_prepare(args, key_valid, st), st, keep_u=False)
            return _output(fwd, q.dtype)

"""Chunked HyperMLP / HyperGLU core: query blocks, each against its causal prefix only.

Per block of C queries (absolute positions W-C .. W-1) against the W keys before them:

    scores (key layout) --skew--> lag layout --R(1)--> activation --R(2)--> --unskew--> readout

In the lag layout every DPLR mixing is two thin matmuls against the lag-indexed tables, so no
(C, W, r) gather is ever built. The activation's normalisation is applied to the readout (ReLU is
positively homogeneous and R(2) and the readout are linear: SPEC §2.6).

Memory layout and passes (what makes it fast on a CPU)
-----------------------------------------------------
* Everything is *head-major*: (heads, B, rows, cols), so each DPLR mixing is one batched matmul
  per head against that head's table, with no broadcast copy of the tables.
* The skew costs nothing: with the keys stored once per call behind C-1 zero rows (K~), the
  lag-layout entry (i, m) is q_i . K~[m + i], i.e. entry (i, m + i) of the plain matmul
  X = q K~^T of shape (C, W+C-1). Read with row stride W+C, X *is* the reversed-lag layout
  (column m = lag W-1-m, oldest first), and the lags beyond each row's position read the zero
  rows, so they are already zero. The same trick gives the gradient d_o v^T in the lag layout.
* The unskew costs nothing either: blocks that go back to the key layout (R(2)'s output for the
  readout, the score gradient for dq/dk) are written into buffers of row stride W+1; read with
  row stride W from offset C-1 they are the key layout, once the invalid triangle and the pad
  column are zero - one ``masked_fill_`` of a (C, C) window per plane (``zero_readable``).
* Tables are reversed once per call (not per block): a block uses the last W rows of
  ``table[:, :S].flip(1)`` in the lag layout and the first W in the left layout (whose mixing
  layout is the key layout, tables indexed by key position).
* Masking is a ``masked_fill_`` of the C*(C-1)/2 triangle, not a multiply by a full mask, unless
  key padding is given; HyperGLU masks only its gate branch (the scale branch is multiplied by
  relu(gate)). softplus(c) * relu(g) is computed as max(softplus(c) * g, 0) in place.
* Within a block, intermediates are freed or overwritten as soon as they are dead, so the block
  lives in a handful of (heads, B, C, W) buffers that the allocator hands round again.

Autograd: ``_HyperChunkedFn`` saves the head-major inputs, the reversed tables, the raw readout,
1/rho and z A of each mixing (heads, B, T, r): all linear in T. Its backward recomputes one block
at a time and applies a hand-derived gradient of every step (readout, skew, R(2), activation and
normalisation, R(1), scores): nothing of size T^2 is stored, autograd never sees the block, and
the forward's readout is not recomputed. The readable twin is
``hyper_reference.hyper_core_reference``; tests/test_ops_fast.py checks outputs and every gradient
against it in float64 and runs ``gradcheck`` on the hand-written backward.

Decoding one token (T = 1, no grad) takes ``_decode_step``: for a single query the key layout is
the lag layout read backwards, so there is no skew at all, the tables are used unflipped (lag
order) and only the (heads, B, S) score vectors are reversed, never the cached keys or values.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .hyper_reference import Tables


# ----------------------------------------------------------------------------------------------
# layout helpers (public: the tests and the docs use them)


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


# ----------------------------------------------------------------------------------------------
# one call: inputs made head-major once, tables reversed once


class _Plan:
    """Everything a call needs, prepared once: head-major inputs, reversed tables, masks."""

    def __init__(self, q, kp, vp, s1, s2, mix1, mix2, key_valid, glu, layout, offset, eps, chunk_size):
        """q, s1, s2 head-major (heads, B, T, dim), contiguous; kp, vp head-major keys and values
        with ``pad`` zero rows in front (see ``prepare``); mix1/mix2 reversed tables."""
        self.glu, self.lag, self.offset, self.eps = glu, layout == "lag", offset, eps
        self.chunk = max(1, int(chunk_size))
        self.pad = self.pad_for(layout, self.chunk)
        self.hq, self.batch, self.n_queries, _ = q.shape
        self.h = vp.shape[0]
        self.q, self.kp, self.vp, self.s1, self.s2 = q, kp, vp, s1, s2
        self.k, self.v = kp[:, :, self.pad :], vp[:, :, self.pad :]
        self.total = self.k.shape[2]
        self.mix1, self.mix2 = mix1, mix2
        # the diagonal as the factor (1 + p), shaped (heads, 1, 1, S) to broadcast over a block
        self.diag1 = None if mix1 is None else (mix1[2] + 1)[:, None, None, :]
        self.diag2 = None if mix2 is None else (mix2[2] + 1)[:, None, None, :]
        self.key_valid = key_valid
        self._tri = {}

    @staticmethod
    def pad_for(layout: str, chunk: int) -> int:
        return max(1, int(chunk)) - 1 if layout == "lag" else 0

    @classmethod
    def prepare(cls, q, k, v, s1, s2, mix1, mix2, key_valid, glu, layout, offset, eps, chunk_size):
        """From the public (B, heads, T, dim) inputs and lag-indexed tables: head-major copies,
        keys and values behind ``chunk-1`` zero rows (lag layout), tables reversed, everything in
        the queries' dtype (under autocast the tables arrive in float32, the projections in bf16)."""
        dtype = q.dtype
        hm = lambda x: None if x is None else x.transpose(0, 1).to(dtype).contiguous()  # noqa: E731
        pad = cls.pad_for(layout, chunk_size)

        def padded(x):
            out = x.new_empty(x.shape[1], x.shape[0], pad + x.shape[2], x.shape[3], dtype=dtype)
            out[:, :, :pad] = 0
            out[:, :, pad:] = x.transpose(0, 1)
            return out

        total = k.shape[2]

        def rev(tables):
            return None if tables is None else tuple(t[:, :total].flip(1).to(dtype).contiguous() for t in tables)

        return cls(hm(q), padded(k), padded(v), hm(None if mix1 is None else s1), hm(None if mix2 is None else s2),
                   rev(mix1), rev(mix2), key_valid, glu, layout, offset, eps, chunk_size)

    def tensors(self):
        m1 = self.mix1 if self.mix1 is not None else (None, None, None)
        m2 = self.mix2 if self.mix2 is not None else (None, None, None)
        return [self.q, self.kp, self.vp, self.s1, self.s2, *m1, *m2]

    def scores(self, x: torch.Tensor, keys_p: torch.Tensor, c: int, w: int) -> torch.Tensor:
        """x (n, B, C, d) against the first W keys of ``keys_p`` (padded), in the mixing layout
        with the invalid entries zero.

        Lag layout, skew for free: with K~ = the keys behind C-1 zero rows, the lag-layout entry
        (i, m) is x_i . K~[m + i], i.e. entry (i, m + i) of X = x K~^T (C x (W+C-1)): a view of
        X with row stride W+C. The triangle m < C-1-i reads the zero rows, so it is zero."""
        n, batch = x.shape[0], self.batch
        if not self.lag:
            z = torch.matmul(x, keys_p[:, :, :w].transpose(-1, -2))
            self.zero_invalid(z, c, w)
            return z
        start = self.pad - (c - 1)
        width = w + c - 1
        big = torch.matmul(x, keys_p[:, :, start : start + width].transpose(-1, -2))  # (n, B, C, W+C-1)
        return big.as_strided((n, batch, c, w), (batch * c * width, c * width, width + 1, 1), big.storage_offset())

    def table_cols(self, w: int) -> slice:
        """Rows of the reversed tables that the W columns of a block use."""
        return slice(self.total - w, self.total) if self.lag else slice(0, w)

    def blocks(self):
        for t0 in range(0, self.n_queries, self.chunk):
            t1 = min(self.n_queries, t0 + self.chunk)
            yield t0, t1, self.offset + t1

    def triangle(self, c: int, device) -> torch.Tensor:
        """(C, C-1) bool, True on the invalid entries of the mixing layout's C-1 edge columns."""
        key = (c, str(device))
        if key not in self._tri:
            i = torch.arange(c, device=device)[:, None]
            m = torch.arange(c - 1, device=device)[None, :]
            # lag: columns 0..C-2 (oldest lags), invalid when m < C-1-i.
            # left: columns W-C+1..W-1 (newest keys), invalid when m >= i.
            self._tri[key] = (m < c - 1 - i) if self.lag else (m >= i)
        return self._tri[key]

    def mask(self, c: int, w: int, t_dtype) -> Optional[torch.Tensor]:
        """Key padding in the mixing layout, (1, B, C, W) of 0/1 (causality included), or None."""
        if self.key_valid is None:
            return None
        kv = self.key_valid[:, :w].to(t_dtype)[:, None, :].expand(self.batch, c, w)
        if self.lag:
            m = self.to_mix(kv[None].contiguous(), c, w)
        else:
            m = kv[None].clone()
            self.zero_invalid(m, c, w)
        return m

    # -- layouts -------------------------------------------------------------------------------
    def lag_buffer(self, like: torch.Tensor, heads: int, c: int, w: int) -> torch.Tensor:
        """An uninitialised mixing-layout block (heads, B, C, W). In the lag layout it is a view
        with row stride W+1, at offset 1 of a flat buffer: the element before each row is the
        previous row's pad column (see ``key_view`` and ``zero_readable``)."""
        batch = self.batch
        if not self.lag:
            return like.new_empty(heads, batch, c, w)
        flat = like.new_empty(heads * batch * c * (w + 1) + 1)
        return flat.as_strided((heads, batch, c, w), (batch * c * (w + 1), c * (w + 1), w + 1, 1), 1)

    def zero_invalid(self, z: torch.Tensor, c: int, w: int) -> None:
        """Zero the C*(C-1)/2 entries of a mixing-layout block that lie beyond each row's position."""
        if c == 1:
            return
        tri = self.triangle(c, z.device)
        if self.lag:
            z[..., : c - 1].masked_fill_(tri, 0)
        else:
            z[..., w - c + 1 :].masked_fill_(tri, 0)

    def zero_readable(self, z: torch.Tensor, c: int, w: int) -> None:
        """``zero_invalid`` for a block that will be read through ``key_view``: in the lag layout
        the pad column must be zero too. Seen from one element before each row, the pad column of
        the previous row and the row's invalid lags are one run: a (C, C) window per plane,
        entry (i, m) invalid for m <= C-1-i; one masked_fill covers both."""
        if not self.lag:
            return self.zero_invalid(z, c, w)
        if c == 1:  # a single row never reads its pad column
            return
        key = ("window", c, str(z.device))
        if key not in self._tri:
            i = torch.arange(c, device=z.device)[:, None]
            m = torch.arange(c, device=z.device)[None, :]
            self._tri[key] = m <= c - 1 - i
        window = z.as_strided((*z.shape[:3], c), z.stride(), z.storage_offset() - 1)
        window.masked_fill_(self._tri[key], 0)

    def to_mix(self, s: torch.Tensor, c: int, w: int) -> torch.Tensor:
        """Key layout (heads, B, C, W) -> mixing layout, invalid entries zeroed. The skew is one
        copy: the key-layout rows written with row stride W into a buffer of row stride W+1."""
        if not self.lag:
            z = s if s.is_contiguous() else s.contiguous()
        else:
            z = self.lag_buffer(s, s.shape[0], c, w)
            self.key_view(z, c, w).copy_(s)
        self.zero_invalid(z, c, w)
        return z

    def key_view(self, z: torch.Tensor, c: int, w: int) -> torch.Tensor:
        """Mixing layout -> key layout. For the lag layout ``z`` must come from ``lag_buffer``
        and be zeroed by ``zero_readable``: the unskew is then a view."""
        if not self.lag:
            return z
        n = z.shape[0]
        base = z.as_strided((n, self.batch, c * (w + 1)), (self.batch * c * (w + 1), c * (w + 1), 1))
        return base[..., c - 1 : c - 1 + c * w].view(n, self.batch, c, w)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(heads, B, C, n) -> (heads, B*C, n): a view for every block buffer (a copy for slices of
    the (heads, B, T, n) inputs, which are small)."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def _rows_out(x: torch.Tensor) -> torch.Tensor:
    """As ``_rows`` for a tensor written in place: must be a view."""
    return x.view(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


_threshold_bwd = torch.ops.aten.threshold_backward.grad_input
_softplus_bwd = torch.ops.aten.softplus_backward.grad_input


def _mergeable(x: torch.Tensor) -> bool:
    return x.stride(1) == x.shape[2] * x.stride(2)


def _times_table(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """z (heads, B, C, W) @ a (heads, W, r) -> (heads, B*C, r), one matmul per head."""
    if _mergeable(z):
        return torch.bmm(_rows_out(z), a)
    heads, batch, c, _ = z.shape
    return torch.matmul(z, a[:, None]).view(heads, batch * c, -1)


def _table_grad(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum over (B, C) of z^T g: z (heads, B, C, W), g (heads, B*C, r) -> (heads, W, r)."""
    if _mergeable(z):
        return torch.bmm(_rows_out(z).transpose(1, 2), g)
    heads, batch, c, _ = z.shape
    return torch.matmul(z.transpose(-1, -2), g.view(heads, batch, c, -1)).sum(1)


def _mix_fwd(z, tables, diag, cols, gate, out, u=None):
    """DPLR mixing in the mixing layout: out = z * (1+p) + ((z A) * s) B^T (not masked).
    ``out`` may be ``z`` itself when that is mergeable (in place); ``u`` = z A when already known
    (saved by the forward). Returns (out, u, g = u * s), u as (heads, B, C, r), g as
    (heads, B*C, r)."""
    a, b = tables[0][:, cols], tables[1][:, cols]
    if u is None:  # before z may be overwritten
        u = _times_table(z, a).view(gate.shape)
    g = _rows_out(u * gate)  # (heads, B*C, r)
    torch.mul(z, diag[..., cols], out=out)
    _rows_out(out).baddbmm_(g, b.transpose(1, 2))
    return out, u, g


def _mask(plan: _Plan, z: torch.Tensor, mask: Optional[torch.Tensor], c: int, w: int, readable=False) -> None:
    """Zero the invalid entries (and the pad column, when ``readable``), then key padding."""
    if readable:
        plan.zero_readable(z, c, w)
    else:
        plan.zero_invalid(z, c, w)
    if mask is not None:
        z.mul_(mask)


def _inv_rho(plan: _Plan, g: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(|g|^2 + eps) over the lags: (heads, B, C)."""
    return torch.linalg.vector_norm(g, dim=-1).square_().add_(plan.eps).rsqrt_()


# ----------------------------------------------------------------------------------------------
# forward of one block (no autograd): intermediates are overwritten or freed as soon as possible,
# so a block lives in (a few) buffers of (heads, B, C, W) that the allocator hands round again


def _block_forward(plan: _Plan, t0: int, t1: int, w: int, saved_u=None):
    """Raw readout (H, B, C, dv) and 1/rho (H, B, C) of queries t0..t1-1 against W keys.
    ``saved_u``: (u1, u2) tensors (heads, B, T, r) that receive z A of each mixing (or None)."""
    c, h = t1 - t0, plan.h
    cols = plan.table_cols(w)
    mask = plan.mask(c, w, plan.q.dtype)
    z = plan.scores(plan.q[:, :, t0:t1], plan.kp, c, w)  # (Hq, B, C, W), mixing layout
    if mask is not None:
        z.mul_(mask)
    if plan.mix1 is not None:
        out = z if _mergeable(z) else z.new_empty(z.shape)
        z, u, _ = _mix_fwd(z, plan.mix1, plan.diag1, cols, plan.s1[:, :, t0:t1], out)
        if saved_u is not None:
            saved_u[0][:, :, t0:t1] = u
        # GLU: only the gate branch needs the mask (the scale branch is multiplied by relu(gate))
        _mask(plan, z[:h] if plan.glu else z, mask, c, w)
    # y: R(2)'s output (or the activation when R(2) is off), read back through the key view
    y = plan.lag_buffer(z, h, c, w)
    dest = y if plan.mix2 is None else None
    if plan.glu:
        g = z[:h]
        act = F.softplus(z[h:])
        # softplus > 0, so softplus(c) * relu(g) = max(softplus(c) * g, 0): no relu temporary
        act = torch.mul(act, g, out=act if dest is None else dest).clamp_min_(0)
    else:
        g = z
        act = torch.relu(g) if dest is None else torch.clamp_min(g, 0, out=dest)
    inv = _inv_rho(plan, g)
    del z, g
    if plan.mix2 is not None:
        _, u, _ = _mix_fwd(act, plan.mix2, plan.diag2, cols, plan.s2[:, :, t0:t1], y)
        if saved_u is not None:
            saved_u[1][:, :, t0:t1] = u
        del act
        _mask(plan, y, mask, c, w, readable=True)
    else:
        plan.zero_readable(y, c, w)
    return torch.matmul(plan.key_view(y, c, w), plan.v[:, :, :w]), inv


def _forward(plan: _Plan, saved_u=None):
    out = plan.v.new_empty(plan.h, plan.batch, plan.n_queries, plan.v.shape[-1])
    inv = plan.v.new_empty(plan.h, plan.batch, plan.n_queries)
    for t0, t1, w in plan.blocks():
        out[:, :, t0:t1], inv[:, :, t0:t1] = _block_forward(plan, t0, t1, w, saved_u)
    return out, inv


# ----------------------------------------------------------------------------------------------
# hand-derived backward of one block (recomputing its forward)


def _mix_bwd(dz_out, z_in, u, g, tables, diag, cols, gate, grads, names, out, scratch):
    """Backward of z' = z*(1+p) + ((z A) * s) B^T for upstream dz' (already masked).

    Accumulates the table gradients into ``grads`` (reversed-table coordinates) and returns
    ds = (dz' B) * u. ``out`` receives dz = dz'*(1+p) + ((dz' B) * s) A^T once z is no longer
    read (it may be ``z_in``'s buffer); ``scratch`` is a free buffer shaped like dz'.
    """
    a, b = tables[0][:, cols], tables[1][:, cols]
    ga, gb, gp = names
    if grads[gp] is not None:
        grads[gp][:, cols].add_(torch.mul(dz_out, z_in, out=scratch).sum(dim=(1, 2)))
    dg = _times_table(dz_out, b)  # (heads, B*C, r)
    if grads[gb] is not None:
        grads[gb][:, cols].add_(_table_grad(dz_out, g))
    dg = dg.view(gate.shape)
    du = _rows_out(dg * gate)
    ds = dg * u
    if grads[ga] is not None:
        grads[ga][:, cols].add_(_table_grad(z_in, du))
    torch.mul(dz_out, diag[..., cols], out=out)
    _rows_out(out).baddbmm_(du, a.transpose(1, 2))
    return ds


# gradient slots (reversed tables for A, B, p)
_GQ, _GK, _GV, _GS1, _GS2, _GA1, _GB1, _GP1, _GA2, _GB2, _GP2 = range(11)


def _block_backward(plan: _Plan, t0, t1, w, d_out, o_raw, inv, saved_u, grads):
    """d_out: (H, B, C, dv) upstream gradient of this block's output (head-major); o_raw, inv and
    saved_u (z A of each mixing) as saved by the forward. Adds into ``grads``."""
    c, h, hq, batch = t1 - t0, plan.h, plan.hq, plan.batch
    cols = plan.table_cols(w)
    mask = plan.mask(c, w, plan.q.dtype)
    s1 = None if plan.s1 is None else plan.s1[:, :, t0:t1]
    s2 = None if plan.s2 is None else plan.s2[:, :, t0:t1]

    # -- recompute the forward, keeping what the backward reads
    z0 = plan.scores(plan.q[:, :, t0:t1], plan.kp, c, w)
    if mask is not None:
        z0.mul_(mask)
    if plan.mix1 is not None:
        z1, u1, g1 = _mix_fwd(z0, plan.mix1, plan.diag1, cols, s1, z0.new_empty(z0.shape), saved_u[0][:, :, t0:t1])
        _mask(plan, z1[:h] if plan.glu else z1, mask, c, w)  # as in the forward
    else:
        z1 = z0
    y = plan.lag_buffer(z1, h, c, w)
    if plan.glu:
        g, sc = z1[:h], z1[h:]
        sp = F.softplus(sc)
        act = torch.mul(sp, g, out=None if plan.mix2 is not None else y).clamp_min_(0)
    else:
        g, sc, sp = z1, None, None
        act = torch.relu(g) if plan.mix2 is not None else torch.clamp_min(g, 0, out=y)
    if plan.mix2 is not None:
        _, u2, g2 = _mix_fwd(act, plan.mix2, plan.diag2, cols, s2, y, saved_u[1][:, :, t0:t1])
        _mask(plan, y, mask, c, w, readable=True)
    else:
        plan.zero_readable(y, c, w)

    # -- readout: out = (Y_key @ v) * inv
    d_inv = (d_out * o_raw).sum(-1)  # (H, B, C)
    d_o = d_out * inv[..., None]
    if grads[_GV] is not None:
        y_key = plan.key_view(y, c, w)
        gv = grads[_GV][:, :, :w].view(h * batch, w, -1)
        gv.baddbmm_(y_key.reshape(h * batch, c, w).transpose(1, 2), d_o.reshape(h * batch, c, -1))
        del y_key
    d_y = plan.scores(d_o, plan.vp, c, w)  # = skew(d_o v^T): the skew is the adjoint of the unskew
    if mask is not None:
        d_y.mul_(mask)

    # -- R(2)
    if plan.mix2 is not None:
        # y is free now; act's buffer takes d_act once the table gradients have read act
        ds2 = _mix_bwd(d_y, act, u2, g2, plan.mix2, plan.diag2, cols, s2, grads, (_GA2, _GB2, _GP2), out=act, scratch=y)
        if grads[_GS2] is not None:
            grads[_GS2][:, :, t0:t1] = ds2
        d_act = act
    else:
        d_act = d_y
    del y, d_y, act

    # -- activation and 1/rho (out depends on the gate branch g also through inv)
    coef = (d_inv * inv.pow(3)).neg_()[..., None]
    # d_z1 is d_z0 itself when R(1) is off: then it must be readable through the key view
    d_z1 = z1.new_empty(z1.shape) if plan.mix1 is not None else plan.lag_buffer(z1, hq, c, w)
    if plan.glu:
        dg = torch.mul(d_act, sp, out=d_z1[:h])
        _threshold_bwd(dg, g, 0, grad_input=dg)  # * (g > 0)
        dg.addcmul_(g, coef)
        dsc = torch.mul(d_act, g, out=d_z1[h:])
        _threshold_bwd(dsc, g, 0, grad_input=dsc)  # d_act * relu(g)
        _softplus_bwd(dsc, sc, 1, 20, grad_input=dsc)  # * sigmoid(sc), F.softplus's threshold
    else:
        dg = _threshold_bwd(d_act, g, 0, grad_input=d_z1)
        dg.addcmul_(g, coef)
    # d_z1 is zero wherever z1 is masked: every term there carries a factor z1 or (z1 > 0)
    del d_act, sp, g, sc, dg
    if plan.mix1 is None:
        plan.zero_readable(d_z1, c, w)  # its pad column

    # -- R(1)
    if plan.mix1 is not None:
        d_z0 = plan.lag_buffer(z1, hq, c, w)
        ds1 = _mix_bwd(d_z1, z0, u1, g1, plan.mix1, plan.diag1, cols, s1, grads, (_GA1, _GB1, _GP1), out=d_z0, scratch=z1)
        if grads[_GS1] is not None:
            grads[_GS1][:, :, t0:t1] = ds1
        _mask(plan, d_z0, mask, c, w, readable=True)
    else:
        d_z0 = d_z1
    del z0, z1, d_z1
    d_s = plan.key_view(d_z0, c, w)  # unskew = adjoint of the skew on the valid region

    # -- scores = q k^T
    if grads[_GQ] is not None:
        grads[_GQ][:, :, t0:t1] = torch.matmul(d_s, plan.k[:, :, :w])
    if grads[_GK] is not None:
        gk = grads[_GK][:, :, :w].view(hq * batch, w, -1)
        gk.baddbmm_(d_s.reshape(hq * batch, c, w).transpose(1, 2), plan.q[:, :, t0:t1].reshape(hq * batch, c, -1))


class _HyperChunkedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, key_valid, meta, *inputs):
        offset, chunk, glu, layout, eps = meta
        q, k, v, s1, s2, a1, b1, p1, a2, b2, p2 = inputs
        mix1 = None if a1 is None else (a1, b1, p1)
        mix2 = None if a2 is None else (a2, b2, p2)
        plan = _Plan.prepare(q, k, v, s1, s2, mix1, mix2, key_valid, glu, layout, offset, eps, chunk)
        saved_u = [None if m is None else x.new_empty(*x.shape[:-1], m[0].shape[-1])
                   for m, x in ((plan.mix1, plan.q), (plan.mix2, plan.v))]
        o_raw, inv = _forward(plan, saved_u)
        ctx.meta, ctx.key_valid = meta, key_valid
        ctx.shapes = [None if x is None else (x.shape, x.dtype) for x in inputs]
        # saved: the head-major copies and reversed tables (the same size as the inputs), the raw
        # readout, 1/rho and z A of each mixing (heads, B, T, r); all linear in T
        kept = plan.tensors() + saved_u
        ctx.none = [x is None for x in kept]
        ctx.save_for_backward(*[x for x in kept if x is not None], o_raw, inv)
        return (o_raw * inv[..., None]).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_out):
        offset, chunk, glu, layout, eps = ctx.meta
        saved = list(ctx.saved_tensors)
        o_raw, inv = saved[-2:]
        it = iter(saved[:-2])
        t = [None if none else next(it) for none in ctx.none]
        saved_u = t[11:13]
        mix1 = None if t[5] is None else tuple(t[5:8])
        mix2 = None if t[8] is None else tuple(t[8:11])
        plan = _Plan(t[0], t[1], t[2], t[3], t[4], mix1, mix2, ctx.key_valid, glu, layout, offset, eps, chunk)
        needs = ctx.needs_input_grad[2:]
        d_out = grad_out.transpose(0, 1).to(plan.q.dtype)
        grads: List[Optional[torch.Tensor]] = [None] * 11
        ref = plan.q
        zeros = lambda *shape: ref.new_zeros(*shape)  # noqa: E731
        hq, h, batch, tq, s = plan.hq, plan.h, plan.batch, plan.n_queries, plan.total
        if needs[_GQ]:
            grads[_GQ] = ref.new_empty(hq, batch, tq, plan.q.shape[-1])
        if needs[_GK]:
            grads[_GK] = zeros(hq, batch, s, plan.k.shape[-1])
        if needs[_GV]:
            grads[_GV] = zeros(h, batch, s, plan.v.shape[-1])
        if plan.mix1 is not None:
            r = plan.mix1[0].shape[-1]
            if needs[_GS1]:
                grads[_GS1] = ref.new_empty(hq, batch, tq, r)
            for slot, shape in ((_GA1, (hq, s, r)), (_GB1, (hq, s, r)), (_GP1, (hq, s))):
                if needs[slot]:
                    grads[slot] = zeros(*shape)
        if plan.mix2 is not None:
            r = plan.mix2[0].shape[-1]
            if needs[_GS2]:
                grads[_GS2] = ref.new_empty(h, batch, tq, r)
            for slot, shape in ((_GA2, (h, s, r)), (_GB2, (h, s, r)), (_GP2, (h, s))):
                if needs[slot]:
                    grads[slot] = zeros(*shape)
        for t0, t1, w in plan.blocks():
            _block_backward(plan, t0, t1, w, d_out[:, :, t0:t1], o_raw[:, :, t0:t1], inv[:, :, t0:t1], saved_u, grads)

        result: List[Optional[torch.Tensor]] = []
        for slot, g in enumerate(grads):
            if g is None:
                result.append(None)
                continue
            shape, dtype = ctx.shapes[slot]
            if slot <= _GS2:
                result.append(g.transpose(0, 1).to(dtype))
            else:  # reversed-table coordinates -> table rows, zero beyond the S rows used
                full = g.new_zeros(shape, dtype=dtype)
                full[:, :s] = g.flip(1)
                result.append(full)
        return (None, None, *result)


# ----------------------------------------------------------------------------------------------
# one decoded token


def _decode_mix(z, tables, gate):
    """Lag-ordered DPLR mixing of one query's scores z (heads, B, n), newest lag first; the
    tables are used as they are (row = lag), gate is (B, heads, 1, r)."""
    n = z.shape[-1]
    # (heads, n, r), (heads, n, r), (heads, n), lag-indexed; in z's dtype (autocast leaves the
    # float32 tables alone and does not cast for in-place ops)
    a, b, p = (t[:, :n].to(z.dtype) for t in tables)
    g = torch.bmm(z, a).mul_(gate[:, :, 0].transpose(0, 1).to(z.dtype))  # (heads, B, r)
    return torch.addcmul(z, z, p[:, None, :]).baddbmm_(g, b.transpose(1, 2))


def _decode_step(q, k, v, s1, s2, mix1, mix2, glu, eps, key_valid):
    """One query at position S-1 (T = 1, no grad): q (B, Hq, 1, dk), k (B, Hq, S, dk),
    v (B, H, S, dv). For a single query the key layout is the lag layout read backwards, so
    there is no skew; only the (heads, B, S) score vectors are reversed, never the cached keys
    or values, and the tables are used unflipped. Both layouts use rows 0..S-1 here (for the
    left layout the query is the last position of its sequence, see ``table_rows``)."""
    h, s = v.shape[1], k.shape[2]
    z = torch.matmul(q, k.transpose(-1, -2))[:, :, 0].transpose(0, 1).flip(-1)  # (Hq, B, S), lag order
    valid = None if key_valid is None else key_valid[:, :s].flip(-1).to(z.dtype)  # (B, S)
    if valid is not None:
        z.mul_(valid)
    if mix1 is not None:
        z = _decode_mix(z, mix1, s1)
        if valid is not None:
            z.mul_(valid)
    if glu:
        g = z[:h]
        a = F.softplus(z[h:]).mul_(g).clamp_min_(0)  # softplus(c) * relu(g), softplus > 0
    else:
        g = z
        a = torch.relu(z)
    # normalise now: R(2) and the readout are linear
    a.mul_(torch.linalg.vector_norm(g, dim=-1, keepdim=True).square_().add_(eps).rsqrt_())
    if mix2 is not None:
        a = _decode_mix(a, mix2, s2)
        if valid is not None:
            a.mul_(valid)
    return torch.matmul(a.flip(-1).transpose(0, 1)[:, :, None, :], v)  # (B, H, 1, dv)


# ----------------------------------------------------------------------------------------------


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
    """Same arguments and result as ``hyper_core_reference`` (B, H, T, dv); ``chunk_size`` is the
    number of queries per block."""
    m1 = (None, None, None) if mix1 is None else tuple(mix1)
    m2 = (None, None, None) if mix2 is None else tuple(mix2)
    inputs = [q, k, v, None if mix1 is None else s1, None if mix2 is None else s2, *m1, *m2]
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    if needs_grad:
        meta = (offset, chunk_size, glu, layout, eps)  # the order tests/test_core_ops.py uses
        return _HyperChunkedFn.apply(key_valid, meta, *inputs)
    with torch.no_grad():
        if q.shape[2] == 1 and offset == k.shape[2] - 1:
            return _decode_step(q, k, v, inputs[3], inputs[4], mix1, mix2, glu, eps, key_valid)
        plan = _Plan.prepare(q, k, v, s1, s2, mix1, mix2, key_valid, glu, layout, offset, eps, chunk_size)
        out, inv = _forward(plan)
        return (out * inv[..., None]).transpose(0, 1)

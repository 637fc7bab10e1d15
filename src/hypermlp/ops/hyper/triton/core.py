"""The Hyper core on Triton kernels: ``hyper_core_triton`` (parallel, with autograd) and
``hyper_core_decode_triton`` (one query at the end of the keys, no grad).

Same arguments, semantics and result as ``chunked.hyper_core_chunked`` (docs/math.md §2.4 -
§2.8), minus ``chunk_size``: the kernel's query and key blocks are ``block_m`` / ``block_n``.
The forward is ``kernels.hyper_fwd_kernel`` (memory linear in T; README.md next to this package,
"Triton kernel"). The backward is ``kernels.hyper_bwd_kernel``: it recomputes the forward tile by tile from
what the forward saved (linear in T) and accumulates the key, value and table gradients with
atomics.

Precision as everywhere in the core (``precision.py``): float16 / bfloat16 inputs are computed in
float32 (one cast of each input, linear in T), float32 / float64 in their own dtype, the output
comes back in q's dtype. The left layout (an ablation) has no kernel: it falls back to the chunked
path with a warning.

Triton is imported on first use (``_kernels``), never by ``import hypermlp``. The kernels run on
CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before
the first use; slow, for tests).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple, Optional

import torch

from ..chunked import hyper_core_chunked
from ..layout import check_layout
from ..precision import autocast_off, compute_dtype
from ..reference import Tables

Tensor = torch.Tensor

DEFAULT_BLOCK_M = 16  # queries per program (tl.dot needs >= 16)
DEFAULT_BLOCK_N = 32  # keys per tile of the stream


def _kernels():
    """The kernels module (imports triton), with a clear error when triton is missing."""
    try:
        from . import kernels
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "impl='triton' needs the triton package: pip install 'hypermlp[triton]' (or pip install triton)"
        ) from err
    return kernels


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether triton imports (``impl='auto'`` then picks the kernels for CUDA tensors); asked once
    per process."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


def _check_device(kernels, q: Tensor) -> None:
    if q.device.type == "cuda" or (q.device.type == "cpu" and kernels.INTERPRETED):
        return
    raise RuntimeError(
        f"impl='triton' needs CUDA tensors, got {q.device.type} tensors (on CPU the kernels run only under the "
        "Triton interpreter: set TRITON_INTERPRET=1 before the first use)"
    )


def _check_shapes(q, k, v, s1, s2, mix1, mix2, glu, offset, key_valid) -> None:
    """Shapes that the kernel's pointer arithmetic relies on, checked before any work."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-d (b, heads, T, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, hq, t, dk = q.shape
    h, s = v.shape[1], k.shape[2]
    if hq != (2 * h if glu else h):
        raise ValueError(f"q has {hq} score heads, expected {'2 x ' if glu else ''}{h} (v's heads)")
    if k.shape != (b, hq, s, dk) or v.shape[:3] != (b, h, s):
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if offset < 0 or offset + t != s:
        raise ValueError(f"offset + T must equal the number of keys S: {offset} + {t} != {s}")
    if key_valid is not None and (key_valid.dim() != 2 or key_valid.shape[0] != b or key_valid.shape[1] < s):
        raise ValueError(f"key_valid must be (b, >= S) = ({b}, {s}), got {tuple(key_valid.shape)}")
    for name, mix, gate, heads in (("mix1", mix1, s1, hq), ("mix2", mix2, s2, h)):
        if mix is None:
            continue
        A, B, p = mix
        r = A.shape[-1]
        if A.shape[0] != heads or A.shape[1] < s or B.shape != A.shape or p.shape != A.shape[:2]:
            raise ValueError(f"{name} tables must be ({heads}, L >= {s}, r) x2 and ({heads}, L), "
                             f"got {tuple(A.shape)}, {tuple(B.shape)}, {tuple(p.shape)}")
        if gate is None or gate.shape != (b, heads, t, r):
            raise ValueError(f"the gate of {name} must be ({b}, {heads}, {t}, {r}), got "
                             f"{None if gate is None else tuple(gate.shape)}")


class _Operands(NamedTuple):
    """One call's inputs as the kernels read them: contiguous, in the compute dtype
    (``precision.compute_dtype``; one copy each, linear in T, none for contiguous float32 /
    float64 inputs). Absent mixings and key_valid are stand-in pointers (never read)."""

    q: Tensor  # (b, Hq, T, dk)
    k: Tensor  # (b, Hq, S, dk)
    v: Tensor  # (b, H, S, dv)
    s1: Tensor  # (b, Hq, T, r)
    s2: Tensor  # (b, H, T, r)
    A1: Tensor  # (Hq, r, L): rank-major, so a rank's gather reads contiguous lags
    B1: Tensor
    p1: Tensor  # (Hq, L)
    A2: Tensor  # (H, r, L)
    B2: Tensor
    p2: Tensor  # (H, L)
    valid: Tensor  # (b, S) int8


class _Meta(NamedTuple):
    """The sizes and switches the kernels are launched with."""

    t: int
    s: int
    h: int
    table_len: int
    dk: int
    dv: int
    r: int
    mix1: bool
    mix2: bool
    has_valid: bool


def _prepare(q, k, v, s1, s2, mix1, mix2, key_valid):
    dtype = compute_dtype(q.dtype)

    def prep(x):
        return x.to(dtype).contiguous()

    q_ = prep(q)
    mixes = [m for m in (mix1, mix2) if m is not None]
    if len(mixes) == 2 and mix1[0].shape[-1] != mix2[0].shape[-1]:
        raise ValueError(f"mix1 and mix2 must have the same rank, got {mix1[0].shape[-1]} and {mix2[0].shape[-1]}")

    def rank_major(tables):  # (heads, L, r) x2, (heads, L) -> (heads, r, L) x2, (heads, L)
        if tables is None:
            return q_, q_, q_
        A, B, p = tables
        return prep(A.transpose(1, 2)), prep(B.transpose(1, 2)), prep(p)

    A1, B1, p1 = rank_major(mix1)
    A2, B2, p2 = rank_major(mix2)
    s = k.shape[2]
    ops = _Operands(
        q_, prep(k), prep(v),
        prep(s1) if mix1 is not None else q_, prep(s2) if mix2 is not None else q_,
        A1, B1, p1, A2, B2, p2,
        q_ if key_valid is None else key_valid[:, :s].to(torch.int8).contiguous(),
    )
    meta = _Meta(
        t=q.shape[2], s=s, h=v.shape[1], table_len=mixes[0][0].shape[1] if mixes else s,
        dk=q.shape[3], dv=v.shape[3], r=mixes[0][0].shape[-1] if mixes else 1,
        mix1=mix1 is not None, mix2=mix2 is not None, has_valid=key_valid is not None,
    )
    return ops, meta


def _blocks(meta: _Meta, block_m: int, block_n: int) -> dict:
    import triton

    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(meta.dk)),
                BLOCK_DV=max(16, triton.next_power_of_2(meta.dv)), BLOCK_R=triton.next_power_of_2(meta.r))


def _launch_forward(ops: _Operands, meta: _Meta, out: Tensor, *, glu, offset, eps, block_m, block_n, save: bool):
    """``hyper_fwd_kernel`` into ``out`` (b, H, T, dv); with ``save`` also returns u1, u2, 1/rho
    and the raw readout (the backward's inputs, linear in T), else None."""
    kernels = _kernels()
    _check_device(kernels, ops.q)
    b, hq = ops.q.shape[:2]
    m = meta
    saved = None
    if save:
        saved = (ops.q.new_empty(b, hq, m.t, m.r) if m.mix1 else ops.q, ops.q.new_empty(b, m.h, m.t, m.r) if m.mix2 else ops.q,
                 ops.q.new_empty(b, m.h, m.t), ops.q.new_empty(b, m.h, m.t, m.dv))
    if m.t == 0:
        return saved
    grid = (-(-m.t // block_m), b * m.h)
    kernels.hyper_fwd_kernel[grid](
        *ops, out, *(saved or (ops.q,) * 4),
        m.t, m.s, offset, m.h, m.table_len, m.dk, m.dv, m.r, float(eps),
        GLU=glu, MIX1=m.mix1, MIX2=m.mix2, HAS_VALID=m.has_valid, SAVE=save, **_blocks(m, block_m, block_n),
    )
    return saved


def _launch_backward(ops: _Operands, meta: _Meta, saved, grad_out: Tensor, *, glu, offset, block_m, block_n):
    """``hyper_bwd_kernel``: the gradients of q k v s1 s2 A1 B1 p1 A2 B2 p2 in the inputs' layout
    (None for the absent ones), in the compute dtype. The readout's step runs here in torch (linear in T):
    d_o = dO / rho and the coefficient -inv_rho^3 (dO . o_raw) of rho's gradient."""
    kernels = _kernels()
    u1, u2, inv_rho, o_raw = saved
    m = meta
    d_out = grad_out.to(ops.q.dtype)
    d_o = (d_out * inv_rho[..., None]).contiguous()
    coef = ((d_out * o_raw).sum(-1) * inv_rho.pow(3)).neg_().contiguous()
    zeros = torch.zeros_like
    dq, dk, dv = torch.empty_like(ops.q), zeros(ops.k), zeros(ops.v)
    ds1 = torch.empty_like(ops.s1) if m.mix1 else None
    ds2 = torch.empty_like(ops.s2) if m.mix2 else None
    t1 = tuple(zeros(x) for x in (ops.A1, ops.B1, ops.p1)) if m.mix1 else None
    t2 = tuple(zeros(x) for x in (ops.A2, ops.B2, ops.p2)) if m.mix2 else None
    stand_in = ops.q
    if m.t > 0:
        grid = (-(-m.t // block_m), ops.q.shape[0] * m.h)
        kernels.hyper_bwd_kernel[grid](
            *ops, u1, u2, d_o, coef, dq, dk, dv, ds1 if m.mix1 else stand_in, ds2 if m.mix2 else stand_in,
            *(t1 or (stand_in,) * 3), *(t2 or (stand_in,) * 3),
            m.t, m.s, offset, m.h, m.table_len, m.dk, m.dv, m.r,
            GLU=glu, MIX1=m.mix1, MIX2=m.mix2, HAS_VALID=m.has_valid, **_blocks(m, block_m, block_n),
        )
    # A and B back from rank-major to the tables' (heads, L, r)
    t1 = t1 and (t1[0].transpose(1, 2), t1[1].transpose(1, 2), t1[2])
    t2 = t2 and (t2[0].transpose(1, 2), t2[1].transpose(1, 2), t2[2])
    return (dq, dk, dv, ds1, ds2, *(t1 or (None,) * 3), *(t2 or (None,) * 3))


class _HyperTriton(torch.autograd.Function):
    """Forward and backward on the Triton kernels; the backward recomputes the forward tile by
    tile from what the forward saved (all linear in T: the operands, u = z A of each mixing,
    1/rho, the raw readout). Inputs: the keyword settings as a dict, key_valid, then
    q k v s1 s2 A1 B1 p1 A2 B2 p2 (None where absent)."""

    @staticmethod
    def forward(ctx, kw: dict, key_valid: Optional[Tensor], *flat: Optional[Tensor]) -> Tensor:
        q, k, v, s1, s2, A1, B1, p1, A2, B2, p2 = flat
        mix1 = None if A1 is None else Tables(A1, B1, p1)
        mix2 = None if A2 is None else Tables(A2, B2, p2)
        ops, meta = _prepare(q, k, v, s1, s2, mix1, mix2, key_valid)
        out = q.new_empty(q.shape[0], meta.h, meta.t, meta.dv)
        saved = _launch_forward(ops, meta, out, save=True, **kw)
        ctx.kw, ctx.meta = kw, meta
        ctx.dtypes = [None if x is None else x.dtype for x in flat]
        ctx.save_for_backward(*ops, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        tensors = ctx.saved_tensors
        ops, saved = _Operands(*tensors[:12]), tensors[12:]
        kw = {k: ctx.kw[k] for k in ("glu", "offset", "block_m", "block_n")}
        with autocast_off(grad_out.device):
            grads = _launch_backward(ops, ctx.meta, saved, grad_out, **kw)
        # each gradient in its input's dtype; None where the input is absent or needs none
        return (None, None, *(None if g is None or not need else g.to(dt)
                              for g, need, dt in zip(grads, ctx.needs_input_grad[2:], ctx.dtypes)))


def _forward(q, k, v, s1, s2, mix1, mix2, *, glu, offset, eps, key_valid, block_m, block_n) -> Tensor:
    """The no-grad forward: output (b, H, T, dv) in q's dtype."""
    ops, meta = _prepare(q, k, v, s1, s2, mix1, mix2, key_valid)
    out = q.new_empty(q.shape[0], meta.h, meta.t, meta.dv)
    _launch_forward(ops, meta, out, glu=glu, offset=offset, eps=eps, block_m=block_m, block_n=block_n, save=False)
    return out


def hyper_core_triton(
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
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
) -> Tensor:
    """The Hyper core on the Triton forward kernel: arguments and result (b, H, T, dv) as in
    ``hyper_core_chunked`` (without ``chunk_size``; ``block_m`` / ``block_n``: queries per program
    and keys per tile, powers of two >= 16). Differentiable in every tensor, through the fused
    backward kernel. layout="left" runs the chunked path, with a warning."""
    check_layout(layout)
    if layout == "left":
        warnings.warn("impl='triton' has no kernel for layout='left' (an ablation); using the chunked path",
                      stacklevel=2)
        return hyper_core_chunked(q, k, v, s1, s2, mix1, mix2, glu=glu, layout=layout, offset=offset, eps=eps,
                                  key_valid=key_valid)
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):  # tl.dot needs 16 rows and columns
            raise ValueError(f"{name} must be a power of two >= 16, got {size}")
    s1 = None if mix1 is None else s1
    s2 = None if mix2 is None else s2
    _check_shapes(q, k, v, s1, s2, mix1, mix2, glu, offset, key_valid)
    kw = dict(glu=glu, offset=offset, eps=eps, block_m=block_m, block_n=block_n)
    flat = (q, k, v, s1, s2, *(mix1 or (None,) * 3), *(mix2 or (None,) * 3))
    with autocast_off(q.device):
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in flat):
            return _HyperTriton.apply(kw, key_valid, *flat)
        return _forward(q, k, v, s1, s2, mix1, mix2, key_valid=key_valid, **kw)


def hyper_core_decode_triton(
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
    offset: Optional[int] = None,
    eps: float = 1e-12,
    key_valid: Optional[Tensor] = None,
    block_n: int = 64,
) -> Tensor:
    """One query at position S-1 against all S keys, no autograd: arguments and result as in
    ``decode.hyper_core_decode`` (both layouts coincide there). The forward kernel with one query
    per program (``block_m`` = 1: products as broadcast sums), streaming ``block_n`` keys a tile."""
    check_layout(layout)
    s = k.shape[2]
    if q.dim() != 4 or q.shape[2] != 1 or (offset is not None and offset != s - 1):
        raise ValueError(f"decode takes one query at position S-1 = {s - 1}, got q {tuple(q.shape)}, offset = {offset}")
    s1 = None if mix1 is None else s1
    s2 = None if mix2 is None else s2
    _check_shapes(q, k, v, s1, s2, mix1, mix2, glu, s - 1, key_valid)
    with torch.no_grad(), autocast_off(q.device):
        return _forward(q, k, v, s1, s2, mix1, mix2, glu=glu, offset=s - 1, eps=eps, key_valid=key_valid,
                        block_m=1, block_n=block_n)

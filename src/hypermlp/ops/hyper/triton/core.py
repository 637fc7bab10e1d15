"""The Hyper core on Triton kernels: ``hyper_core_triton`` (parallel, with autograd) and
``hyper_core_decode_triton`` (one query at the end of the keys, no grad).

Same arguments, semantics and result as ``chunked.hyper_core_chunked`` (docs/math.md §2.4 -
§2.8), minus ``chunk_size``: the kernel's query and key blocks are ``block_m`` / ``block_n``.
The forward is ``kernels.hyper_fwd_kernel`` (memory linear in T; README.md next to this package,
"Triton kernel"). The backward recomputes through the chunked path's hand-derived backward
(``_HyperTriton.backward``): there is no fused Triton backward yet.

Precision as everywhere in the core (``precision.py``): float16 / bfloat16 inputs are computed in
float32 (one cast of each input, linear in T), float32 / float64 in their own dtype, the output
comes back in q's dtype. The left layout (an ablation) has no kernel: it falls back to the chunked
path with a warning.

Triton is imported on first use (``_kernels``), never by ``import hypermlp``. The kernels run on
CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before
the first use; slow, for tests).
"""

from __future__ import annotations

import warnings
from typing import Optional

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


def available() -> bool:
    """Whether triton imports (``impl='auto'`` then picks the kernels for CUDA tensors)."""
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


def _forward(q, k, v, s1, s2, mix1, mix2, *, glu, offset, eps, key_valid, block_m, block_n) -> Tensor:
    """Launch ``hyper_fwd_kernel``: inputs cast to the compute dtype and made contiguous (one copy
    each, linear in T; a no-op for contiguous float32 / float64 inputs), output in q's dtype."""
    kernels = _kernels()
    import triton

    _check_device(kernels, q)
    dtype = compute_dtype(q.dtype)
    b, hq, t, dk = q.shape
    h, s, dv = v.shape[1], k.shape[2], v.shape[3]
    out = q.new_empty(b, h, t, dv)
    if t == 0:
        return out

    def prep(x):
        return None if x is None else x.to(dtype).contiguous()

    q_, k_, v_ = prep(q), prep(k), prep(v)
    A1, B1, p1 = (prep(x) for x in mix1) if mix1 is not None else (q_, q_, q_)
    A2, B2, p2 = (prep(x) for x in mix2) if mix2 is not None else (q_, q_, q_)
    s1_ = prep(s1) if mix1 is not None else q_
    s2_ = prep(s2) if mix2 is not None else q_
    r = (mix1 or mix2)[0].shape[-1] if (mix1 or mix2) is not None else 1
    if mix1 is not None and mix2 is not None and mix1[0].shape[-1] != mix2[0].shape[-1]:
        raise ValueError(f"mix1 and mix2 must have the same rank, got {mix1[0].shape[-1]} and {mix2[0].shape[-1]}")
    table_len = (mix1 or mix2)[0].shape[1] if (mix1 or mix2) is not None else s
    valid = q_ if key_valid is None else key_valid[:, :s].to(torch.int8).contiguous()

    grid = (triton.cdiv(t, block_m), b * h)
    kernels.hyper_fwd_kernel[grid](
        q_, k_, v_, s1_, s2_, A1, B1, p1, A2, B2, p2, valid, out,
        t, s, offset, h, table_len, dk, dv, r, float(eps),
        GLU=glu, MIX1=mix1 is not None, MIX2=mix2 is not None, HAS_VALID=key_valid is not None,
        BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(dk)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
        BLOCK_R=triton.next_power_of_2(r),
    )
    return out


class _HyperTriton(torch.autograd.Function):
    """Forward on the Triton kernel; backward through the chunked path's hand-derived backward
    (it recomputes the forward block by block, nothing T x T is stored). Inputs: the keyword
    settings as a dict, key_valid, then q k v s1 s2 A1 B1 p1 A2 B2 p2 (None where absent)."""

    @staticmethod
    def forward(ctx, kw: dict, key_valid: Optional[Tensor], *flat: Optional[Tensor]) -> Tensor:
        q, k, v, s1, s2, A1, B1, p1, A2, B2, p2 = flat
        mix1 = None if A1 is None else Tables(A1, B1, p1)
        mix2 = None if A2 is None else Tables(A2, B2, p2)
        ctx.kw, ctx.key_valid = kw, key_valid
        ctx.save_for_backward(*flat)
        return _forward(q, k, v, s1, s2, mix1, mix2, key_valid=key_valid, **kw)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        flat = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            leaves = [None if x is None else x.detach().requires_grad_(need) for x, need in zip(flat, needs)]
            q, k, v, s1, s2, A1, B1, p1, A2, B2, p2 = leaves
            out = hyper_core_chunked(
                q, k, v, s1, s2,
                None if A1 is None else Tables(A1, B1, p1), None if A2 is None else Tables(A2, B2, p2),
                glu=ctx.kw["glu"], layout="lag", offset=ctx.kw["offset"], eps=ctx.kw["eps"],
                key_valid=ctx.key_valid, chunk_size=ctx.kw["block_m"],
            )
            wanted = [x for x, need in zip(leaves, needs) if x is not None and need]
            grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return (None, None, *(next(grads) if x is not None and need else None for x, need in zip(leaves, needs)))


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
    and keys per tile, powers of two). Differentiable in every tensor (module docstring: the
    backward is the chunked one). layout="left" runs the chunked path, with a warning."""
    check_layout(layout)
    if layout == "left":
        warnings.warn("impl='triton' has no kernel for layout='left' (an ablation); using the chunked path",
                      stacklevel=2)
        return hyper_core_chunked(q, k, v, s1, s2, mix1, mix2, glu=glu, layout=layout, offset=offset, eps=eps,
                                  key_valid=key_valid)
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 1 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two, got {size}")
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

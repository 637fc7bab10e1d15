"""The Hyper cores as ``torch.library`` custom ops, so that ``torch.compile`` sees each core as one
opaque operator: no graph break inside it (the chunked core's strided views, its ``out=`` writes
into non-contiguous buffers and its Python block loop stay out of the graph), shapes that may be
symbolic (``dynamic=True``: one graph for every sequence length), and an autograd formula of its
own (the core's hand-derived backward, itself a custom op).

    hypermlp::hyper_core_chunked            forward: (out, residuals), residuals only when kept
    hypermlp::hyper_core_chunked_backward   the 11 gradients (empty where none is needed)
    hypermlp::hyper_core_decode             one decoded token, no autograd
    hypermlp::hyper_core_triton[_backward]  the same for the Triton core, when ops/hyper/triton is
    hypermlp::hyper_core_decode_triton      present (``triton_op`` / ``triton_decode_op``, else None)

One schema serves every core (``CORE_SCHEMA``): the operands of ``CoreArgs.flat()`` (optional
gates and tables are ``Tensor?``), the key padding, then the settings. ``CoreOp(name, kernels)``
makes a core an op from a ``CoreKernels``: its forward (returning what its backward needs), its
backward, and the shapes of those residuals for tracing. Two exist: ``CHUNKED_KERNELS`` (the
chunked core: saves the raw readout, 1/rho and z A of each mixing; the backward recomputes per
block) and ``triton_kernels()`` (the Triton core's forward and fused backward). ``DecodeOp``
does the same for a decode step, which has no autograd.

Every tensor an op returns is contiguous (one copy, linear in T, where a core returns a
transposed view), so the tracing shapes are plain ``new_empty`` tensors whatever the core.
Precision is the cores' own (``precision.py``); autocast is off inside an op.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from . import chunked
from .chunked import CoreArgs, Settings
from .decode import hyper_core_decode
from .layout import check_layout
from .precision import autocast_off, compute_dtype
from .reference import Tables

Tensor = torch.Tensor

NAMESPACE = "hypermlp"

_OPERANDS = ("Tensor q, Tensor k, Tensor v, Tensor? s1, Tensor? s2, Tensor? A1, Tensor? B1, Tensor? p1, "
             "Tensor? A2, Tensor? B2, Tensor? p2, Tensor? key_valid")
CORE_SCHEMA = f"({_OPERANDS}, bool glu, str layout, SymInt offset, float eps, SymInt chunk, bool keep) -> (Tensor, Tensor[])"
BACKWARD_SCHEMA = (f"(Tensor grad_out, {_OPERANDS}, Tensor[] residuals, bool[] needs, bool glu, str layout, "
                   "SymInt offset, float eps, SymInt chunk) -> Tensor[]")
DECODE_SCHEMA = f"({_OPERANDS}, bool glu, str layout, float eps) -> Tensor"
N_OPERANDS = len(CoreArgs._fields) + 4  # q k v s1 s2 and the six table tensors: 11


@dataclass(frozen=True)
class CoreKernels:
    """What a core supplies to become a custom op (``args``: ``CoreArgs``, ``st``: ``Settings``).

    forward(args, key_valid, st, keep) -> (out (b, H, T, dv), residuals): the residuals are what
        backward needs beyond the inputs (a list; empty when ``keep`` is False).
    backward(grad_out, args, key_valid, st, residuals, needs) -> CoreArgs of gradients, None where
        ``needs`` (a CoreArgs of bools) is False.
    fake_residuals(args, st) -> the residuals' shapes and dtypes as empty tensors (for tracing).
    check(args, key_valid, glu, offset): raises on inputs the core cannot take, or None."""

    forward: Callable[..., Tuple[Tensor, List[Tensor]]]
    backward: Callable[..., CoreArgs]
    fake_residuals: Callable[..., List[Tensor]]
    check: Optional[Callable[..., None]] = None


# ----------------------------------------------------------------------------------------------
# the chunked core's kernels: its forward and hand-derived backward (chunked.py)


def _chunked_forward(args: CoreArgs, key_valid: Optional[Tensor], st: Settings, keep: bool):
    fwd = chunked._forward(chunked._prepare(args, key_valid, st), st, keep_u=keep)
    residuals = [fwd.o_raw, fwd.inv_rho, *(u for u in (fwd.u1, fwd.u2) if u is not None)] if keep else []
    return chunked._output(fwd, args.q.dtype), residuals


def _chunked_backward(grad_out: Tensor, args: CoreArgs, key_valid: Optional[Tensor], st: Settings,
                      residuals: Sequence[Tensor], needs: CoreArgs) -> CoreArgs:
    if not residuals:  # the forward ran with keep=False (a caller that said no gradient was needed)
        residuals = _chunked_forward(args, key_valid, st, keep=True)[1]
    ops = chunked._prepare(args, key_valid, st)  # the head-major copies again (linear in T)
    o_raw, inv_rho, *us = residuals
    u1 = us.pop(0) if args.mix1 is not None else None
    u2 = us.pop(0) if args.mix2 is not None else None
    specs = CoreArgs.from_flat([None if x is None else (x.shape, x.dtype) for x in args.flat()])
    return chunked._backward(ops, st, chunked.ForwardOut(o_raw, inv_rho, u1, u2), grad_out, needs, specs)


def _chunked_fake_residuals(args: CoreArgs, st: Settings) -> List[Tensor]:
    """o_raw (H, b, T, dv), 1/rho (H, b, T), z A of each mixing (heads, b, T, r): as chunked._forward."""
    q, v = args.q, args.v
    dtype = compute_dtype(q.dtype)
    batch, hq, t, _ = q.shape
    h, dv = v.shape[1], v.shape[3]
    out = [q.new_empty(h, batch, t, dv, dtype=dtype), q.new_empty(h, batch, t, dtype=dtype)]
    for heads, gate in ((hq, args.s1 if args.mix1 is not None else None), (h, args.s2 if args.mix2 is not None else None)):
        if gate is not None:
            out.append(q.new_empty(heads, batch, t, gate.shape[-1], dtype=dtype))
    return out


CHUNKED_KERNELS = CoreKernels(_chunked_forward, _chunked_backward, _chunked_fake_residuals)


# ----------------------------------------------------------------------------------------------
# the Triton core's kernels (ops/hyper/triton, when that package is present): its forward saves
# u1, u2, 1/rho and the raw readout, its fused backward reads them. layout="left" has no kernel
# there: it takes the chunked kernels, as hyper_core_triton does.


def triton_kernels() -> Optional[CoreKernels]:
    """``CoreKernels`` over ``ops/hyper/triton/core.py``, or None when that package is absent or
    does not have the pieces used here. Importing it does not import triton."""
    try:
        from .triton import core as tc
    except ImportError:
        return None
    if not all(hasattr(tc, n) for n in ("_prepare", "_launch_forward", "_launch_backward", "_check_shapes",
                                        "DEFAULT_BLOCK_M", "DEFAULT_BLOCK_N")):
        return None
    blocks = dict(block_m=tc.DEFAULT_BLOCK_M, block_n=tc.DEFAULT_BLOCK_N)

    def prepare(args: CoreArgs, key_valid):
        return tc._prepare(args.q, args.k, args.v, args.s1, args.s2, args.mix1, args.mix2, key_valid)

    def forward(args, key_valid, st, keep):
        if not st.lag:
            return _chunked_forward(args, key_valid, st, keep)
        ops, meta = prepare(args, key_valid)
        out = args.q.new_empty(args.q.shape[0], meta.h, meta.t, meta.dv)
        saved = tc._launch_forward(ops, meta, out, glu=st.glu, offset=st.offset, eps=st.eps, save=keep, **blocks)
        if not keep:
            return out, []
        u1, u2, inv_rho, o_raw = saved  # u of an absent mixing is a stand-in: not returned
        return out, [u1 if meta.mix1 else _empty(out), u2 if meta.mix2 else _empty(out), inv_rho, o_raw]

    def backward(grad_out, args, key_valid, st, residuals, needs):
        if not st.lag:
            return _chunked_backward(grad_out, args, key_valid, st, residuals, needs)
        if not residuals:
            residuals = forward(args, key_valid, st, keep=True)[1]
        ops, meta = prepare(args, key_valid)
        u1, u2, inv_rho, o_raw = residuals
        saved = (u1 if meta.mix1 else ops.q, u2 if meta.mix2 else ops.q, inv_rho, o_raw)
        grads = tc._launch_backward(ops, meta, saved, grad_out, glu=st.glu, offset=st.offset, **blocks)
        return CoreArgs.from_flat([None if g is None or not need else g.to(x.dtype)
                                   for g, need, x in zip(grads, needs.flat(), args.flat())])

    def fake_residuals(args, st):
        if not st.lag:
            return _chunked_fake_residuals(args, st)
        q, v = args.q, args.v
        dtype = compute_dtype(q.dtype)
        (batch, hq, t, _), h, dv = q.shape, v.shape[1], v.shape[3]

        def u(gate, heads):
            return _empty(q) if gate is None else q.new_empty(batch, heads, t, gate.shape[-1], dtype=dtype)

        s1 = args.s1 if args.mix1 is not None else None
        s2 = args.s2 if args.mix2 is not None else None
        return [u(s1, hq), u(s2, h), q.new_empty(batch, h, t, dtype=dtype), q.new_empty(batch, h, t, dv, dtype=dtype)]

    def check(args: CoreArgs, key_valid, glu: bool, offset: int):
        tc._check_shapes(args.q, args.k, args.v, args.s1, args.s2, args.mix1, args.mix2, glu, offset, key_valid)

    return CoreKernels(forward, backward, fake_residuals, check)


# ----------------------------------------------------------------------------------------------
# defining the ops


def _args(q, k, v, s1, s2, A1, B1, p1, A2, B2, p2) -> CoreArgs:
    return CoreArgs.from_flat((q, k, v, s1, s2, A1, B1, p1, A2, B2, p2))


def _empty(x: Tensor) -> Tensor:
    """The placeholder of a gradient nobody asked for (a custom op returns no None)."""
    return x.new_empty(0)


class CoreOp:
    """A core registered as ``<namespace>::<name>`` (+ ``_backward``); calling it takes the
    arguments of ``hyper_core_chunked`` and returns (b, H, T, dv), differentiable."""

    def __init__(self, name: str, kernels: CoreKernels, namespace: str = NAMESPACE):
        self.name = f"{namespace}::{name}"
        self.kernels = kernels
        fwd_op = torch.library.custom_op(self.name, mutates_args=(), schema=CORE_SCHEMA)(self._forward_impl)
        bwd_op = torch.library.custom_op(f"{self.name}_backward", mutates_args=(), schema=BACKWARD_SCHEMA)(
            self._backward_impl)
        fwd_op.register_fake(self._forward_fake)
        bwd_op.register_fake(self._backward_fake)
        fwd_op.register_autograd(self._backward_formula, setup_context=self._setup_context)
        self.forward_op, self.backward_op = fwd_op, bwd_op

    # -- the implementations (real tensors) -------------------------------------------------------
    def _forward_impl(self, q, k, v, s1, s2, A1, B1, p1, A2, B2, p2, key_valid, glu, layout, offset, eps, chunk, keep):
        st = Settings(glu=glu, layout=layout, offset=offset, eps=eps, chunk=chunk)
        with autocast_off(q.device):
            out, residuals = self.kernels.forward(_args(q, k, v, s1, s2, A1, B1, p1, A2, B2, p2), key_valid, st, keep)
        return out.contiguous(), [r.contiguous() for r in residuals]

    def _backward_impl(self, grad_out, q, k, v, s1, s2, A1, B1, p1, A2, B2, p2, key_valid, residuals, needs,
                       glu, layout, offset, eps, chunk):
        st = Settings(glu=glu, layout=layout, offset=offset, eps=eps, chunk=chunk)
        args = _args(q, k, v, s1, s2, A1, B1, p1, A2, B2, p2)
        with autocast_off(grad_out.device):
            grads = self.kernels.backward(grad_out, args, key_valid, st, list(residuals), CoreArgs.from_flat(needs))
        return [_empty(q) if g is None else g.contiguous() for g in grads.flat()]

    # -- the same shapes for tracing (fake tensors, symbolic sizes) -------------------------------
    def _forward_fake(self, q, k, v, s1, s2, A1, B1, p1, A2, B2, p2, key_valid, glu, layout, offset, eps, chunk, keep):
        st = Settings(glu=glu, layout=layout, offset=offset, eps=eps, chunk=chunk)
        out = q.new_empty(q.shape[0], v.shape[1], q.shape[2], v.shape[3])
        residuals = self.kernels.fake_residuals(_args(q, k, v, s1, s2, A1, B1, p1, A2, B2, p2), st) if keep else []
        return out, residuals

    def _backward_fake(self, grad_out, q, k, v, s1, s2, A1, B1, p1, A2, B2, p2, key_valid, residuals, needs,
                       glu, layout, offset, eps, chunk):
        flat = (q, k, v, s1, s2, A1, B1, p1, A2, B2, p2)
        return [x.new_empty(x.shape) if x is not None and need else _empty(q) for x, need in zip(flat, needs)]

    # -- autograd: the backward op ----------------------------------------------------------------
    @staticmethod
    def _setup_context(ctx, inputs, output):
        *operands, key_valid, glu, layout, offset, eps, chunk, keep = inputs
        _, residuals = output
        ctx.save_for_backward(*operands, key_valid, *residuals)
        ctx.settings = (glu, layout, offset, eps, chunk)

    def _backward_formula(self, ctx, grad_out, _grad_residuals):
        saved = ctx.saved_tensors
        operands, key_valid, residuals = saved[:N_OPERANDS], saved[N_OPERANDS], saved[N_OPERANDS + 1:]
        needs = [bool(n) and x is not None for n, x in zip(ctx.needs_input_grad[:N_OPERANDS], operands)]
        grads = self.backward_op(grad_out.contiguous(), *operands, key_valid, list(residuals), needs, *ctx.settings)
        return (*(g if need else None for g, need in zip(grads, needs)), *(None,) * 7)

    # -- the public call --------------------------------------------------------------------------
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, s1: Optional[Tensor], s2: Optional[Tensor],
                 mix1: Optional[Tables], mix2: Optional[Tables], *, glu: bool, layout: str = "lag", offset: int = 0,
                 eps: float = 1e-12, key_valid: Optional[Tensor] = None, chunk_size: int = 64) -> Tensor:
        check_layout(layout)
        args = CoreArgs(q, k, v, None if mix1 is None else s1, None if mix2 is None else s2,
                        None if mix1 is None else Tables(*mix1), None if mix2 is None else Tables(*mix2))
        if self.kernels.check is not None:
            self.kernels.check(args, key_valid, glu, offset)
        flat = args.flat()
        keep = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in flat)
        out, _ = self.forward_op(*flat, key_valid, glu, layout, offset, float(eps), max(1, int(chunk_size)), keep)
        return out


class DecodeOp:
    """A one-token decode step (``hyper_core_decode``'s signature) registered as
    ``<namespace>::<name>``; no autograd (``hyper_core`` sends only no-grad calls here)."""

    def __init__(self, name: str, fn: Callable[..., Tensor], namespace: str = NAMESPACE):
        self.name = f"{namespace}::{name}"
        self.fn = fn
        op = torch.library.custom_op(self.name, mutates_args=(), schema=DECODE_SCHEMA)(self._impl)
        op.register_fake(self._fake)
        self.op = op

    def _impl(self, q, k, v, s1, s2, A1, B1, p1, A2, B2, p2, key_valid, glu, layout, eps):
        args = _args(q, k, v, s1, s2, A1, B1, p1, A2, B2, p2)
        return self.fn(*args, glu=glu, layout=layout, eps=eps, key_valid=key_valid).contiguous()

    @staticmethod
    def _fake(q, k, v, s1, s2, A1, B1, p1, A2, B2, p2, key_valid, glu, layout, eps):
        return q.new_empty(q.shape[0], v.shape[1], 1, v.shape[3])

    def __call__(self, q, k, v, s1, s2, mix1, mix2, *, glu: bool, layout: str = "lag", offset: Optional[int] = None,
                 eps: float = 1e-12, key_valid: Optional[Tensor] = None) -> Tensor:
        check_layout(layout)
        if q.shape[2] != 1 or (offset is not None and offset != k.shape[2] - 1):
            raise ValueError(f"decode takes one query at position S-1 = {k.shape[2] - 1}, got T = {q.shape[2]}, "
                             f"offset = {offset}")
        args = CoreArgs(q, k, v, None if mix1 is None else s1, None if mix2 is None else s2,
                        None if mix1 is None else Tables(*mix1), None if mix2 is None else Tables(*mix2))
        return self.op(*args.flat(), key_valid, glu, layout, float(eps))


# ----------------------------------------------------------------------------------------------
# the library's ops: registered once, at import

chunked_op = CoreOp("hyper_core_chunked", CHUNKED_KERNELS)
decode_op = DecodeOp("hyper_core_decode", hyper_core_decode)


def _triton_ops():
    kernels = triton_kernels()
    if kernels is None:
        return None, None
    from .triton import hyper_core_decode_triton

    return CoreOp("hyper_core_triton", kernels), DecodeOp("hyper_core_decode_triton", hyper_core_decode_triton)


triton_op, triton_decode_op = _triton_ops()  # None without ops/hyper/triton

"""The one input factory of the ops tests: small float64 inputs of the Hyper core."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from hypermlp.ops import Tables

DT = torch.float64


class Inputs(NamedTuple):
    q: torch.Tensor  # (b, Hq, T, dk)
    k: torch.Tensor  # (b, Hq, S, dk)
    v: torch.Tensor  # (b, H, S, dv)
    s1: Optional[torch.Tensor]  # (b, Hq, T, r)
    s2: Optional[torch.Tensor]  # (b, H, T, r)
    mix1: Optional[Tables]
    mix2: Optional[Tables]
    key_valid: Optional[torch.Tensor]  # (b, S) bool

    def leaves(self) -> List[Tuple[str, torch.Tensor]]:
        """(name, tensor) of every differentiable input present: q k v s1 s2 A1 B1 p1 A2 B2 p2."""
        out = [("q", self.q), ("k", self.k), ("v", self.v), ("s1", self.s1), ("s2", self.s2)]
        for i, mix in ((1, self.mix1), (2, self.mix2)):
            if mix is not None:
                out += [(f"{name}{i}", t) for name, t in zip(Tables._fields, mix)]
        return [(n, t) for n, t in out if t is not None]

    def map(self, fn) -> "Inputs":
        """The same inputs with ``fn`` applied to every tensor but ``key_valid``, as fresh leaves
        that require grad (e.g. ``inputs.map(lambda x: x.to(torch.float16))``)."""

        def leaf(x):
            return None if x is None else fn(x.detach()).detach().requires_grad_()

        def tables(mix):
            return None if mix is None else Tables(*(leaf(t) for t in mix))

        return Inputs(leaf(self.q), leaf(self.k), leaf(self.v), leaf(self.s1), leaf(self.s2),
                      tables(self.mix1), tables(self.mix2), self.key_valid)

    def call(self, fn, **kw) -> torch.Tensor:
        return fn(self.q, self.k, self.v, self.s1, self.s2, self.mix1, self.mix2, key_valid=self.key_valid, **kw)


def make_inputs(glu: bool, *, batch=2, heads=2, t=11, offset=0, dk=3, dv=4, r=3, max_len=24, padding=False,
                mixes=(True, True), seed=0) -> Inputs:
    """Random inputs at positions offset .. offset+t-1 against S = offset + t keys, everything
    requiring grad. ``padding``: left padding of a different length per row, a hole in the
    middle, the last key valid. ``mixes``: whether R(1), R(2) are on (their gates too)."""
    g = torch.Generator().manual_seed(seed)
    hq = 2 * heads if glu else heads
    s = offset + t

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_()

    def tables(h):
        return Tables(rnd(h, max_len, r, scale=0.4), rnd(h, max_len, r, scale=0.4), rnd(h, max_len, scale=0.4))

    q, k, v = rnd(batch, hq, t, dk), rnd(batch, hq, s, dk), rnd(batch, heads, s, dv)
    s1 = torch.rand(batch, hq, t, r, generator=g, dtype=DT).requires_grad_() if mixes[0] else None
    s2 = torch.rand(batch, heads, t, r, generator=g, dtype=DT).requires_grad_() if mixes[1] else None
    mix1 = tables(hq) if mixes[0] else None
    mix2 = tables(heads) if mixes[1] else None
    key_valid = None
    if padding:
        key_valid = torch.ones(batch, s, dtype=torch.bool)
        for b in range(batch):
            key_valid[b, : (2 * b + 1) % max(s - 1, 1)] = False
        key_valid[:, s // 2] = False
        key_valid[:, -1] = True
    return Inputs(q, k, v, s1, s2, mix1, mix2, key_valid)

"""The mixers the benchmark runs: their names, in table order, and how each layer is built.

Every layer is the registry's (``hypermlp.registry``) at its defaults; ``<mixer>-ref`` is the
same layer through the readable reference core, a Python loop over positions.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..registry import get_mixer

# the order of every table and plot; softmax attention is the 1.00 of every ratio
MIXERS = ["softmax", "relu", "hyperglu", "hypermlp"]
REFERENCE_SUFFIX = "-ref"
LAYER_MIXERS = MIXERS + [m + REFERENCE_SUFFIX for m in ("hyperglu", "hypermlp")]


def make_layer(name: str, d_model: int, max_len: int, chunk_size: Optional[int] = None) -> torch.nn.Module:
    """The registry's layer for ``name``; ``<mixer>-ref`` runs the reference core, every other
    Hyper-family layer the chunked one (softmax attention takes neither argument)."""
    reference = name.endswith(REFERENCE_SUFFIX)
    spec = get_mixer(name[: -len(REFERENCE_SUFFIX)] if reference else name)
    args = {"impl": "reference" if reference else "chunked"}
    if chunk_size is not None:
        args["chunk_size"] = chunk_size
    return spec.build(d_model, max_len, args)  # drops the arguments the layer does not take


def layer_description(layer) -> str:
    """One line of what a layer is: heads, ranks, conv, gates, chunk (or SDPA for softmax)."""
    c = layer.config
    if hasattr(c, "seq_rank"):
        parts = [f"{c.n_heads} heads", f"qk_rank {c.qk_rank}", f"vo_rank {c.vo_rank}"]
        if c.mix1 or c.mix2:
            parts.append(f"seq_rank {c.seq_rank}")
        parts += [f"conv {c.conv_size}", "gates" if (c.qk_gate or c.out_gate) else "no gates", f"chunk {c.chunk_size or 'by device'}"]
    else:
        parts = [f"{c.n_heads} heads of {c.qk_rank // c.n_heads}", "SDPA", "RoPE" if c.rope else "no RoPE"]
    return ", ".join(parts)

"""Load the parameters of the authors' reference layer (class ``HyperGLU``, docs/math.md §9).

Mapping (authors' name -> ours; L = max_len, h = n_heads, Hq = score heads = 2h for GLU, h for
the ReLU kind):

| authors'                          | ours                        | conversion                       |
|-----------------------------------|-----------------------------|----------------------------------|
| q.weight, k.weight, v.weight      | q_proj/k_proj/v_proj.weight | none                             |
| c_proj.weight                     | o_proj.weight               | none                             |
| conv1.conv.weight (feeds K)       | conv_k.weight               | none, (d, 1, kernel)             |
| conv2.conv.weight (feeds V)       | conv_v.weight               | none                             |
| left_gate.weight / .bias          | q_gate.weight / .bias       | none                             |
| right_gate.weight / .bias         | out_gate.weight / .bias     | none                             |
| control1.weight / .bias           | mix1_gate.weight / .bias    | none                             |
| control2.weight / .bias           | mix2_gate.weight / .bias    | none                             |
| op.mix.U   (Hq, L, r)             | seq_mix1.A (Hq, L, r)       | reverse rows (theirs: lag l at row L-1-l) |
| op.mix.Vt  (Hq, r, L)             | seq_mix1.B (Hq, L, r)       | transpose, reverse rows          |
| op.mix.d   (Hq, L)                | seq_mix1.p (Hq, L)          | reverse                          |
| op2.mix.U / Vt / d                | seq_mix2.A / B / p          | as op.mix, per readout head      |

Only the parameters that exist under the layer's switches are expected (no conv keys when
conv_size=0, and so on); anything missing, unexpected or of the wrong shape raises a ValueError
that lists what differs.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Tuple

import torch

from .layers.hyper import _HyperBase


def _identity(t):
    return t


def _reverse_rows(t):
    return t.flip(1)


def _transpose_reverse_rows(t):
    return t.transpose(1, 2).flip(1)


def reference_mapping(layer: _HyperBase) -> Dict[str, Tuple[str, Tuple[int, ...], Callable]]:
    """authors' key -> (our parameter name, expected shape of theirs, conversion)."""
    if not isinstance(layer, _HyperBase):
        raise TypeError(f"expected a HyperGLU or HyperMLP layer, got {type(layer).__name__}")
    c = layer.config
    d, L, r, hq, h = c.d_model, c.max_len, c.seq_rank, layer.qk_heads, layer.n_heads
    m = {
        "q.weight": ("q_proj.weight", (c.qk_rank, d), _identity),
        "k.weight": ("k_proj.weight", (c.qk_rank, d), _identity),
        "v.weight": ("v_proj.weight", (c.vo_rank, d), _identity),
        "c_proj.weight": ("o_proj.weight", (d, c.vo_rank), _identity),
    }
    if c.conv_size:
        m["conv1.conv.weight"] = ("conv_k.weight", (d, 1, c.conv_size), _identity)
        m["conv2.conv.weight"] = ("conv_v.weight", (d, 1, c.conv_size), _identity)
    if c.qk_gate:
        m["left_gate.weight"] = ("q_gate.weight", (c.qk_rank, d), _identity)
        m["left_gate.bias"] = ("q_gate.bias", (c.qk_rank,), _identity)
    if c.out_gate:
        m["right_gate.weight"] = ("out_gate.weight", (c.vo_rank, d), _identity)
        m["right_gate.bias"] = ("out_gate.bias", (c.vo_rank,), _identity)
    for idx, (on, heads, prefix) in enumerate(((c.mix1, hq, "op"), (c.mix2, h, "op2")), start=1):
        if not on:
            continue
        m[f"control{idx}.weight"] = (f"mix{idx}_gate.weight", (heads * r, d), _identity)
        m[f"control{idx}.bias"] = (f"mix{idx}_gate.bias", (heads * r,), _identity)
        m[f"{prefix}.mix.U"] = (f"seq_mix{idx}.A", (heads, L, r), _reverse_rows)
        m[f"{prefix}.mix.Vt"] = (f"seq_mix{idx}.B", (heads, r, L), _transpose_reverse_rows)
        m[f"{prefix}.mix.d"] = (f"seq_mix{idx}.p", (heads, L), _reverse_rows)
    return m


def load_reference_state_dict(layer: _HyperBase, state_dict: Mapping[str, torch.Tensor]) -> _HyperBase:
    """Copy the authors' layer parameters into ``layer`` (built with the matching settings).

    Afterwards both compute the same function (to float tolerance). Raises ValueError naming every
    missing key, unexpected key and shape mismatch.
    """
    mapping = reference_mapping(layer)
    given = dict(state_dict)
    missing = sorted(set(mapping) - set(given))
    unexpected = sorted(set(given) - set(mapping))
    wrong = [
        f"{key}: expected {tuple(shape)}, got {tuple(given[key].shape)}"
        for key, (_, shape, _) in mapping.items()
        if key in given and tuple(given[key].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong))
    if problems:
        c = layer.config
        raise ValueError(
            f"reference state dict does not match {type(layer).__name__}(d_model={c.d_model}, "
            f"n_heads={c.n_heads}, max_len={c.max_len}, qk_rank={c.qk_rank}, vo_rank={c.vo_rank}, "
            f"seq_rank={c.seq_rank}, conv_size={c.conv_size}, qk_gate={c.qk_gate}, out_gate={c.out_gate}, "
            f"mix1={c.mix1}, mix2={c.mix2}): " + " | ".join(problems)
        )
    ours = dict(layer.named_parameters())
    with torch.no_grad():
        for key, (name, _, convert) in mapping.items():
            ours[name].copy_(convert(given[key].to(ours[name].dtype)))
    return layer

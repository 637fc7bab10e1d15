"""The precision policy of the Hyper core (README.md, "Precision"), in one place.

float16 and bfloat16 inputs are computed in float32: the three twins cast their inputs to
``compute_dtype`` once per call (linear in T), run every block, reduction and normalisation in it,
and cast the output (and the gradients) back to the input dtypes. float32 and float64 inputs are
computed in their own dtype; for them the casts are no-ops (``Tensor.to`` returns the tensor
itself), so they pay nothing. Inside the core autocast is switched off (``autocast_off``), else it
would run the float32 matmuls in half again.
"""

from __future__ import annotations

import contextlib

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the core computes in for inputs of ``dtype``: float32 for float16, bfloat16 and
    float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def autocast_off(device: torch.device):
    """A context that switches autocast off for ``device``'s type when it is on; else a no-op."""
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()

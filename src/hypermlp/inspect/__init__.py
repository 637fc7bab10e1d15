"""Looking inside a trained model (docs/math.md §2): the three-stage memory of the Hyper core,
slots instantiated by the context and mixed by R(1), a subset activated per token, R(2) and the
readout turning them into the output; and the same pictures for the softmax and ReLU-attention
baselines.

    probe.py    probe(model, tokens) -> {layer: LayerProbe}: the per-token intermediates of each
                chosen layer's core, computed by the readable reference path (the fast paths
                are untouched); flip_layout, active_fraction, mixing_operator
    plots.py    the PNGs: activated memory, sparsity, mixing operators, GLU routing vs magnitude
    source.py   what to look at: a checkpoint, the prompt's or task example's tokens, a batch of
                validation data
    report.py   run_inspect(...): the PNGs and inspect.md for one input (``hypermlp inspect``)

matplotlib is imported only when plots are drawn.
"""

from .probe import (AttentionTrace, InspectError, LayerProbe, active_fraction, flip_layout, mixer_kind,
                    mixing_operator, probe)
from .report import run_inspect

__all__ = [
    "AttentionTrace",
    "InspectError",
    "LayerProbe",
    "active_fraction",
    "flip_layout",
    "mixer_kind",
    "mixing_operator",
    "probe",
    "run_inspect",
]

"""The registry of sequence mixers: every mixer name the library knows, in one place.

A name maps to a ``MixerSpec``: the layer class, its config dataclass, and the config fields the
layer fixes itself (ReLU attention is HyperMLP with both mixings off, so it takes no
``seq_rank``, ``mix1``, ``mix2`` or ``layout``). The language model, the parameter budgets, the
benchmark, ``compare`` and the CLI all read this table; adding a mixer means one
``register_mixer`` call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Tuple

import torch.nn as nn

from .config import ConfigError, score_heads
from .layers import HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

__all__ = ["MixerSpec", "MIXERS", "get_mixer", "mixer_names", "register_mixer"]

# set by the model around the mixer, never per mixer
MODEL_LEVEL_ARGS = ("d_model", "max_len")


@dataclass(frozen=True)
class MixerSpec:
    """What a mixer name stands for."""

    name: str
    layer_cls: type  # an nn.Module taking (config=None, **kwargs); forward(x, cache=None, mask=None)
    config_cls: type  # its config dataclass
    summary: str  # one line for help texts and reports

    @property
    def glu(self) -> bool:
        """HyperGLU-style score heads: a gate and a scale branch per readout head."""
        return bool(getattr(self.layer_cls, "glu", False))

    @property
    def fixed_args(self) -> Tuple[str, ...]:
        """Config fields the layer sets itself and refuses as arguments."""
        return tuple(getattr(self.layer_cls, "fixed_args", ()))

    def score_heads(self, n_heads: int) -> int:
        """Number of Q/K heads for ``n_heads`` readout heads."""
        return score_heads(n_heads, self.glu)

    def accepted_args(self) -> FrozenSet[str]:
        """The keyword arguments this mixer takes besides ``d_model`` and ``max_len``."""
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        return frozenset(names - set(self.fixed_args) - set(MODEL_LEVEL_ARGS))

    def layer_config(self, d_model: int, **mixer_args):
        """The layer's config with defaults filled in, from the arguments that apply to it
        (``max_len`` defaults to the config's). Not validated."""
        args = {k: v for k, v in mixer_args.items() if k in self.accepted_args() or k == "max_len"}
        return self.config_cls(d_model=d_model, **args)

    def build(self, d_model: int, max_len: int, mixer_args: Dict) -> nn.Module:
        """The layer, taking from ``mixer_args`` only the arguments that apply to it (a hybrid
        model passes one argument set to mixers of several families)."""
        args = {k: v for k, v in mixer_args.items() if k in self.accepted_args()}
        return self.layer_cls(d_model=d_model, max_len=max_len, **args)


MIXERS: Dict[str, MixerSpec] = {}


def register_mixer(spec: MixerSpec) -> MixerSpec:
    """Add a mixer under ``spec.name`` (an error if the name is taken)."""
    if spec.name in MIXERS:
        raise ConfigError(f"mixer {spec.name!r} is already registered")
    MIXERS[spec.name] = spec
    return spec


def mixer_names() -> List[str]:
    """The registered names, in registration order (baselines first)."""
    return list(MIXERS)


def get_mixer(name: str) -> MixerSpec:
    """The spec of ``name``; a ConfigError listing the known names otherwise."""
    if not isinstance(name, str) or name not in MIXERS:
        raise ConfigError(f"unknown mixer {name!r}; choose from {mixer_names()}")
    return MIXERS[name]


for _spec in (
    MixerSpec("softmax", SoftmaxAttention, SoftmaxAttention.config_cls, "causal softmax attention (SDPA) with RoPE"),
    MixerSpec("relu", ReLUAttention, ReLUAttention.config_cls, "ReLU(L2Norm) attention: HyperMLP without R(1), R(2)"),
    MixerSpec("hypermlp", HyperMLP, HyperMLP.config_cls, "HyperMLP: ReLU(L2Norm) between two lag-indexed DPLR mixings"),
    MixerSpec("hyperglu", HyperGLU, HyperGLU.config_cls, "HyperGLU: gated HyperMLP, softplus(scale) * ReLU(L2Norm(gate))"),
):
    register_mixer(_spec)

"""The registry of sequence mixers: every mixer name the library knows, in one place.

A name maps to a ``MixerSpec``: the layer class, its config dataclass, and the config fields the
layer fixes itself (ReLU attention is HyperMLP with both mixings off, so it takes no
``seq_rank``, ``mix1``, ``mix2`` or ``layout``). The language model, the parameter budgets, the
benchmark, ``compare`` and the CLI all read this table; adding a mixer means one
``register_mixer`` call.

Variant names (``hypermlp.variants``, e.g. ``R-cg-q-12o``) resolve here too: ``get_mixer`` turns
one into a spec of its registered mixer whose letters' arguments are defaults under the model's
``mixer_args``. Registered names are looked up first and keep their meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import torch.nn as nn

from .config import ConfigError, score_heads
from .layers import HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention
from .variants import Variant, looks_like_variant, parse_variant

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
    variant: Optional[Variant] = None  # set when ``name`` is a variant name of the registered mixer ``base``

    @property
    def base(self) -> str:
        """The registered mixer this spec builds (its own name, unless it is a variant)."""
        return self.variant.mixer if self.variant is not None else self.name

    @property
    def overparameterised(self) -> bool:
        """A ``!`` variant: an upper bound that budget matching leaves alone."""
        return self.variant is not None and self.variant.overparameterised

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

    def defaults(self, d_model: int) -> Dict[str, Any]:
        """The arguments a variant's letters give at width ``d_model`` (none for a registered name)."""
        return self.variant.layer_args(d_model) if self.variant is not None else {}

    def layer_args(self, d_model: int, mixer_args: Dict) -> Dict[str, Any]:
        """The variant's defaults under the arguments of ``mixer_args`` that apply to this mixer
        (a hybrid model passes one argument set to mixers of several families)."""
        accepted = self.accepted_args()
        return {**self.defaults(d_model), **{k: v for k, v in mixer_args.items() if k in accepted}}

    def layer_config(self, d_model: int, **mixer_args):
        """The layer's config with defaults filled in, from the arguments that apply to it
        (``max_len`` defaults to the config's). Not validated."""
        args = self.layer_args(d_model, mixer_args)
        if "max_len" in mixer_args:
            args["max_len"] = mixer_args["max_len"]
        return self.config_cls(d_model=d_model, **args)

    def build(self, d_model: int, max_len: int, mixer_args: Dict) -> nn.Module:
        """The layer, taking from ``mixer_args`` only the arguments that apply to it, over a
        variant's defaults."""
        return self.layer_cls(d_model=d_model, max_len=max_len, **self.layer_args(d_model, mixer_args))


MIXERS: Dict[str, MixerSpec] = {}


_VARIANT_SPECS: Dict[str, MixerSpec] = {}  # variant name -> its spec, built on first use


def register_mixer(spec: MixerSpec) -> MixerSpec:
    """Add a mixer under ``spec.name`` (an error if the name is taken or reads as a variant name)."""
    if spec.name in MIXERS:
        raise ConfigError(f"mixer {spec.name!r} is already registered")
    if looks_like_variant(spec.name) or spec.variant is not None:
        raise ConfigError(f"mixer name {spec.name!r} reads as a variant name (one-letter first segment); pick another")
    MIXERS[spec.name] = spec
    return spec


def mixer_names() -> List[str]:
    """The registered names, in registration order (baselines first)."""
    return list(MIXERS)


def get_mixer(name: str) -> MixerSpec:
    """The spec of ``name``: a registered mixer, or a variant name (``hypermlp.variants``) built
    from one. A ConfigError naming the letter at fault for a bad variant name, listing the known
    names otherwise."""
    if isinstance(name, str) and name in MIXERS:
        return MIXERS[name]
    if looks_like_variant(name):
        if name not in _VARIANT_SPECS:
            variant = parse_variant(name)  # a bad letter -> ConfigError naming it
            base = MIXERS[variant.mixer]
            _VARIANT_SPECS[name] = dataclasses.replace(base, name=name, summary=variant.describe(), variant=variant)
        return _VARIANT_SPECS[name]
    raise ConfigError(f"unknown mixer {name!r}; choose from {mixer_names()} or a variant name such as R-cg-q-12o")


for _spec in (
    MixerSpec("softmax", SoftmaxAttention, SoftmaxAttention.config_cls, "causal softmax attention (SDPA) with RoPE"),
    MixerSpec("relu", ReLUAttention, ReLUAttention.config_cls, "ReLU(L2Norm) attention: HyperMLP without R(1), R(2)"),
    MixerSpec("hypermlp", HyperMLP, HyperMLP.config_cls, "HyperMLP: ReLU(L2Norm) between two lag-indexed DPLR mixings"),
    MixerSpec("hyperglu", HyperGLU, HyperGLU.config_cls, "HyperGLU: gated HyperMLP, softplus(scale) * ReLU(L2Norm(gate))"),
):
    register_mixer(_spec)

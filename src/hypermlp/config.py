"""Configuration dataclasses for the sequence mixers.

One dataclass per family: ``HyperConfig`` for HyperMLP / HyperGLU / ReLU attention (they share
the projections, conv, gates and the lag-layout core), ``AttentionConfig`` for softmax attention.
Defaults are the paper's (docs/math.md §2) and the authors' layer's (§9). ``validate()`` turns a
bad value into a ``ConfigError`` that names the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import torch

from .ops.hyper import IMPLS
from .ops.hyper.layout import LAYOUTS


# Query block of the chunked Hyper core by device type, when HyperConfig.chunk_size is None. A block
# is a handful of (heads, b, C, S) buffers and a few dozen small kernels. On CPU, 64 (what every CPU
# benchmark and test of this project ran with) keeps a block's buffers small; on a GPU the Python
# loop and the per-block kernel launches dominate at small C, so 4x fewer, larger blocks (at
# T = 8k, batch 4, 4 score heads, one fp32 block buffer is 128 MiB: still far below the GPU's memory).
CHUNK_SIZE = {"cpu": 64, "cuda": 256}


class ConfigError(ValueError):
    """An invalid layer or model configuration."""


def score_heads(n_heads: int, glu: bool) -> int:
    """Q/K (score) heads of a layer with ``n_heads`` readout heads: HyperGLU pairs two score heads
    per readout head (a gate branch ``0..n_heads-1`` and a scale branch ``n_heads..2n_heads-1``,
    docs/math.md §2.6); every other mixer has one."""
    return 2 * n_heads if glu else n_heads


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


@dataclass
class HyperConfig:
    """Settings of a HyperMLP / HyperGLU layer (and of ReLU attention, which is HyperMLP with
    both sequence mixings off)."""

    d_model: int
    n_heads: int = 2
    max_len: int = 1024
    qk_rank: Optional[int] = None  # total Q/K width over all score heads; default d_model // 4
    vo_rank: Optional[int] = None  # total V width over all readout heads; default d_model
    seq_rank: int = 16  # rank r of the DPLR sequence mixings R(1), R(2)
    conv_size: int = 4  # kernel of the causal depthwise convs on K and V inputs; 0 = off
    qk_gate: bool = True  # sigmoid feature gate on q
    out_gate: bool = True  # sigmoid feature gate on the per-head readout
    rope: bool = False
    mix1: bool = True  # R(1) on the scores
    mix2: bool = True  # R(2) on the activated scores
    layout: str = "lag"  # "lag" (tables indexed by lag) or "left" (ablation, see ops)
    rho_eps: float = 1e-12  # rho(z) = sqrt(||z||^2 + rho_eps), docs/math.md §2.6
    impl: str = "chunked"  # "reference" (readable ground truth) or "chunked"
    chunk_size: Optional[int] = None  # query block of the chunked core; None: by device (CHUNK_SIZE)
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.qk_rank is None and isinstance(self.d_model, int):
            self.qk_rank = max(self.d_model // 4, 1)
        if self.vo_rank is None:
            self.vo_rank = self.d_model

    def validate(self, glu: bool) -> "HyperConfig":
        for name in ("d_model", "n_heads", "max_len", "qk_rank", "vo_rank", "seq_rank"):
            _check_positive_int(name, getattr(self, name))
        if self.chunk_size is not None:
            _check_positive_int("chunk_size", self.chunk_size)
        if isinstance(self.conv_size, bool) or not isinstance(self.conv_size, int) or self.conv_size < 0:
            raise ConfigError(f"conv_size must be an integer >= 0 (0 turns the conv off), got {self.conv_size!r}")
        for name in ("qk_gate", "out_gate", "rope", "mix1", "mix2"):
            _check_bool(name, getattr(self, name))
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.impl not in IMPLS:
            raise ConfigError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if isinstance(self.rho_eps, bool) or not (isinstance(self.rho_eps, (int, float)) and self.rho_eps > 0):
            raise ConfigError(f"rho_eps must be a positive number, got {self.rho_eps!r}")
        qk_heads = score_heads(self.n_heads, glu)
        if self.qk_rank % qk_heads:
            raise ConfigError(
                f"qk_rank={self.qk_rank} must be divisible by the number of score heads "
                f"({qk_heads} = {'2 x ' if glu else ''}n_heads)"
            )
        if self.vo_rank % self.n_heads:
            raise ConfigError(f"vo_rank={self.vo_rank} must be divisible by n_heads={self.n_heads}")
        if self.rope and (self.qk_rank // qk_heads) % 2:
            raise ConfigError(f"rope needs an even per-head Q/K width, got {self.qk_rank // qk_heads}")
        return self

    def chunk_for(self, device: torch.device) -> int:
        """The chunked core's query block on ``device``: ``chunk_size``, or ``CHUNK_SIZE`` by device."""
        if self.chunk_size is not None:
            return self.chunk_size
        return CHUNK_SIZE.get(device.type, CHUNK_SIZE["cpu"])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttentionConfig:
    """Settings of the softmax-attention baseline (causal SDPA)."""

    d_model: int
    n_heads: int = 4
    max_len: int = 1024
    qk_rank: Optional[int] = None  # default d_model
    vo_rank: Optional[int] = None  # default d_model
    conv_size: int = 0
    qk_gate: bool = False
    out_gate: bool = False
    rope: bool = True
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.qk_rank is None:
            self.qk_rank = self.d_model
        if self.vo_rank is None:
            self.vo_rank = self.d_model

    def validate(self) -> "AttentionConfig":
        for name in ("d_model", "n_heads", "max_len", "qk_rank", "vo_rank"):
            _check_positive_int(name, getattr(self, name))
        if isinstance(self.conv_size, bool) or not isinstance(self.conv_size, int) or self.conv_size < 0:
            raise ConfigError(f"conv_size must be an integer >= 0 (0 turns the conv off), got {self.conv_size!r}")
        for name in ("qk_gate", "out_gate", "rope"):
            _check_bool(name, getattr(self, name))
        if self.qk_rank % self.n_heads:
            raise ConfigError(f"qk_rank={self.qk_rank} must be divisible by n_heads={self.n_heads}")
        if self.vo_rank % self.n_heads:
            raise ConfigError(f"vo_rank={self.vo_rank} must be divisible by n_heads={self.n_heads}")
        if self.rope and (self.qk_rank // self.n_heads) % 2:
            raise ConfigError(f"rope needs an even per-head Q/K width, got {self.qk_rank // self.n_heads}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def build_config(cls, config, kwargs: dict):
    """Return ``config`` or ``cls(**kwargs)``, with a clear error for unknown keywords."""
    if config is not None:
        if kwargs:
            raise ConfigError("pass either config=... or keyword arguments, not both")
        if not isinstance(config, cls):
            raise ConfigError(f"config must be a {cls.__name__}, got {type(config).__name__}")
        return config
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    if "d_model" not in kwargs:
        raise ConfigError("d_model is required")
    return cls(**kwargs)

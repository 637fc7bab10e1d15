"""hypermlp: HyperMLP and HyperGLU sequence mixers (arXiv 2602.12601) and their baselines."""

from .config import AttentionConfig, ConfigError, HyperConfig
from .layers import HyperGLU, HyperMLP, LayerCache, ReLUAttention, SoftmaxAttention

__version__ = "0.1.0"

__all__ = [
    "HyperMLP",
    "HyperGLU",
    "ReLUAttention",
    "SoftmaxAttention",
    "HyperConfig",
    "AttentionConfig",
    "ConfigError",
    "LayerCache",
]

"""Sequence mixers, one interface: layer(x, cache=None, mask=None) maps (B, T, d) to (B, T, d)."""

from .attention import SoftmaxAttention
from .cache import LayerCache
from .hyper import HyperGLU, HyperMLP, ReLUAttention

__all__ = ["HyperMLP", "HyperGLU", "ReLUAttention", "SoftmaxAttention", "LayerCache"]

"""Core operators: each fast path sits beside its readable reference."""

from .hyper_chunked import hyper_core_chunked, skew, unskew
from .hyper_reference import hyper_core_reference

__all__ = ["hyper_core_reference", "hyper_core_chunked", "skew", "unskew"]

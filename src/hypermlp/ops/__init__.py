"""Core operators, laid out like flash-linear-attention's ``fla/ops/<op>/``: each op is a folder
with its dispatcher (``__init__.py``), its readable reference and its fast paths side by side.

    hyper/   the HyperMLP / HyperGLU core: ``hyper_core`` (dispatcher), reference, chunked, decode
"""

from .hyper import (
    Tables,
    hyper_core,
    hyper_core_chunked,
    hyper_core_decode,
    hyper_core_reference,
    skew,
    table_rows,
    unskew,
)

__all__ = [
    "Tables",
    "hyper_core",
    "hyper_core_chunked",
    "hyper_core_decode",
    "hyper_core_reference",
    "skew",
    "table_rows",
    "unskew",
]

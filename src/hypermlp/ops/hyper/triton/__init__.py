"""The Hyper core on Triton kernels (docs/math.md §2.4 - §2.8); README.md one folder up, "Triton
kernel", derives them.

    kernels.py  hyper_fwd_kernel          the @triton.jit forward (imports triton)
    core.py     hyper_core_triton         the autograd entry point, same contract as the chunked core
                hyper_core_decode_triton  one query at the end of the keys, no grad

Importing this package does not import triton: ``core.py`` imports ``kernels.py`` on first use
and raises a clear ImportError when triton is missing (``available()`` says whether it imports).
"""

from .core import available, hyper_core_decode_triton, hyper_core_triton

__all__ = ["available", "hyper_core_decode_triton", "hyper_core_triton"]

"""Compile the Triton kernels for an NVIDIA target without a GPU: Triton's code generator down to
PTX, then the ptxas bundled with triton for the register and spill counts.

The interpreter (the CPU tests) runs the kernels' Python, not the GPU compiler, so it cannot see
what only the compiler rejects (a layout the backend has no lowering for, float64 tl.dot, ...)
or what spills. This does, on any machine with triton installed:

    python -m hypermlp.ops.hyper.triton.compile_check --arch 90

Run it in a process without TRITON_INTERPRET (the kernels must be decorated for the compiler).
tests/ops/test_triton.py runs ``check`` on a few variants in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple

# (name, dtype, glu, mix1, mix2, BLOCK_M, BLOCK_N, BLOCK_R); the decode step is BLOCK_M = 1
VARIANTS = [
    ("fwd", "fp32", True, True, True, 16, 32, 16),
    ("fwd", "fp32", False, True, True, 16, 32, 16),
    ("fwd", "fp32", True, False, False, 16, 32, 16),
    ("fwd", "fp32", True, True, True, 1, 64, 16),
    ("fwd", "fp64", True, True, True, 16, 16, 4),
    ("bwd", "fp32", True, True, True, 16, 32, 16),
    ("bwd", "fp32", False, True, True, 16, 32, 16),
    ("bwd", "fp32", True, False, False, 16, 32, 16),
    ("bwd", "fp64", True, True, True, 16, 16, 4),
]

_INTS = {"T", "S", "offset", "H", "L", "DK", "DV", "R"}


class Compiled(NamedTuple):
    variant: tuple
    registers: int
    spill_bytes: int  # spill stores + loads, from ptxas -v


def _signature(fn, dtype: str, consts: Dict[str, object]) -> Dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in _INTS:
            sig[name] = "i32"
        elif name == "eps":
            sig[name] = "fp32"
        elif name == "valid_ptr":
            sig[name] = "*i8"
        else:
            sig[name] = f"*{dtype}"
    return sig


def check(arch: int = 90, variants=VARIANTS, dv: int = 64, num_warps: int = 4) -> List[Compiled]:
    """Compile each variant for sm_``arch`` (head widths 16 and ``dv``); raises on the first that
    does not compile."""
    import triton
    from triton.backends.compiler import GPUTarget

    from . import kernels

    if kernels.INTERPRETED:
        raise RuntimeError("compile_check needs the kernels decorated for the compiler: unset TRITON_INTERPRET")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = GPUTarget("cuda", arch, 32)
    results = []
    for variant in variants:
        name, dtype, glu, mix1, mix2, block_m, block_n, block_r = variant
        fn = kernels.hyper_fwd_kernel if name == "fwd" else kernels.hyper_bwd_kernel
        consts = dict(GLU=glu, MIX1=mix1, MIX2=mix2, HAS_VALID=True, BLOCK_M=block_m, BLOCK_N=block_n,
                      BLOCK_D=16, BLOCK_DV=dv, BLOCK_R=block_r)
        if name == "fwd":
            consts["SAVE"] = True
        src = triton.compiler.ASTSource(fn=fn, signature=_signature(fn, dtype, consts), constexprs=consts)
        ptx = triton.compile(src, target=target, options=dict(num_warps=num_warps)).asm["ptx"]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            info = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.devnull],
                                  capture_output=True, text=True, check=True).stderr
        regs = int(re.search(r"Used (\d+) registers", info).group(1))
        spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
        results.append(Compiled(variant, regs, spills))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10, e.g. 80 or 90")
    args = parser.parse_args(argv)
    for c in check(args.arch):
        name, dtype, glu, mix1, mix2, bm, bn, br = c.variant
        print(f"{name} {dtype} {'glu' if glu else 'mlp'} mix1={int(mix1)} mix2={int(mix2)} "
              f"BLOCK_M={bm} BLOCK_N={bn} R={br}: {c.registers} registers, {c.spill_bytes} bytes spilled")
    return 0


if __name__ == "__main__":
    sys.exit(main())

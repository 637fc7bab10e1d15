"""``hypermlp bench`` / ``python -m hypermlp.bench``: the flags, their defaults, and the run that
measures the chosen sections and writes bench.json, bench.md and the plots into ``--out``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

import torch

from ..machine import machine_info
from .decode import bench_decode
from .gpu import SEQ_LENS as GPU_SEQ_LENS
from .gpu import SHAPES as GPU_SHAPES
from .gpu import bench_gpu
from .layers import bench_layers
from .lm import bench_lm
from .measure import AUTOCAST_DTYPES, Env
from .mixers import LAYER_MIXERS
from .report import format_report, make_plots
from .targets import check_targets

SECTIONS = ["layer", "decode", "lm", "gpu"]
DEFAULT_SECTIONS = {"cpu": ["layer", "decode", "lm"], "cuda": ["gpu"]}  # by device type
# sizes whose default depends on --quick: name -> (default, --quick default); the parser leaves
# them None when not given
SIZE_DEFAULTS = {
    "seq_lens": ([512, 1024, 2048, 4096, 8192], [256, 512]),
    "ref_max_len": (512, 256),
    "repeats": (3, 2),
    "prompt_len": (1536, 192),
    "new_tokens": (512, 64),
    "lm_seq_len": (1024, 256),
    "lm_batch": (4, 2),
    "lm_steps": (4, 2),
}
POSITIVE = ("batch", "d_model", "gpu_decode_steps", "repeats", "prompt_len", "new_tokens", "lm_seq_len", "lm_batch", "lm_layers", "lm_steps")


def _ints(text: str) -> List[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _shapes(text: str) -> List[Tuple[int, int, int]]:
    """"1024x2x4,256x2x4" -> [(d_model, heads, batch), ...]."""
    try:
        vals = [tuple(int(n) for n in v.split("x")) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        vals = []
    if not vals or any(len(v) != 3 or min(v) <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected shapes D_MODELxHEADSxBATCH, comma-separated, got {text!r}")
    return vals


def _names(allowed: List[str]):
    def parse(text: str) -> List[str]:
        vals = [v for v in text.replace(" ", "").split(",") if v]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {','.join(allowed)}")
        return vals

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hypermlp bench",
        description="Speed/memory benchmarks of the mixers: layer, decode, lm (see benchmarks/README.md).",
    )
    p.add_argument("--sections", type=_names(SECTIONS), default=None,
                   help="comma-separated subset of layer,decode,lm,gpu (default: layer,decode,lm on CPU, gpu on CUDA)")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run of a minute or two)")
    p.add_argument("--seq-lens", type=_ints, default=None, help="layer section lengths (default 512,1024,2048,4096,8192)")
    p.add_argument("--mixers", type=_names(LAYER_MIXERS), default=None,
                   help=f"layer-section mixers (default all: {','.join(LAYER_MIXERS)})")
    p.add_argument("--contenders", dest="mixers", type=_names(LAYER_MIXERS), default=None,
                   help=argparse.SUPPRESS)  # the flag's first name, kept for old command lines
    p.add_argument("--ref-max-len", type=int, default=None,
                   help="longest T for the (Python-loop) reference layers, -ref (default 512; --quick 256)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=None, help="query block of the chunked Hyper core (default: layer default)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3; --quick 2)")
    p.add_argument("--max-case-seconds", type=float, default=120.0,
                   help="skip a case whose run is estimated (from the shorter T) to exceed this")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--prompt-len", type=int, default=None, help="decode section prompt (default 1536; --quick 192)")
    p.add_argument("--new-tokens", type=int, default=None, help="decode section tokens (default 512; --quick 64)")
    p.add_argument("--lm-seq-len", type=int, default=None, help="LM section sequence length (default 1024; --quick 256)")
    p.add_argument("--lm-batch", type=int, default=None, help="LM section batch (default 4; --quick 2)")
    p.add_argument("--lm-layers", type=int, default=2)
    p.add_argument("--lm-match", choices=["mlp", "budget", "none"], default="mlp",
                   help="how LM parameter counts are matched to softmax: SwiGLU width only (default), "
                        "hypermlp.budget (qk_rank first), or not at all")
    p.add_argument("--lm-steps", type=int, default=None, help="timed training steps per model (default 4; --quick 2)")
    p.add_argument("--gpu-shapes", type=_shapes, default=list(GPU_SHAPES),
                   help="gpu section: D_MODELxHEADSxBATCH list (default 1024x2x4,256x2x4)")
    p.add_argument("--gpu-seq-lens", type=_ints, default=list(GPU_SEQ_LENS),
                   help="gpu section lengths (default 1024,2048,4096,8192,16384)")
    p.add_argument("--gpu-decode-steps", type=int, default=16, help="gpu section: decode steps timed per length")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--dtype", choices=list(AUTOCAST_DTYPES), default="fp32",
                   help="compute dtype (bf16/fp16 via autocast; meant for GPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench", help="directory for bench.json and the PNG plots")
    p.add_argument("--no-plots", action="store_true")
    return p


def fill_defaults(args) -> None:
    """Sizes not given on the command line: the full defaults, or the small ``--quick`` ones."""
    for name, (full, quick) in SIZE_DEFAULTS.items():
        if getattr(args, name) is None:
            value = quick if args.quick else full
            setattr(args, name, list(value) if isinstance(value, list) else value)  # a copy: args may be edited
    if args.mixers is None:
        args.mixers = list(LAYER_MIXERS)
    if args.sections is None:
        args.sections = list(DEFAULT_SECTIONS["cuda" if args.device.startswith("cuda") else "cpu"])
    for name in POSITIVE:
        if getattr(args, name) <= 0:
            raise SystemExit(f"hypermlp bench: error: --{name.replace('_', '-')} must be positive")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    fill_defaults(args)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process gets its threads back


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    """Measure the chosen sections, print the tables, write bench.json, bench.md and the plots."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("hypermlp bench: error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    env = Env(args.device, args.dtype)
    os.makedirs(args.out, exist_ok=True)
    results = {"machine": machine_info(str(env.device), env.dtype_name), "args": dict(vars(args))}
    _log(f"hypermlp bench: {results['machine'].get('cpu', '')} {env.device} {env.dtype_name}, "
         f"{torch.get_num_threads()} threads -> {args.out}")
    load = results["machine"].get("loadavg_start")
    if load and not env.cuda and load[0] > 1.0:
        _log(f"warning: load average {load[0]:.1f} before starting: other processes compete for the CPU and "
             "inflate the times (intra-op threads wait for each other); ratios are less affected than absolute times")
    for section, bench in (("layer", bench_layers), ("decode", bench_decode), ("lm", bench_lm), ("gpu", bench_gpu)):
        if section in args.sections:
            results[section] = bench(args, env, _log)
    try:
        results["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    results["targets"] = check_targets(results, args)
    text = format_report(results, args)
    print(text)
    json_path = os.path.join(args.out, "bench.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(text + "\n")
    files = [] if args.no_plots else make_plots(results, args.out)
    _log(f"wrote {json_path}" + (", " + ", ".join(files) if files else ""))
    return 0

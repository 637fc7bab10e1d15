"""GPU section: HyperGLU on the Triton kernels, HyperGLU on the chunked PyTorch core and SDPA softmax
attention of the same width (heads of 64: 16 at d_model 1024), one layer each, side by side at the
authors' benchmark shape (d_model 1024, 2 heads, batch 4) and at d_model 256.

Per shape and sequence length: forward (no grad) and forward+backward time (``layers``' round
robin: a warm-up, then ``--repeats`` rounds, the minimum kept), the peak memory of a
forward+backward (``torch.cuda.max_memory_allocated`` above what was allocated before), one
decode step after a prompt of T tokens in the cache (the median of ``--gpu-decode-steps`` steps;
softmax attention decodes through its KV cache), and whether the forward's output is finite.
Every figure is also a ratio to softmax attention, and the Triton core's speed-up over the
chunked one is given. The same code runs on CPU with tiny sizes (the tests): the Triton contender
then says why it did not run.
"""

from __future__ import annotations

import gc
import statistics
from typing import Dict, List, Optional, Tuple

import torch

from ..ops.hyper import IMPLS
from ..ops.hyper.custom_op import triton_op
from ..registry import get_mixer
from .layers import _measure_memory, _time_round_robin, _timing_fields
from .measure import Env
from .mixers import layer_description

CONTENDERS = ["softmax", "hyperglu-chunked", "hyperglu-triton"]
SOFTMAX_HEAD_DIM = 64
SHAPES = [(1024, 2, 4), (256, 2, 4)]  # (d_model, HyperGLU heads, batch): the authors' shape first
SEQ_LENS = [1024, 2048, 4096, 8192, 16384]
RATIO_OF = {"fwd_s": "fwd_ratio", "fwd_bwd_s": "fwd_bwd_ratio", "peak_extra_bytes": "peak_ratio",
            "decode_s": "decode_ratio"}


def triton_unavailable(env: Env) -> Optional[str]:
    """Why the Triton contender cannot run here, or None."""
    if "triton" not in IMPLS or triton_op is None:
        return "not available: this install has no ops/hyper/triton"
    if not env.cuda:
        return "not available: the Triton kernels need a CUDA device"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "not available: triton is not installed (pip install 'hypermlp[triton]')"
    return None


def make_contender(name: str, d_model: int, heads: int, max_len: int, chunk_size: Optional[int]) -> torch.nn.Module:
    """softmax: SDPA with heads of 64 (the same width as HyperGLU's values); hyperglu-<impl>: the
    registry's HyperGLU with ``heads`` readout heads on that core."""
    if name == "softmax":
        return get_mixer("softmax").build(d_model, max_len, {"n_heads": max(1, d_model // SOFTMAX_HEAD_DIM)})
    args = {"n_heads": heads, "impl": name.split("-", 1)[1]}
    if chunk_size is not None:
        args["chunk_size"] = chunk_size
    return get_mixer("hyperglu").build(d_model, max_len, args)


def bench_gpu(args, env: Env, log) -> dict:
    """Every contender at every shape of ``--gpu-shapes`` and length of ``--gpu-seq-lens``."""
    rows, configs = [], {}
    no_triton = triton_unavailable(env)
    for d, heads, batch in args.gpu_shapes:
        torch.manual_seed(args.seed)
        max_len = max(args.gpu_seq_lens) + args.gpu_decode_steps
        names = [n for n in CONTENDERS if not (n == "hyperglu-triton" and no_triton)]
        layers = {n: make_contender(n, d, heads, max_len, args.chunk_size).to(env.device) for n in names}
        configs[f"{d}x{heads}x{batch}"] = {n: layer_description(layer) for n, layer in layers.items()}
        last: Dict[str, Tuple[int, float]] = {}
        for t in sorted(args.gpu_seq_lens):
            shape_rows = _measure_length(layers, d, heads, batch, t, last, args, env)
            if no_triton:
                shape_rows.append(_row(d, heads, batch, t, "hyperglu-triton", note=no_triton))
            _add_ratios(shape_rows)
            rows += sorted(shape_rows, key=lambda r: CONTENDERS.index(r["mixer"]))
            log(f"  gpu d={d} T={t}: " + ", ".join(f"{r['mixer']} fwd+bwd {_ms(r.get('fwd_bwd_s'))}" for r in shape_rows))
        del layers
        _free(env)
    return {"rows": rows, "configs": configs, "device": str(env.device), "dtype": env.dtype_name,
            "shapes": [list(s) for s in args.gpu_shapes], "seq_lens": sorted(args.gpu_seq_lens)}


def _row(d: int, heads: int, batch: int, t: int, mixer: str, **fields) -> dict:
    return {"d_model": d, "heads": heads, "batch": batch, "T": t, "mixer": mixer, **fields}


def _measure_length(layers, d, heads, batch, t, last, args, env: Env) -> List[dict]:
    x = torch.randn(batch, t + args.gpu_decode_steps, d, device=env.device)
    prompt = x[:, :t]
    notes: Dict[str, str] = {}
    for n in layers:
        if n in last:
            t0, s0 = last[n]
            estimate = s0 * (t / t0) ** 2  # quadratic in T
            if estimate > args.max_case_seconds:
                notes[n] = f"skipped: estimated {estimate:.0f}s per run > --max-case-seconds {args.max_case_seconds:.0f}"
    active = [n for n in layers if n not in notes]
    samples, failed = _time_round_robin(layers, active, prompt, args.repeats, env)
    notes.update(failed)
    out = []
    for n in layers:
        row = _row(d, heads, batch, t, n)
        if n in active and n not in failed:
            row.update(_timing_fields(samples[n]))
            last[n] = (t, row["fwd_bwd_s"])
            row.update(_extras(layers[n], x, t, args, env))
        if n in notes:
            row["note"] = notes[n]
        out.append(row)
        _free(env)
    return out


def _extras(layer, x: torch.Tensor, t: int, args, env: Env) -> dict:
    """Peak memory of a forward+backward, one decode step after T cached tokens, and whether the
    forward is finite; a failure (out of memory) becomes a note."""
    fields = {}
    try:
        with torch.no_grad(), env.autocast():
            fields["finite"] = bool(torch.isfinite(layer(x[:, :t])).all())
        if not args.no_memory:
            peak, _, error = _measure_memory(layer, x[:, :t], env)
            if peak is not None:
                fields["peak_extra_bytes"] = peak
            if error:
                fields["note"] = error
        fields["decode_s"] = _decode_step(layer, x, t, args.gpu_decode_steps, env)
    except (RuntimeError, MemoryError) as e:
        fields["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return fields


def _decode_step(layer, x: torch.Tensor, t: int, steps: int, env: Env) -> float:
    """Median seconds of one cached decode step at context T (prefill of T tokens, then ``steps``
    single tokens)."""
    cache = layer.new_cache(x.shape[0])
    times = []
    with torch.no_grad(), env.autocast():
        layer(x[:, :t], cache=cache)
        for i in range(steps):
            start = env.now()
            layer(x[:, t + i : t + i + 1], cache=cache)
            times.append(env.now() - start)
    return statistics.median(times)


def _add_ratios(rows: List[dict]) -> None:
    """Ratios to softmax attention at the same shape and T; the Triton core's speed-up over the
    chunked one (chunked time / Triton time)."""
    by = {r["mixer"]: r for r in rows}
    base = by.get("softmax")
    for r in rows:
        for key, ratio in RATIO_OF.items():
            if base is not None and r.get(key) and base.get(key):
                r[ratio] = r[key] / base[key]
    tri, chunked = by.get("hyperglu-triton"), by.get("hyperglu-chunked")
    if tri and chunked:
        for key, name in (("fwd_s", "triton_fwd_speedup"), ("fwd_bwd_s", "triton_fwd_bwd_speedup")):
            if tri.get(key) and chunked.get(key):
                tri[name] = chunked[key] / tri[key]


def memory_growth(rows: List[dict], mixer: str, shape: Tuple[int, int, int], t_small: int, t_large: int) -> Optional[float]:
    """peak(T = t_large) / peak(T = t_small) of one contender at one shape, or None."""
    peaks = {r["T"]: r.get("peak_extra_bytes") for r in rows
             if r["mixer"] == mixer and (r["d_model"], r["heads"], r["batch"]) == tuple(shape)}
    small, large = peaks.get(t_small), peaks.get(t_large)
    return large / small if small and large else None


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _free(env: Env) -> None:
    gc.collect()
    if env.cuda:
        torch.cuda.empty_cache()

"""Layer section: one mixer layer, forward (no grad) and forward+backward time, and the peak
extra memory of a forward+backward, every mixer at every sequence length.

Timing: one warm-up round, then ``--repeats`` rounds over the mixers in turn; rows keep the
minimum and every sample. The reference layers (``<mixer>-ref``) run only up to
``--ref-max-len``; a case estimated (T^2 from the last length) to exceed ``--max-case-seconds``
is skipped and says so.
"""

from __future__ import annotations

import gc
import statistics
from typing import Dict, List, Optional, Tuple

import torch

from .measure import Env, peak_extra_bytes, saved_bytes
from .mixers import REFERENCE_SUFFIX, layer_description, make_layer
from .report import fmt_ms

RATIO_OF = {"fwd_s": "fwd_ratio", "fwd_bwd_s": "fwd_bwd_ratio", "peak_extra_bytes": "peak_extra_ratio"}


def bench_layers(args, env: Env, log) -> dict:
    """Every mixer of ``--mixers`` at every length of ``--seq-lens``: rows of times, memory
    and ratios to softmax at the same length."""
    d, b, mixers = args.d_model, args.batch, args.mixers
    torch.manual_seed(args.seed)
    layers = {n: make_layer(n, d, max(args.seq_lens), args.chunk_size).to(env.device) for n in mixers}
    params = {n: sum(p.numel() for p in layer.parameters()) for n, layer in layers.items()}
    desc = {n: layer_description(layer) for n, layer in layers.items()}
    rows = []
    last: Dict[str, Tuple[int, float]] = {}  # name -> (T, fwd+bwd seconds) at the last length measured
    for t in sorted(args.seq_lens):
        x = torch.randn(b, t, d, device=env.device)
        skipped = {n: _skip_reason(n, t, last, args) for n in mixers}
        notes = {n: why for n, why in skipped.items() if why}
        active = [n for n in mixers if n not in notes]
        samples, failed = _time_round_robin(layers, active, x, args.repeats, env)
        notes.update(failed)
        measured = [n for n in active if n not in failed]
        memory = {} if args.no_memory else {n: _measure_memory(layers[n], x, env) for n in measured}
        for n in mixers:
            row = {"T": t, "mixer": n, "params": params[n], "config": desc[n]}
            if n in measured:
                row.update(_timing_fields(samples[n]))
                last[n] = (t, row["fwd_bwd_s"])
                peak, saved, error = memory.get(n, (None, None, None))
                if peak is not None:
                    row["peak_extra_bytes"] = peak
                if saved is not None:
                    row["saved_bytes"] = saved
                if error:
                    notes[n] = error
            if n in notes:
                row["note"] = notes[n]
            rows.append(row)
        log(f"  layer T={t}: " + ", ".join(f"{r['mixer']} {fmt_ms(r.get('fwd_bwd_s'))}" for r in rows if r["T"] == t))
    _add_ratios_to_softmax(rows)
    return {"rows": rows, "params": params, "config": desc, "batch": b, "d_model": d}


def _skip_reason(name: str, t: int, last: Dict[str, Tuple[int, float]], args) -> Optional[str]:
    """Why ``name`` is not run at length ``t``, or None."""
    if name.endswith(REFERENCE_SUFFIX) and t > args.ref_max_len:
        return f"skipped: reference (Python loop over positions) only up to T={args.ref_max_len}"
    if name in last:
        t0, s0 = last[name]
        estimate = s0 * (t / t0) ** 2  # the mixers are quadratic in T
        if estimate > args.max_case_seconds:
            return f"skipped: estimated {estimate:.0f}s per run > --max-case-seconds {args.max_case_seconds:.0f}"
    return None


def _run(layer, x: torch.Tensor, kind: str, env: Env) -> None:
    """One forward (``fwd``, no grad) or forward+backward (``fwd_bwd``, input and parameter grads)."""
    if kind == "fwd":
        with torch.no_grad(), env.autocast():
            layer(x)
        return
    xg = x.detach().requires_grad_(True)
    for p in layer.parameters():
        p.grad = None
    with env.autocast():
        y = layer(xg)
    y.float().square().mean().backward()


def _time_round_robin(layers, active: List[str], x: torch.Tensor, repeats: int, env: Env):
    """A warm-up round, then ``repeats`` rounds each running every mixer once in turn, so that a
    slow spell of a shared machine hits all of them. Returns (samples, failures)."""
    samples = {n: {"fwd": [], "fwd_bwd": []} for n in active}
    failed: Dict[str, str] = {}
    for rep in range(repeats + 1):
        for n in active:
            if n in failed:
                continue
            for kind in ("fwd", "fwd_bwd"):
                try:
                    start = env.now()
                    _run(layers[n], x, kind, env)
                    seconds = env.now() - start
                except (RuntimeError, MemoryError) as e:  # out of memory and the like
                    failed[n] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    break
                if rep > 0:
                    samples[n][kind].append(seconds)
            gc.collect()
    return samples, failed


def _measure_memory(layer, x: torch.Tensor, env: Env):
    """(peak extra bytes of a forward+backward, bytes saved for the backward, error note); a
    value is None when it could not be measured."""
    for p in layer.parameters():
        p.grad = None
    xg = x.detach().requires_grad_(True)

    def forward_backward():
        with env.autocast():
            y = layer(xg)
        y.float().square().mean().backward()

    def forward():
        with env.autocast():
            return layer(xg)

    peak = saved = error = None
    try:
        peak = peak_extra_bytes(forward_backward, env)
        for p in layer.parameters():
            p.grad = None
        saved = saved_bytes(forward, list(layer.parameters()) + [xg])
    except (RuntimeError, MemoryError) as e:
        error = f"memory failed: {str(e).splitlines()[0][:120]}"
    for p in layer.parameters():
        p.grad = None
    gc.collect()
    return peak, saved, error


def _timing_fields(s: Dict[str, List[float]]) -> dict:
    """The table shows the minimum (the least disturbed run); the JSON keeps every sample."""
    return dict(fwd_s=min(s["fwd"]), fwd_bwd_s=min(s["fwd_bwd"]), fwd_samples=s["fwd"], fwd_bwd_samples=s["fwd_bwd"],
                fwd_median_s=statistics.median(s["fwd"]), fwd_bwd_median_s=statistics.median(s["fwd_bwd"]))


def _add_ratios_to_softmax(rows: List[dict]) -> None:
    by = {(r["T"], r["mixer"]): r for r in rows}
    for r in rows:
        base = by.get((r["T"], "softmax"))
        for key, ratio in RATIO_OF.items():
            if base is not None and key in r and key in base and base[key]:
                r[ratio] = r[key] / base[key]

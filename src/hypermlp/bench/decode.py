"""Decode section: per-token latency of one layer decoding with its cache after a prompt,
against recomputing the full forward over the whole prefix for every new token.

A prompt of ``--prompt-len`` tokens fills the cache (prefill), then ``--new-tokens`` tokens are
fed one per call, each call timed. Recompute is measured at five context lengths spread over the
decoded range; speed-up = mean recompute / median cached latency.
"""

from __future__ import annotations

import gc
import math
import statistics

import torch

from .measure import Env
from .mixers import MIXERS, layer_description, make_layer

N_RECOMPUTE_POINTS = 5
WARMUP_TOKENS = 8


def bench_decode(args, env: Env, log) -> dict:
    """Every mixer decoding ``args.new_tokens`` after ``args.prompt_len``: rows and latency curves."""
    d, b = args.d_model, args.batch
    prompt, new = args.prompt_len, args.new_tokens
    torch.manual_seed(args.seed)
    x = torch.randn(b, prompt + new, d, device=env.device)
    contexts = sorted({prompt + round(i * (new - 1) / (N_RECOMPUTE_POINTS - 1)) for i in range(N_RECOMPUTE_POINTS)})
    rows, curves = [], {}
    for n in MIXERS:
        layer = make_layer(n, d, prompt + new, args.chunk_size).to(env.device).eval()
        with torch.no_grad(), env.autocast():
            _decode(layer, x, prompt, min(WARMUP_TOKENS, new), env)  # warm-up
            prefill, latencies = _decode(layer, x, prompt, new, env)
            recompute = {c: _best_forward(layer, x[:, : c + 1], max(1, min(args.repeats, 2)), env) for c in contexts}
        curves[n] = {"cached": _latency_curve(latencies, prompt), "recompute": sorted(recompute.items())}
        median_cached = statistics.median(latencies)
        mean_recompute = statistics.mean(recompute.values())
        rows.append({
            "mixer": n, "prompt": prompt, "new_tokens": new, "prefill_s": prefill,
            "cached_mean_s": statistics.mean(latencies), "cached_median_s": median_cached, "cached_min_s": min(latencies),
            "recompute_mean_s": mean_recompute, "recompute_points": {str(k): v for k, v in recompute.items()},
            "speedup_vs_recompute": mean_recompute / median_cached,
            "config": layer_description(layer),
        })
        log(f"  decode {n}: cached {median_cached * 1e3:.2f} ms/token, recompute {mean_recompute * 1e3:.1f} ms/token")
        del layer
        gc.collect()
    base = next((r for r in rows if r["mixer"] == "softmax"), None)
    for r in rows:
        if base is not None:
            r["cached_ratio"] = r["cached_median_s"] / base["cached_median_s"]
    return {"rows": rows, "curves": curves, "batch": b}


def _decode(layer, x: torch.Tensor, prompt: int, new: int, env: Env):
    """Prefill a fresh cache with ``prompt`` tokens, then feed ``new`` tokens one at a time:
    (prefill seconds, seconds per new token)."""
    cache = layer.new_cache(x.shape[0])
    start = env.now()
    layer(x[:, :prompt], cache=cache)
    prefill = env.now() - start
    latencies = []
    for i in range(new):
        token = x[:, prompt + i : prompt + i + 1]
        start = env.now()
        layer(token, cache=cache)
        latencies.append(env.now() - start)
    return prefill, latencies


def _best_forward(layer, prefix: torch.Tensor, repeats: int, env: Env) -> float:
    """The fastest of ``repeats`` full forwards over ``prefix`` (what a model without a cache
    does for its next token)."""
    best = math.inf
    for _ in range(repeats):
        start = env.now()
        layer(prefix)
        best = min(best, env.now() - start)
    return best


def _latency_curve(latencies, prompt: int):
    """(context length, median latency) over 16 windows of the decoded tokens."""
    window = max(1, len(latencies) // 16)
    curve = []
    for s in range(0, len(latencies), window):
        segment = latencies[s : s + window]
        curve.append((prompt + s + len(segment) // 2, statistics.median(segment)))
    return curve

"""Speed and memory benchmarks: ``hypermlp bench`` or ``python -m hypermlp.bench``.

Three sections, every contender measured side by side in one process, interleaved:

* ``layer``  - one mixer layer, forward (no grad) and forward+backward time and the peak extra
  memory of forward+backward, for softmax attention (SDPA, the 1.00 of every ratio), ReLU
  attention, HyperGLU and HyperMLP (chunked fast path, and the readable reference at small T).
* ``decode`` - per-token latency of one layer decoding with its cache after a prompt, against
  recomputing the full forward over the whole prefix for every token.
* ``lm``     - end-to-end language-model training throughput (tokens/s, AdamW) and peak memory per
  mixer, the models brought to matched parameter counts (``hypermlp.budget``).

Timing: each case is run once to warm up, then ``--repeats`` times round-robin over the
contenders; the table shows the minimum (the least disturbed run on a shared machine) and the JSON
holds every sample. Memory on CPU: the peak, over the measured call, of the bytes held by tensors
allocated during it (PyTorch profiler memory events, i.e. the c10 CPU allocator's accounting),
minus nothing else - parameters, inputs and anything alive before the call are not counted, the
parameter gradients and activations are. Memory that oneDNN/MKL allocate internally outside the
c10 allocator is not seen. On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation
before the call. ``saved`` is the size of the tensors autograd keeps for the backward (unique
storages, parameters and inputs excluded), from ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

MIB = 1024.0 * 1024.0

LAYER_CONTENDERS = ["softmax", "relu", "hyperglu", "hypermlp", "hyperglu-ref", "hypermlp-ref"]
DECODE_CONTENDERS = ["softmax", "relu", "hyperglu", "hypermlp"]
LM_CONTENDERS = ["softmax", "relu", "hyperglu", "hypermlp"]


# ---------------------------------------------------------------------------------------------
# arguments


def _ints(text: str) -> List[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(allowed: List[str]):
    def parse(text: str) -> List[str]:
        vals = [v for v in text.replace(" ", "").split(",") if v]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {','.join(allowed)}")
        return vals

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hypermlp bench",
        description="Speed/memory benchmarks of the mixers: layer, decode, lm (see benchmarks/README.md).",
    )
    p.add_argument("--sections", type=_names(["layer", "decode", "lm"]), default=["layer", "decode", "lm"],
                   help="comma-separated subset of layer,decode,lm (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run of a minute or two)")
    p.add_argument("--seq-lens", type=_ints, default=None, help="layer section lengths (default 512,1024,2048,4096,8192)")
    p.add_argument("--contenders", type=_names(LAYER_CONTENDERS), default=None,
                   help=f"layer contenders (default all: {','.join(LAYER_CONTENDERS)})")
    p.add_argument("--ref-max-len", type=int, default=None,
                   help="longest T for the (Python-loop) reference contenders (default 512; --quick 256)")
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
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="compute dtype (bf16/fp16 via autocast; meant for GPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench", help="directory for bench.json and the PNG plots")
    p.add_argument("--no-plots", action="store_true")
    return p


def _fill_defaults(args) -> None:
    q = args.quick
    if args.seq_lens is None:
        args.seq_lens = [256, 512] if q else [512, 1024, 2048, 4096, 8192]
    if args.contenders is None:
        args.contenders = list(LAYER_CONTENDERS)
    if args.ref_max_len is None:
        args.ref_max_len = 256 if q else 512
    if args.repeats is None:
        args.repeats = 2 if q else 3
    if args.prompt_len is None:
        args.prompt_len = 192 if q else 1536
    if args.new_tokens is None:
        args.new_tokens = 64 if q else 512
    if args.lm_seq_len is None:
        args.lm_seq_len = 256 if q else 1024
    if args.lm_batch is None:
        args.lm_batch = 2 if q else 4
    if args.lm_steps is None:
        args.lm_steps = 2 if q else 4
    for name in ("batch", "d_model", "repeats", "prompt_len", "new_tokens", "lm_seq_len", "lm_batch", "lm_layers", "lm_steps"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"hypermlp bench: error: --{name.replace('_', '-')} must be positive")


# ---------------------------------------------------------------------------------------------
# measurement primitives


class Env:
    def __init__(self, device: str, dtype: str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype_name = dtype
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _now(env: Env) -> float:
    env.sync()
    return time.perf_counter()


def peak_extra_bytes(fn: Callable[[], object], env: Env) -> int:
    """Peak of the bytes allocated during ``fn()`` and alive at the same time (see module doc)."""
    gc.collect()
    if env.cuda:
        env.sync()
        base = torch.cuda.memory_allocated(env.device)
        torch.cuda.reset_peak_memory_stats(env.device)
        fn()
        env.sync()
        return int(torch.cuda.max_memory_allocated(env.device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    mem = [e["args"] for e in events if e.get("name") == "[memory]" and int(e.get("args", {}).get("Device Type", 0)) == 0]
    if not mem:
        return 0
    # "Total Allocated" is the allocator's running count; only allocations made while profiling
    # are tracked, so its value before the first event is the baseline.
    base = int(mem[0]["Total Allocated"]) - int(mem[0]["Bytes"])
    return int(max(int(m["Total Allocated"]) for m in mem) - base)


class _quiet_stderr:
    """Silence the profiler back end's start/stop lines (printed by C++ on fd 2)."""

    def __enter__(self):
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        return False


def saved_bytes(fn: Callable[[], object], exclude: List[torch.Tensor]) -> int:
    """Bytes of the unique storages autograd saves for the backward during ``fn()``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: Dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return int(sum(seen.values()))


def _fmt_ms(s: Optional[float]) -> str:
    return "-" if s is None else (f"{s * 1e3:.1f}" if s < 10 else f"{s:.1f}s")


def _fmt_mib(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / MIB:.1f}"


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _table(headers: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# layers


def make_layer(name: str, d_model: int, max_len: int, chunk_size: Optional[int] = None):
    from .layers import HyperGLU, HyperMLP, ReLUAttention, SoftmaxAttention

    base = name.replace("-ref", "")
    kw = {"d_model": d_model, "max_len": max_len}
    if base != "softmax":
        kw["impl"] = "reference" if name.endswith("-ref") else "chunked"
        if chunk_size is not None:
            kw["chunk_size"] = chunk_size
    cls = {"softmax": SoftmaxAttention, "relu": ReLUAttention, "hyperglu": HyperGLU, "hypermlp": HyperMLP}[base]
    return cls(**kw)


def layer_description(layer) -> str:
    c = layer.config
    if hasattr(c, "seq_rank"):
        parts = [f"{c.n_heads} heads", f"qk_rank {c.qk_rank}", f"vo_rank {c.vo_rank}"]
        if c.mix1 or c.mix2:
            parts.append(f"seq_rank {c.seq_rank}")
        parts += [f"conv {c.conv_size}", "gates" if (c.qk_gate or c.out_gate) else "no gates", f"chunk {c.chunk_size}"]
    else:
        parts = [f"{c.n_heads} heads of {c.qk_rank // c.n_heads}", "SDPA", "RoPE" if c.rope else "no RoPE"]
    return ", ".join(parts)


def bench_layers(args, env: Env, log) -> dict:
    d, b = args.d_model, args.batch
    max_len = max(args.seq_lens)
    torch.manual_seed(args.seed)
    layers = {n: make_layer(n, d, max_len, args.chunk_size).to(env.device) for n in args.contenders}
    params = {n: sum(p.numel() for p in l.parameters()) for n, l in layers.items()}
    desc = {n: layer_description(l) for n, l in layers.items()}
    rows = []
    last: Dict[str, tuple] = {}  # name -> (T, fwd+bwd seconds) of the last measured length
    for t in sorted(args.seq_lens):
        x = torch.randn(b, t, d, device=env.device)
        active, notes = [], {}
        for n in args.contenders:
            if n.endswith("-ref") and t > args.ref_max_len:
                notes[n] = f"skipped: reference (Python loop over positions) only up to T={args.ref_max_len}"
                continue
            if n in last:
                t0, s0 = last[n]
                est = s0 * (t / t0) ** 2
                if est > args.max_case_seconds:
                    notes[n] = f"skipped: estimated {est:.0f}s per run > --max-case-seconds {args.max_case_seconds:.0f}"
                    continue
            active.append(n)
        samples: Dict[str, Dict[str, List[float]]] = {n: {"fwd": [], "fwd_bwd": []} for n in active}
        failed: Dict[str, str] = {}

        def run(n, kind):
            layer = layers[n]
            if kind == "fwd":
                with torch.no_grad(), env.autocast():
                    return layer(x)
            xg = x.detach().requires_grad_(True)
            for p_ in layer.parameters():
                p_.grad = None
            with env.autocast():
                y = layer(xg)
            y.float().square().mean().backward()
            return None

        for rep in range(args.repeats + 1):  # first round = warm-up
            for n in active:
                if n in failed:
                    continue
                for kind in ("fwd", "fwd_bwd"):
                    try:
                        t_start = _now(env)
                        run(n, kind)
                        dt = _now(env) - t_start
                    except (RuntimeError, MemoryError) as e:  # out of memory and the like
                        failed[n] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                        break
                    if rep > 0:
                        samples[n][kind].append(dt)
                gc.collect()
        for n, msg in failed.items():
            notes[n] = msg
        mem, saved = {}, {}
        if not args.no_memory:
            for n in active:
                if n in failed:
                    continue
                layer = layers[n]
                for p_ in layer.parameters():
                    p_.grad = None
                xg = x.detach().requires_grad_(True)

                def step():
                    with env.autocast():
                        y = layer(xg)
                    y.float().square().mean().backward()

                def fwd_only():
                    with env.autocast():
                        return layer(xg)

                try:
                    mem[n] = peak_extra_bytes(step, env)
                    for p_ in layer.parameters():
                        p_.grad = None
                    saved[n] = saved_bytes(fwd_only, list(layer.parameters()) + [xg])
                except (RuntimeError, MemoryError) as e:
                    notes[n] = f"memory failed: {str(e).splitlines()[0][:120]}"
                for p_ in layer.parameters():
                    p_.grad = None
                gc.collect()
        for n in args.contenders:
            row = {"T": t, "contender": n, "params": params[n], "config": desc[n]}
            if n in samples and n not in failed:
                s = samples[n]
                row.update(fwd_s=min(s["fwd"]), fwd_bwd_s=min(s["fwd_bwd"]), fwd_samples=s["fwd"], fwd_bwd_samples=s["fwd_bwd"],
                           fwd_median_s=statistics.median(s["fwd"]), fwd_bwd_median_s=statistics.median(s["fwd_bwd"]))
                last[n] = (t, row["fwd_bwd_s"])
                if n in mem:
                    row["peak_extra_bytes"] = mem[n]
                if n in saved:
                    row["saved_bytes"] = saved[n]
            if n in notes:
                row["note"] = notes[n]
            rows.append(row)
        log(f"  layer T={t}: " + ", ".join(f"{n} {_fmt_ms(r.get('fwd_bwd_s'))}" for n in args.contenders
                                             for r in rows if r["T"] == t and r["contender"] == n))
    # ratios to softmax at the same T
    by = {(r["T"], r["contender"]): r for r in rows}
    for r in rows:
        base = by.get((r["T"], "softmax"))
        for key in ("fwd_s", "fwd_bwd_s", "peak_extra_bytes"):
            if base is not None and key in r and key in base and base[key]:
                r[key.replace("_s", "").replace("_bytes", "") + "_ratio"] = r[key] / base[key]
    return {"rows": rows, "params": params, "config": desc, "batch": b, "d_model": d}


def format_layer_table(res: dict) -> str:
    headers = ["T", "contender", "fwd ms", "x sm", "fwd+bwd ms", "x sm", "peak MiB", "x sm", "saved MiB", "note"]
    out = []
    for r in res["rows"]:
        out.append([
            str(r["T"]), r["contender"], _fmt_ms(r.get("fwd_s")), _fmt_ratio(r.get("fwd_ratio")),
            _fmt_ms(r.get("fwd_bwd_s")), _fmt_ratio(r.get("fwd_bwd_ratio")), _fmt_mib(r.get("peak_extra_bytes")),
            _fmt_ratio(r.get("peak_extra_ratio")), _fmt_mib(r.get("saved_bytes")), r.get("note", ""),
        ])
    return _table(headers, out)


# ---------------------------------------------------------------------------------------------
# decoding


def bench_decode(args, env: Env, log) -> dict:
    d, b = args.d_model, args.batch
    prompt, new = args.prompt_len, args.new_tokens
    total = prompt + new
    torch.manual_seed(args.seed)
    x = torch.randn(b, total, d, device=env.device)
    rows, curves = [], {}
    n_points = 5
    checkpoints = sorted({prompt + round(i * (new - 1) / (n_points - 1)) for i in range(n_points)})
    for n in DECODE_CONTENDERS:
        layer = make_layer(n, d, total, args.chunk_size).to(env.device).eval()
        with torch.no_grad(), env.autocast():
            # warm-up, then the timed cached decode
            cache = layer.new_cache(b)
            layer(x[:, :prompt], cache=cache)
            for i in range(min(8, new)):
                layer(x[:, prompt + i : prompt + i + 1], cache=cache)
            cache = layer.new_cache(b)
            t0 = _now(env)
            layer(x[:, :prompt], cache=cache)
            prefill = _now(env) - t0
            lat = []
            for i in range(new):
                xi = x[:, prompt + i : prompt + i + 1]
                t0 = _now(env)
                layer(xi, cache=cache)
                lat.append(_now(env) - t0)
            # recompute: the full forward over the whole prefix for the token at context c
            recompute = {}
            for c in checkpoints:
                best = math.inf
                for _ in range(max(1, min(args.repeats, 2))):
                    t0 = _now(env)
                    layer(x[:, : c + 1])
                    best = min(best, _now(env) - t0)
                recompute[c] = best
        # per-token latency against context: mean over windows of the cached steps
        window = max(1, new // 16)
        curve = []
        for s in range(0, new, window):
            seg = lat[s : s + window]
            curve.append((prompt + s + len(seg) // 2, statistics.median(seg)))
        curves[n] = {"cached": curve, "recompute": sorted(recompute.items())}
        mean_cached = statistics.mean(lat)
        median_cached = statistics.median(lat)
        mean_recompute = statistics.mean(recompute.values())
        rows.append({
            "contender": n, "prompt": prompt, "new_tokens": new, "prefill_s": prefill,
            "cached_mean_s": mean_cached, "cached_median_s": median_cached, "cached_min_s": min(lat),
            "recompute_mean_s": mean_recompute, "recompute_points": {str(k): v for k, v in recompute.items()},
            "speedup_vs_recompute": mean_recompute / median_cached,
            "config": layer_description(layer),
        })
        log(f"  decode {n}: cached {median_cached * 1e3:.2f} ms/token, recompute {mean_recompute * 1e3:.1f} ms/token")
        del layer, cache
        gc.collect()
    base = next((r for r in rows if r["contender"] == "softmax"), None)
    for r in rows:
        if base is not None:
            r["cached_ratio"] = r["cached_median_s"] / base["cached_median_s"]
    return {"rows": rows, "curves": curves, "batch": b}


def format_decode_table(res: dict) -> str:
    headers = ["contender", "prefill ms", "cached ms/token (median)", "x sm", "recompute ms/token (mean)", "cached speed-up"]
    out = []
    for r in res["rows"]:
        out.append([
            r["contender"], _fmt_ms(r["prefill_s"]), f"{r['cached_median_s'] * 1e3:.2f}", _fmt_ratio(r.get("cached_ratio")),
            f"{r['recompute_mean_s'] * 1e3:.1f}", f"{r['speedup_vs_recompute']:.0f}x",
        ])
    return _table(headers, out)


# ---------------------------------------------------------------------------------------------
# language model training


def _lm_configs(args):
    """Model configs of the LM section and how their parameter counts were matched.

    ``mlp`` (default): every mixer at its layer defaults (the layers of the layer section), the
    SwiGLU width of each non-softmax model solved so its count lands on the softmax model's.
    ``budget``: ``hypermlp.budget.match_budgets`` to the softmax count (qk_rank first, SPEC §5).
    ``none``: no matching."""
    from .models import ModelConfig

    base = {n: ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=args.lm_layers, mixer=n, max_len=args.lm_seq_len)
            for n in LM_CONTENDERS}
    if args.lm_match == "none":
        return base, "not matched (--lm-match none)"
    try:
        from .budget import count_params, match_budgets
    except ImportError as e:  # the budget module ships separately
        return base, f"NOT matched (hypermlp.budget unavailable: {e})"
    target = count_params(base["softmax"])
    if args.lm_match == "budget":
        matched, _ = match_budgets(base, target=target, tol=0.01)
        return matched, "matched to the softmax model with hypermlp.budget.match_budgets (qk_rank, then MLP width)"
    matched, off = {"softmax": base["softmax"]}, []
    for n, cfg in base.items():
        if n == "softmax":
            continue
        n0 = count_params(cfg)
        per_unit = count_params(dataclasses.replace(cfg, mlp_hidden=cfg.mlp_hidden + 1)) - n0
        hidden = max(1, cfg.mlp_hidden + round((target - n0) / per_unit))
        matched[n] = dataclasses.replace(cfg, mlp_hidden=hidden)
        if abs(count_params(matched[n]) - target) > 0.01 * target:
            off.append(n)
    note = "matched to the softmax model by the SwiGLU width only (mixers at their layer defaults)"
    if off:
        note += f"; NOT within 1% for {', '.join(off)} (the SwiGLU width cannot absorb the difference)"
    return matched, note


def bench_lm(args, env: Env, log) -> dict:
    from .models import LanguageModel

    cfgs, note = _lm_configs(args)
    b, t = args.lm_batch, args.lm_seq_len
    torch.manual_seed(args.seed)
    data = torch.randint(0, 256, (args.lm_steps + 2, b, t + 1), device=env.device)
    rows = []
    models = {}
    for n in LM_CONTENDERS:
        torch.manual_seed(args.seed)
        m = LanguageModel(cfgs[n]).to(env.device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
        models[n] = (m, opt)

    def step(n, i):
        m, opt = models[n]
        batch = data[i % data.shape[0]]
        with env.autocast():
            _, loss = m(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    times: Dict[str, List[float]] = {n: [] for n in LM_CONTENDERS}
    for n in LM_CONTENDERS:  # warm-up (also creates the optimiser state)
        step(n, 0)
    for i in range(args.lm_steps):  # interleaved
        for n in LM_CONTENDERS:
            t0 = _now(env)
            step(n, i + 1)
            times[n].append(_now(env) - t0)
    for n in LM_CONTENDERS:
        m, opt = models[n]
        peak = None
        if not args.no_memory:
            peak = peak_extra_bytes(lambda: step(n, 0), env)
        best = min(times[n])
        rows.append({
            "contender": n, "params": m.num_params(), "tokens_per_s": b * t / best, "step_s": best,
            "step_samples": times[n], "peak_extra_bytes": peak, "mlp_hidden": cfgs[n].mlp_hidden,
            "mixer_args": dict(cfgs[n].mixer_args),
        })
        log(f"  lm {n}: {b * t / best:.0f} tokens/s, {m.num_params():,} params")
    base = next(r for r in rows if r["contender"] == "softmax")
    for r in rows:
        r["throughput_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        if r["peak_extra_bytes"] and base["peak_extra_bytes"]:
            r["peak_extra_ratio"] = r["peak_extra_bytes"] / base["peak_extra_bytes"]
    return {"rows": rows, "batch": b, "seq_len": t, "n_layers": args.lm_layers, "matching": note}


def format_lm_table(res: dict) -> str:
    headers = ["mixer", "params", "mixer args", "mlp_hidden", "tokens/s", "x sm", "step ms", "peak MiB", "x sm"]
    out = []
    for r in res["rows"]:
        out.append([
            r["contender"], f"{r['params']:,}", json.dumps(r["mixer_args"]) if r["mixer_args"] else "defaults",
            str(r["mlp_hidden"]), f"{r['tokens_per_s']:.0f}", _fmt_ratio(r["throughput_ratio"]), _fmt_ms(r["step_s"]),
            _fmt_mib(r["peak_extra_bytes"]), _fmt_ratio(r.get("peak_extra_ratio")),
        ])
    return _table(headers, out)


# ---------------------------------------------------------------------------------------------
# targets (issue: the numbers the Hyper layers must reach)


def check_targets(results: dict, args) -> List[dict]:
    """The issue's targets, from whatever sections ran. A target measured in another setting than
    the one it is defined for (d_model 256, batch 2, fp32, prompt 1536 + 512 tokens) is shown
    but not judged."""
    out = []
    base_ok = args.d_model == 256 and args.batch == 2 and args.dtype == "fp32"

    def add(name, value, ok_setting, good):
        met = None if value is None or not ok_setting else bool(good(value))
        out.append({"target": name, "value": value, "met": met, "setting_ok": ok_setting})

    layer = results.get("layer")
    if layer:
        by = {(r["T"], r["contender"]): r for r in layer["rows"]}
        add("HyperGLU fwd+bwd at T=2048 <= 2x softmax", by.get((2048, "hyperglu"), {}).get("fwd_bwd_ratio"),
            base_ok, lambda v: v <= 2.0)
        a, b_ = by.get((4096, "hyperglu"), {}), by.get((8192, "hyperglu"), {})
        v = b_["peak_extra_bytes"] / a["peak_extra_bytes"] if a.get("peak_extra_bytes") and b_.get("peak_extra_bytes") else None
        add("HyperGLU peak training memory T=8192 / T=4096 <= 2.5", v, base_ok, lambda v: v <= 2.5)
    dec = results.get("decode")
    if dec:
        by = {r["contender"]: r for r in dec["rows"]}
        g = by.get("hyperglu")
        if g:
            ok = base_ok and g["prompt"] == 1536 and g["new_tokens"] == 512
            add(f"HyperGLU cached decode >= 20x faster than recompute (prompt {g['prompt']}, {g['new_tokens']} tokens)",
                g["speedup_vs_recompute"], ok, lambda v: v >= 20)
            add("HyperGLU per-token latency <= 2x softmax with KV cache", g.get("cached_ratio"), ok, lambda v: v <= 2.0)
    lm = results.get("lm")
    if lm:
        by = {r["contender"]: r for r in lm["rows"]}
        v = by["hyperglu"]["throughput_ratio"] if "hyperglu" in by else None
        add("LM training throughput HyperGLU >= 0.5x softmax (matched params)", v,
            args.d_model == 256 and args.dtype == "fp32" and args.lm_match != "none", lambda v: v >= 0.5)
    return out


def format_targets(rows: List[dict]) -> str:
    out = []
    for r in rows:
        if r["value"] is None:
            met = "n/a (not measured)"
        elif not r.get("setting_ok", True):
            met = "n/a (other setting than the target's)"
        else:
            met = "met" if r["met"] else "MISSED"
        out.append([r["target"], "-" if r["value"] is None else f"{r['value']:.2f}", met])
    return _table(["target", "measured", "status"], out)


# ---------------------------------------------------------------------------------------------
# plots


def make_plots(results: dict, out_dir: str) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # plotting is optional
        print(f"(plots skipped: matplotlib unavailable: {e})")
        return []
    files = []
    layer = results.get("layer")
    if layer:
        names = sorted({r["contender"] for r in layer["rows"]}, key=LAYER_CONTENDERS.index)
        for key, label, fname in (("fwd_bwd_s", "forward+backward time (s)", "layer_time.png"),
                                  ("fwd_s", "forward time (s)", "layer_fwd_time.png"),
                                  ("peak_extra_bytes", "peak extra memory, fwd+bwd (MiB)", "layer_memory.png")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for n in names:
                pts = [(r["T"], r[key]) for r in layer["rows"] if r["contender"] == n and r.get(key)]
                if pts:
                    xs, ys = zip(*pts)
                    ys = [y / MIB for y in ys] if key.endswith("bytes") else ys
                    ax.plot(xs, ys, marker="o", label=n)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
            ax.set_title(f"one layer, d={layer['d_model']}, batch {layer['batch']}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            path = os.path.join(out_dir, fname)
            fig.savefig(path, dpi=120)
            plt.close(fig)
            files.append(path)
    dec = results.get("decode")
    if dec:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (n, c) in enumerate(dec["curves"].items()):
            color = f"C{i}"
            xs, ys = zip(*c["cached"])
            ax.plot(xs, [y * 1e3 for y in ys], color=color, label=f"{n} (cache)")
            xs, ys = zip(*c["recompute"])
            ax.plot(xs, [y * 1e3 for y in ys], color=color, linestyle="--", marker="x", label=f"{n} (recompute)")
        ax.set_yscale("log")
        ax.set_xlabel("context length")
        ax.set_ylabel("ms per token")
        ax.set_title("decoding one layer")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "decode_latency.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(path)
    lm = results.get("lm")
    if lm:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [r["contender"] for r in lm["rows"]]
        ax.bar(names, [r["tokens_per_s"] for r in lm["rows"]])
        ax.set_ylabel("training tokens / s")
        ax.set_title(f"LM, {lm['n_layers']} layers, batch {lm['batch']} x {lm['seq_len']}")
        fig.tight_layout()
        path = os.path.join(out_dir, "lm_throughput.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(path)
    return files


# ---------------------------------------------------------------------------------------------


def machine_info(env: Env) -> dict:
    info = {
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(env.device), "dtype": env.dtype_name,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if env.cuda:
        info["gpu"] = torch.cuda.get_device_name(env.device)
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _fill_defaults(args)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("hypermlp bench: error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    env = Env(args.device, args.dtype)
    os.makedirs(args.out, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results: Dict[str, object] = {"machine": machine_info(env), "args": {k: v for k, v in vars(args).items()}}
    log(f"hypermlp bench: {results['machine'].get('cpu', '')} {env.device} {env.dtype_name}, "
        f"{torch.get_num_threads()} threads -> {args.out}")
    load = results["machine"].get("loadavg_start")
    if load and not env.cuda and load[0] > 1.0:
        log(f"warning: load average {load[0]:.1f} before starting: other processes compete for the CPU and "
            "inflate the times (intra-op threads wait for each other); ratios are less affected than absolute times")
    printed = []
    if "layer" in args.sections:
        results["layer"] = bench_layers(args, env, log)
        printed.append(f"## Layer: batch {args.batch}, d_model {args.d_model}, {args.dtype}, times are the min of {args.repeats} runs\n")
        for n, c in results["layer"]["config"].items():
            printed.append(f"- {n}: {c} ({results['layer']['params'][n]:,} params)")
        printed.append("")
        printed.append(format_layer_table(results["layer"]))
    if "decode" in args.sections:
        results["decode"] = bench_decode(args, env, log)
        printed.append(f"\n## Decoding one layer: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens\n")
        printed.append(format_decode_table(results["decode"]))
    if "lm" in args.sections:
        results["lm"] = bench_lm(args, env, log)
        lm = results["lm"]
        printed.append(f"\n## LM training: {lm['n_layers']} layers, d_model {args.d_model}, batch {lm['batch']} x {lm['seq_len']}, "
                       f"AdamW, times are the min of {args.lm_steps} steps; parameters {lm['matching']}\n")
        printed.append(format_lm_table(lm))
    try:
        results["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    results["targets"] = check_targets(results, args)
    if results["targets"]:
        printed.append("\n## Targets\n")
        printed.append(format_targets(results["targets"]))
    m = results["machine"]
    header = (f"Machine: {m.get('cpu', m.get('processor'))}, {m.get('cpu_count')} CPUs, torch {m.get('torch')} "
              f"({m.get('torch_threads')} threads), device {m.get('device')}, {m.get('dtype')}; load average "
              f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end\n" if "loadavg_end" in m else "")
    text = header + "\n".join(printed)
    print(text)
    json_path = os.path.join(args.out, "bench.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(text + "\n")
    files = [] if args.no_plots else make_plots(results, args.out)
    log(f"wrote {json_path}" + (", " + ", ".join(files) if files else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

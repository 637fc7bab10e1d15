"""LM section: end-to-end language-model training throughput (tokens/s, AdamW) and the peak
memory of one step, per mixer, the models brought to matched parameter counts.

Random byte tokens, one warm-up step per model (it also creates the optimiser state), then
``--lm-steps`` steps interleaved across the models; tokens/s from the fastest step.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import torch

from ..budget import count_params, match_budgets, solve_mlp_hidden
from ..models import LanguageModel, ModelConfig
from .measure import Env, peak_extra_bytes
from .mixers import MIXERS

VOCAB = 256  # bytes
MATCH_TOL = 0.01


def lm_configs(args):
    """Model configs of the LM section and a note on how their parameter counts were matched.

    ``mlp`` (default): every mixer at its layer defaults (the layers of the layer section), the
    SwiGLU width of each non-softmax model solved so its count lands on the softmax model's.
    ``budget``: ``hypermlp.budget.match_budgets`` to the softmax count (qk_rank first, then the
    MLP width; docs/math.md §6). ``none``: no matching."""
    base = {n: ModelConfig(vocab_size=VOCAB, d_model=args.d_model, n_layers=args.lm_layers, mixer=n, max_len=args.lm_seq_len)
            for n in MIXERS}
    if args.lm_match == "none":
        return base, "not matched (--lm-match none)"
    target = count_params(base["softmax"])
    if args.lm_match == "budget":
        matched, _ = match_budgets(base, target=target, tol=MATCH_TOL)
        return matched, "matched to the softmax model with hypermlp.budget.match_budgets (qk_rank, then MLP width)"
    matched, off = {}, []
    for n, cfg in base.items():
        if n == "softmax":
            matched[n] = cfg
            continue
        hidden, count = solve_mlp_hidden(cfg, target)
        matched[n] = dataclasses.replace(cfg, mlp_hidden=hidden)
        if abs(count - target) > MATCH_TOL * target:
            off.append(n)
    note = "matched to the softmax model by the SwiGLU width only (mixers at their layer defaults)"
    if off:
        note += f"; NOT within 1% for {', '.join(off)} (the SwiGLU width cannot absorb the difference)"
    return matched, note


def bench_lm(args, env: Env, log) -> dict:
    """Train one model per mixer for a few steps: rows of tokens/s, step time, memory, ratios."""
    cfgs, note = lm_configs(args)
    b, t = args.lm_batch, args.lm_seq_len
    torch.manual_seed(args.seed)
    data = torch.randint(0, VOCAB, (args.lm_steps + 2, b, t + 1), device=env.device)
    models = {}
    for n in MIXERS:
        torch.manual_seed(args.seed)  # the same init stream for every model
        model = LanguageModel(cfgs[n]).to(env.device)
        models[n] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1))

    def step(n: str, i: int) -> float:
        model, opt = models[n]
        batch = data[i % data.shape[0]]
        with env.autocast():
            _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    times: Dict[str, List[float]] = {n: [] for n in MIXERS}
    for n in MIXERS:
        step(n, 0)  # warm-up
    for i in range(args.lm_steps):
        for n in MIXERS:  # interleaved: a slow spell of the machine hits every model
            start = env.now()
            step(n, i + 1)
            times[n].append(env.now() - start)
    rows = []
    for n in MIXERS:
        model = models[n][0]
        peak = None if args.no_memory else peak_extra_bytes(lambda: step(n, 0), env)
        best = min(times[n])
        rows.append({
            "mixer": n, "params": model.num_params(), "tokens_per_s": b * t / best, "step_s": best,
            "step_samples": times[n], "peak_extra_bytes": peak, "mlp_hidden": cfgs[n].mlp_hidden,
            "mixer_args": dict(cfgs[n].mixer_args),
        })
        log(f"  lm {n}: {b * t / best:.0f} tokens/s, {model.num_params():,} params")
    base = next(r for r in rows if r["mixer"] == "softmax")
    for r in rows:
        r["throughput_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        if r["peak_extra_bytes"] and base["peak_extra_bytes"]:
            r["peak_extra_ratio"] = r["peak_extra_bytes"] / base["peak_extra_bytes"]
    return {"rows": rows, "batch": b, "seq_len": t, "n_layers": args.lm_layers, "matching": note}

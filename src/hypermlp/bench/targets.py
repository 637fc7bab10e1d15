"""The performance targets the Hyper layers must reach, judged from whatever sections ran.

A target is defined for one setting (d_model 256, batch 2, fp32; decode: prompt 1536 + 512
tokens). Measured in another setting it is shown but not judged.
"""

from __future__ import annotations

from typing import Callable, List, Optional


def check_targets(results: dict, args) -> List[dict]:
    """One row per target: its name, the measured value, met (None = not judged), setting_ok."""
    out: List[dict] = []
    base_ok = args.d_model == 256 and args.batch == 2 and args.dtype == "fp32"

    def add(name: str, value: Optional[float], setting_ok: bool, good: Callable[[float], bool]) -> None:
        met = None if value is None or not setting_ok else bool(good(value))
        out.append({"target": name, "value": value, "met": met, "setting_ok": setting_ok})

    layer = results.get("layer")
    if layer:
        by = {(r["T"], r["mixer"]): r for r in layer["rows"]}
        add("HyperGLU fwd+bwd at T=2048 <= 2x softmax", by.get((2048, "hyperglu"), {}).get("fwd_bwd_ratio"),
            base_ok, lambda v: v <= 2.0)
        peak_4k = by.get((4096, "hyperglu"), {}).get("peak_extra_bytes")
        peak_8k = by.get((8192, "hyperglu"), {}).get("peak_extra_bytes")
        growth = peak_8k / peak_4k if peak_4k and peak_8k else None
        add("HyperGLU peak training memory T=8192 / T=4096 <= 2.5", growth, base_ok, lambda v: v <= 2.5)
    decode = results.get("decode")
    if decode:
        glu = next((r for r in decode["rows"] if r["mixer"] == "hyperglu"), None)
        if glu:
            ok = base_ok and glu["prompt"] == 1536 and glu["new_tokens"] == 512
            add(f"HyperGLU cached decode >= 20x faster than recompute (prompt {glu['prompt']}, {glu['new_tokens']} tokens)",
                glu["speedup_vs_recompute"], ok, lambda v: v >= 20)
            add("HyperGLU per-token latency <= 2x softmax with KV cache", glu.get("cached_ratio"), ok, lambda v: v <= 2.0)
    lm = results.get("lm")
    if lm:
        glu = next((r for r in lm["rows"] if r["mixer"] == "hyperglu"), None)
        add("LM training throughput HyperGLU >= 0.5x softmax (matched params)", glu["throughput_ratio"] if glu else None,
            args.d_model == 256 and args.dtype == "fp32" and args.lm_match != "none", lambda v: v >= 0.5)
    return out

"""The performance targets the Hyper layers must reach, judged from whatever sections ran.

A target is defined for one setting (d_model 256, batch 2, fp32; decode: prompt 1536 + 512
tokens; the GPU section's: d_model 1024, 2 heads, batch 4, bf16 on CUDA). Measured in another
setting it is shown but not judged.
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
    gpu = results.get("gpu")
    if gpu:
        out += gpu_targets(gpu)
    return out


GPU_SHAPE = (1024, 2, 4)  # the GPU targets' setting: d_model 1024, 2 heads, batch 4, bf16 on CUDA, T = 4096


def gpu_targets(gpu: dict) -> List[dict]:
    """The GPU section's targets (issue 9), for the Triton HyperGLU at the authors' shape."""
    from .gpu import memory_growth

    ok = gpu["device"].startswith("cuda") and gpu["dtype"] == "bf16" and list(GPU_SHAPE) in gpu["shapes"]
    by = {(r["d_model"], r["heads"], r["batch"], r["T"], r["mixer"]): r for r in gpu["rows"]}
    tri = by.get((*GPU_SHAPE, 4096, "hyperglu-triton"), {})
    rows = [
        ("Triton HyperGLU fwd+bwd at T=4096 <= 2x SDPA softmax (d 1024, 2 heads, batch 4, bf16)",
         tri.get("fwd_bwd_ratio"), lambda v: v <= 2.0),
        ("Triton HyperGLU peak memory T=8192 / T=4096 <= 2.1",
         memory_growth(gpu["rows"], "hyperglu-triton", GPU_SHAPE, 4096, 8192), lambda v: v <= 2.1),
        ("Triton HyperGLU decode step at context 4096 <= 1.5x SDPA with a KV cache",
         tri.get("decode_ratio"), lambda v: v <= 1.5),
        ("Triton HyperGLU fwd+bwd >= 3x faster than the chunked PyTorch core at T=4096",
         tri.get("triton_fwd_bwd_speedup"), lambda v: v >= 3.0),
    ]
    return [{"target": name, "value": value, "met": None if value is None or not ok else bool(good(value)),
             "setting_ok": ok} for name, value, good in rows]
